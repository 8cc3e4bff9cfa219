"""The held-out data of the deployed model: the same split and quantization as training."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

import settings
from development.benchmark.timing import timed


@dataclass
class Dataset:
    """The same data, split and quantization as ``development.train``.

    Attributes:
        frame: the raw applications (data/applications.csv).
        built: what ``development.train.build`` returns (x, y, q, idx_train, idx_test, model,
            tree, ...).
        y_quant: the quantized tree's verdicts on the held-out rows (clear).
        build_s: seconds the rebuild took.
    """

    frame: pd.DataFrame
    built: dict[str, Any]
    y_quant: np.ndarray
    build_s: float

    @property
    def tree(self) -> Any:
        """The deployed tree (``development.fhe_tree.QuantizedTree``)."""
        return self.built["tree"]

    @property
    def q_test(self) -> np.ndarray:
        """Quantized held-out rows (circuit order)."""
        return self.built["q"][self.built["idx_test"]]

    @property
    def y_test(self) -> np.ndarray:
        """Held-out labels."""
        return self.built["y"][self.built["idx_test"]]

    def raw_parties(self, test_position: int) -> dict[str, dict[str, Any]]:
        """The raw fields of one held-out row, per party (Python scalars)."""
        record = self.frame.iloc[int(self.built["idx_test"][test_position])].to_dict()
        parts = {}
        for party in settings.PARTIES:
            parts[party] = {
                f: (v.item() if isinstance(v, np.generic) else v)
                for f, v in record.items()
                if f in settings.PARTY_FIELDS[party]
            }
        return parts

    def split_row(self, row: np.ndarray) -> list[np.ndarray]:
        """Cut one circuit-ordered row into the parties' vectors."""
        slices = self.tree.party_slices
        return [row[slices[p][0] : slices[p][1]] for p in settings.PARTIES]


def load_dataset(card: dict[str, Any]) -> Dataset:
    """Rebuild the split and the tree from data/applications.csv (no compilation).

    Raises:
        RuntimeError: if the data rebuilds another tree than the deployed reference tree.
    """
    from development import train

    parameters = card["parameters"]
    n_bits, max_depth = int(parameters["n_bits"]), int(parameters["max_depth"])
    frame = pd.read_csv(settings.DATA_PATH)
    build_s, built = timed(lambda: train.build(frame, n_bits=n_bits, max_depth=max_depth))
    reference = json.loads(settings.REFERENCE_TREE_PATH.read_text(encoding="utf-8"))
    if json.loads(json.dumps(built["tree"].to_json())) != reference:
        raise RuntimeError(
            "data/applications.csv rebuilds another tree than the deployed one: regenerate the "
            "artifacts with `python -m development.train`"
        )
    y_quant = built["tree"].predict_clear(built["q"][built["idx_test"]])
    return Dataset(frame=frame, built=built, y_quant=y_quant, build_s=build_s)
