"""Stage 1, accuracy: train's metrics from the model card, and the FHE simulation of a rebuild.

The float and quantized F1 are the model card's (``development.train`` measured them on this
held-out set); the module is recompiled from the rebuilt tree and simulated on the held-out set,
which checks that the rebuild gives the deployed circuit's verdicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import f1_score
from tqdm import tqdm

from development.benchmark.dataset import Dataset
from development.benchmark.report import Report
from development.benchmark.timing import timed


def measure_accuracy(
    report: Report, card: dict[str, Any], data: Dataset, simulated_rows: int | None = None
) -> None:
    """Train's F1 figures, then compile time and simulated-FHE agreement on the held-out set.

    Args:
        report: where the figures go.
        card: the model card (metrics, explain candidates).
        data: the rebuilt held-out data.
        simulated_rows: simulate only the first held-out rows (quick mode), None for all.
    """
    from development import train

    report.record("build_s", round(data.build_s, 3))
    n_test = len(data.y_test)
    report.record("test_rows", n_test)
    report.record("f1_float", card["metrics"]["f1_float"])
    report.record("f1_quantized", card["metrics"]["f1_quantized"])

    q_train = data.built["q"][data.built["idx_train"]]
    n_candidates = int(card["parameters"]["explain_candidates"])
    compile_s, module = timed(lambda: train.compile_module(data.tree, q_train, n_candidates))
    report.record("compile_s", round(compile_s, 3))
    n_sim = n_test if simulated_rows is None else min(simulated_rows, n_test)
    rows = tqdm(data.q_test[:n_sim], desc="simulate", leave=False)
    simulate_s, y_sim = timed(
        lambda: np.array([int(module.predict.simulate(*data.split_row(row))) for row in rows])
    )
    report.record(
        "fhe_agreement_simulated", round(float(np.mean(y_sim == data.y_quant[:n_sim])), 4)
    )
    report.record("simulated_rows", n_sim)
    report.record(
        "f1_fhe_simulated", round(float(f1_score(data.y_test[:n_sim], y_sim, zero_division=0.0)), 4)
    )
    report.record("simulate_s", round(simulate_s, 3))
    if n_sim < n_test:
        report.note(f"quick mode: FHE simulation on the first {n_sim} held-out rows only")
