"""Each party's preprocessing: its own raw fields -> the circuit's quantized integer inputs.

Read from ``deployment_files/preprocessing.json`` (the caller gives the path). numpy and
``contracts`` only (no Concrete, no OpenFHE, no settings), so both the single-key client library
(``fhe_client.client``, Python 3.11) and the three-party party clients (``threeparty.party``,
Python 3.10) use the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from contracts.parties import PARTIES
from fhe_client.errors import InvalidFieldError


@dataclass(frozen=True)
class FeatureSpec:
    """How one raw field becomes the circuit's integer input(s).

    Attributes:
        field: raw field name (as in contracts.parties.PARTY_FIELDS).
        kind: "bool", "numeric", "log_numeric" (log of a positive number) or "category".
        categories: canonical category values (index = numeric code), for kind "category".
        encoding: "quantized" (one input: Concrete ML's input quantizer), "binary" (one input,
            0 or 1) or "onehot" (one 0/1 input per category). Comparisons on binary and
            one-hot inputs are linear in the circuit (sums of inputs, no bootstrap of their
            own; see development/fhe_tree.py and two_lookups.py for how the circuit uses them).
        scale: quantizer scale ("quantized" only).
        zero_point: quantizer zero point ("quantized" only).
        n_bits: quantizer bit width, values clipped to [0, 2**n_bits - 1] ("quantized" only).
    """

    field: str
    kind: str
    categories: tuple[str, ...]
    encoding: str = "quantized"
    scale: float = 1.0
    zero_point: float = 0.0
    n_bits: int = 1

    @property
    def width(self) -> int:
        """Number of circuit inputs this field takes."""
        return len(self.categories) if self.encoding == "onehot" else 1

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

    def parse_text(self, text: str | None) -> Any:
        """Read this field's value from text (a CSV cell), for ``to_number`` to check.

        Booleans are true/false or 1/0 (any case), numbers plain (an integral number becomes an
        int), categories as written; text that does not parse is returned as it is, so that
        ``to_number`` refuses it with the field's own message.
        """
        value = (text or "").strip()
        if self.kind == "bool":
            return {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
        if self.kind == "category":
            return value
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number

    def encode(self, raw_number: float) -> float:
        """Turn a checked raw number into the float feature (log of the income)."""
        return float(np.log(raw_number)) if self.kind == "log_numeric" else raw_number

    def quantize(self, number: float) -> int:
        """Quantize a float feature exactly as Concrete ML's input quantizer does."""
        q = np.rint(number / self.scale + self.zero_point)
        return int(np.clip(q, 0, 2**self.n_bits - 1))

    def circuit_values(self, number: float) -> list[int]:
        """The circuit's integer input(s) for a float feature, by this field's encoding."""
        if self.encoding == "binary":
            return [int(number)]
        if self.encoding == "onehot":
            return [int(i == int(number)) for i in range(len(self.categories))]
        return [self.quantize(number)]


class PartyPreprocessor:
    """One party's preprocessing: its raw fields -> quantized integer features (numpy int64)."""

    def __init__(
        self, party: str, features: list[FeatureSpec], ranges: dict[str, dict[str, float]]
    ):
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
    def from_spec(cls, party: str, spec: dict[str, Any]) -> PartyPreprocessor:
        """Build one party's preprocessor from the preprocessing JSON (only its own part)."""
        own = spec["parties"][party]
        return cls(
            party=party,
            features=[
                FeatureSpec(
                    field=f["field"],
                    kind=f["kind"],
                    categories=tuple(f.get("categories", ())),
                    encoding=f["encoding"],
                    scale=f.get("scale", 1.0),
                    zero_point=f.get("zero_point", 0.0),
                    n_bits=f.get("n_bits", 1),
                )
                for f in own["features"]
            ],
            ranges=own["ranges"],
        )

    @classmethod
    def load_all(cls, path: Path) -> dict[str, PartyPreprocessor]:
        """Read every party's preprocessing from its JSON file.

        Args:
            path: the preprocessing JSON (``deployment_files/preprocessing.json``).
        """
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        return {party: cls.from_spec(party, spec) for party in PARTIES}

    def categories(self, field: str) -> tuple[str, ...]:
        """The canonical values of one of this party's category fields, in code order.

        Raises:
            KeyError: if ``field`` is not one of this party's category fields.
        """
        for feature in self.features:
            if feature.field == field and feature.kind == "category":
                return feature.categories
        raise KeyError(f"{self.party} has no category field {field!r}")

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
        """Encode float features into the circuit's integer inputs (quantized, 0/1, one-hot)."""
        return np.array(
            [
                value
                for feature, number in zip(self.features, numbers, strict=True)
                for value in feature.circuit_values(number)
            ],
            dtype=np.int64,
        )

    def transform(self, fields: dict[str, Any]) -> np.ndarray:
        """Raw fields of this party -> quantized integer vector the circuit takes."""
        return self.quantize_numbers(self.to_numbers(fields))


@lru_cache(maxsize=4 * len(PARTIES))
def load_party_preprocessor(path: Path, party: str) -> PartyPreprocessor:
    """One party's preprocessor (cached), built only from that party's part of the spec.

    Args:
        path: ``preprocessing.json`` of the deployment.
        party: "applicant", "bank" or "credit_bureau".
    """
    return PartyPreprocessor.from_spec(party, _preprocessing_spec(Path(path)))


@lru_cache(maxsize=4)
def _preprocessing_spec(path: Path) -> dict[str, Any]:
    """The preprocessing JSON (read once per file); each party builds from its own part."""
    return json.loads(path.read_text(encoding="utf-8"))
