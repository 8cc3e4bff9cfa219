"""The verdict of the deployed quantized tree computed in clear, for tests and reports only.

It reads development/artifacts/reference_tree.json, a development-only artifact that the server and
the client never load, and the same per-party preprocessing the client uses.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

import settings
from backend import PartyPreprocessor
from development.fhe_tree import QuantizedTree


@lru_cache(maxsize=1)
def _model() -> tuple[dict[str, PartyPreprocessor], QuantizedTree]:
    preprocessors = PartyPreprocessor.load_all()
    tree = QuantizedTree.from_json(json.loads(settings.REFERENCE_TREE_PATH.read_text()))
    return preprocessors, tree


def quantized_row(
    applicant: dict[str, Any], bank: dict[str, Any], credit_bureau: dict[str, Any]
) -> np.ndarray:
    """Quantize the three parties' raw fields into one circuit-ordered integer row."""
    preprocessors, _ = _model()
    parts = {"applicant": applicant, "bank": bank, "credit_bureau": credit_bureau}
    return np.concatenate([preprocessors[p].transform(parts[p]) for p in settings.PARTIES])


def clear_verdict(
    applicant: dict[str, Any], bank: dict[str, Any], credit_bureau: dict[str, Any]
) -> bool:
    """Return the quantized model's verdict in clear (True = likely approved).

    Args:
        applicant: the applicant's raw fields (settings.APPLICANT_FIELDS).
        bank: {"account_age": months}.
        credit_bureau: {"employed": bool, "years_employed": one of settings.YEARS_EMPLOYED_BINS}.
    """
    _, tree = _model()
    return bool(tree.predict_clear(quantized_row(applicant, bank, credit_bureau))[0])


def clear_explain(
    applicant: dict[str, Any], bank: dict[str, Any], credit_bureau: dict[str, Any]
) -> str | None:
    """Smallest years-employed bin at or above the sent one that gives approval when employed.

    Returns:
        The bin, or None when no bin does; the sent bin itself when it is already approved.
    """
    start = settings.YEARS_EMPLOYED_BINS.index(credit_bureau["years_employed"])
    for years in settings.YEARS_EMPLOYED_BINS[start:]:
        if clear_verdict(applicant, bank, {"employed": True, "years_employed": years}):
            return years
    return None
