"""Client side of the encrypted credit-card approval service (no Gradio here).

Each party turns its own raw fields into quantized integers with ``PartyPreprocessor`` (read from
``deployment_files/preprocessing.json``), without seeing any other party's fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import settings


class InvalidFieldError(ValueError):
    """A field value is missing, of the wrong type, out of range or not a known category."""


@dataclass(frozen=True)
class FeatureSpec:
    """How one raw field becomes one quantized integer feature.

    Attributes:
        field: raw field name (as in settings.PARTY_FIELDS).
        kind: "bool", "numeric", "log_numeric" (log of a positive number) or "category".
        categories: canonical category values (index = numeric code), for kind "category".
        scale: quantizer scale.
        zero_point: quantizer zero point.
        n_bits: quantizer bit width (values are clipped to [0, 2**n_bits - 1]).
    """

    field: str
    kind: str
    categories: tuple[str, ...]
    scale: float
    zero_point: float
    n_bits: int

    def to_number(self, value: Any) -> float:
        """Turn a raw value into the float feature the tree was trained on.

        Raises:
            InvalidFieldError: if the value does not fit the field.
        """
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)) or value in (0, 1):
                return float(bool(value))
            raise InvalidFieldError(f"{self.field} must be true or false, got {value!r}")
        if self.kind == "category":
            if value not in self.categories:
                raise InvalidFieldError(
                    f"{self.field} must be one of {list(self.categories)}, got {value!r}"
                )
            return float(self.categories.index(value))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidFieldError(f"{self.field} must be a number, got {value!r}")
        number = float(value)
        if not np.isfinite(number):
            raise InvalidFieldError(f"{self.field} must be a finite number, got {value!r}")
        return number

    def encode(self, raw_number: float) -> float:
        """Turn a checked raw number into the float feature (log of the income)."""
        return float(np.log(raw_number)) if self.kind == "log_numeric" else raw_number

    def quantize(self, number: float) -> int:
        """Quantize a float feature exactly as Concrete ML's input quantizer does."""
        q = np.rint(number / self.scale + self.zero_point)
        return int(np.clip(q, 0, 2**self.n_bits - 1))


class PartyPreprocessor:
    """One party's preprocessing: its raw fields -> quantized integer features (numpy int64)."""

    def __init__(self, party: str, features: list[FeatureSpec], ranges: dict[str, dict[str, float]]):
        """Build a preprocessor.

        Args:
            party: "applicant", "bank" or "credit_bureau".
            features: the party's features, in circuit order.
            ranges: {field: {"minimum", "maximum"}} accepted for numeric fields.
        """
        self.party = party
        self.features = features
        self.ranges = ranges

    @classmethod
    def load_all(cls, path: Path = settings.PREPROCESSING_PATH) -> dict[str, PartyPreprocessor]:
        """Read every party's preprocessing from its JSON file."""
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        return {
            party: cls(
                party=party,
                features=[
                    FeatureSpec(
                        field=f["field"],
                        kind=f["kind"],
                        categories=tuple(f.get("categories", ())),
                        scale=f["scale"],
                        zero_point=f["zero_point"],
                        n_bits=f["n_bits"],
                    )
                    for f in spec["parties"][party]["features"]
                ],
                ranges=spec["parties"][party]["ranges"],
            )
            for party in settings.PARTIES
        }

    def to_numbers(self, fields: dict[str, Any]) -> list[float]:
        """Check the party's raw fields and turn them into float features (circuit order).

        Raises:
            InvalidFieldError: on a missing, unknown or invalid field.
        """
        expected = {f.field for f in self.features}
        missing = expected - set(fields)
        unknown = set(fields) - expected
        if missing:
            raise InvalidFieldError(f"{self.party}: missing field(s) {sorted(missing)}")
        if unknown:
            raise InvalidFieldError(f"{self.party}: unknown field(s) {sorted(unknown)}")
        numbers = []
        for feature in self.features:
            number = feature.to_number(fields[feature.field])
            bounds = self.ranges.get(feature.field)
            if feature.kind in ("numeric", "log_numeric") and bounds is not None:
                if not bounds["minimum"] <= number <= bounds["maximum"]:
                    raise InvalidFieldError(
                        f"{feature.field} must be between {bounds['minimum']} and "
                        f"{bounds['maximum']}, got {number}"
                    )
            numbers.append(feature.encode(number))
        return numbers

    def quantize_numbers(self, numbers: list[float]) -> np.ndarray:
        """Quantize float features into the circuit's integer inputs."""
        return np.array(
            [feature.quantize(n) for feature, n in zip(self.features, numbers, strict=True)],
            dtype=np.int64,
        )

    def transform(self, fields: dict[str, Any]) -> np.ndarray:
        """Raw fields of this party -> quantized integer vector the circuit takes."""
        return self.quantize_numbers(self.to_numbers(fields))
