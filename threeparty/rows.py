"""A party's fields as rows: its quantized inputs, the rows of each mode, CSV files, clear verdicts.

Standard pieces of the party program that need no server: ``own_rows`` (the preprocessing),
``mode_rows`` and ``party_rows`` (the blocks a party encrypts), ``clear_verdicts`` (what the
evaluation must give), ``party_fields`` and ``read_rows`` (a party's CSV), ``read_verdict`` (the
fused bits as a result).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fhe_client.errors import InvalidFieldError
from fhe_client.preprocessing import load_party_preprocessor
from threeparty import engine, protocol
from threeparty.layout import LAYOUT_PATH, Layout
from threeparty.party_base import (
    PartyError,
)

PREPROCESSING_PATH = LAYOUT_PATH.with_name("preprocessing.json")
"""Each party's preprocessing, shipped next to the layout (``deployment_files``)."""


Fields = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""A party's fields: one application's, or (batch mode) one mapping per application."""


def own_rows(role: str, fields: Fields) -> np.ndarray:
    """The party's quantized inputs, one row per application it was given.

    Raises:
        PartyError: invalid_field, if the fields do not fit the party's preprocessing.
    """
    preprocessor = load_party_preprocessor(PREPROCESSING_PATH, role)
    applications = [fields] if isinstance(fields, Mapping) else list(fields)
    if not applications or len(applications) > protocol.MAX_APPLICATIONS:
        raise PartyError(
            f"from 1 to {protocol.MAX_APPLICATIONS} applications, got {len(applications)}",
            "invalid_field",
        )
    try:
        return np.vstack([preprocessor.transform(dict(one)) for one in applications])
    except InvalidFieldError as error:
        raise PartyError(f"the {role}'s fields are invalid: {error}", "invalid_field") from None


def mode_rows(role: str, rows: np.ndarray, mode: str, batch: bool) -> np.ndarray:
    """The rows ``role`` encrypts in ``mode``, one per block, from its ``own_rows``.

    The applicant and the bank repeat their application in every block of the mode; the credit
    bureau encrypts its own row only (block 0): in explain mode the candidate rows of blocks 1..
    are public and added by whoever evaluates (``Layout.candidates_for``). In batch mode every
    party sends its own row of each application, in the same order.

    Raises:
        PartyError: invalid_field, when one application is given to a batch or several to
            another mode.
    """
    if (mode == "batch") != batch:
        raise PartyError(
            "a batch takes one set of fields per application; other modes one set",
            "invalid_field",
        )
    if mode == "batch":
        return rows
    blocks = 1 if role == engine.EXPLAIN_PARTY else protocol.blocks_for(mode)
    return np.tile(rows[0], (blocks, 1))


def party_rows(role: str, fields: Fields, mode: str, layout: Layout) -> np.ndarray:
    """The party's quantized inputs, one row per block it encrypts (``mode_rows``).

    Raises:
        PartyError: invalid_field, if the fields do not fit the party's preprocessing.
    """
    return mode_rows(role, own_rows(role, fields), mode, not isinstance(fields, Mapping))


def clear_verdicts(fields: Mapping[str, Fields], mode: str, layout: Layout) -> list[int]:
    """What the evaluation must give, in clear: the tree on the parties' rows (and candidates).

    Args:
        fields: {role: its fields}.
        mode: "predict", "explain" (blocks 1.. then hold the public candidate rows) or "batch".
        layout: the slot layout.

    Returns:
        One 0/1 verdict per block.
    """
    rows = {role: party_rows(role, fields[role], mode, layout) for role in protocol.ROLES}
    candidates = layout.candidates_for(mode)
    if candidates is not None:
        rows[engine.EXPLAIN_PARTY] = np.vstack([rows[engine.EXPLAIN_PARTY], candidates])
    return [int(v) for v in layout.clear_verdicts(rows)]


def party_fields(role: str) -> list[str]:
    """The names of a party's own fields (its CSV columns), in the circuit's order."""
    return [feature.field for feature in load_party_preprocessor(PREPROCESSING_PATH, role).features]


def read_rows(path: Path, role: str) -> list[dict[str, Any]]:
    """A party's applications from a CSV of its own columns (one row per application).

    The header names the party's fields; booleans are true/false (or 1/0), numbers plain.

    Raises:
        PartyError: invalid_field when the file cannot be read or has other columns.
    """
    features = {f.field: f for f in load_party_preprocessor(PREPROCESSING_PATH, role).features}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if columns != set(features):
                raise PartyError(
                    f"{path}: the {role}'s columns are {sorted(features)}, got {sorted(columns)}",
                    "invalid_field",
                )
            return [{k: features[k].parse_text(v) for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PartyError(f"cannot read {path}: {error}", "invalid_field") from None


def read_verdict(mode: str, bits: list[int], layout: Layout) -> dict[str, Any]:
    """Turn the fused bits (one per block) into the verdict and, in explain mode, the bins.

    Returns:
        {"approved": bool} and, in explain mode, "approved_years_employed" (the bins that,
        with employed = yes, give approval) and "fewest_years_employed" (the smallest, or None);
        in batch mode {"approved": [bool, one per application]}.
    """
    if mode == "batch":
        return {"approved": [bool(bit) for bit in bits]}
    result: dict[str, Any] = {"approved": bool(bits[0])}
    if mode == "explain":
        bins = list(layout.explain_candidates["years_employed"])
        approved = [b for b, bit in zip(bins, bits[1 : 1 + len(bins)], strict=True) if bit]
        result["approved_years_employed"] = approved
        result["fewest_years_employed"] = approved[0] if approved else None
    return result
