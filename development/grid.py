"""Choose n_bits and max_depth by measurement: ``python -m development.grid``.

For each (n_bits, max_depth) of a small grid: F1 of the float sklearn tree of the same depth, F1 of
the quantized tree, the circuit's form (the two-lookup form of ``development.two_lookups`` where
the tree has it, else one bootstrap per comparison and matched leaf), the bootstrap count of
predict and explain, and the median warm FHE predict time with real keys. Writes
development/grid_results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier as SkDecisionTreeClassifier

import settings
from development.generate_data import generate
from development.train import (
    circuit_rows,
    compile_module,
    field_ranges,
    fit_tree,
    float_features,
    measure_warm_predict,
)
from development.two_lookups import find_two_lookup_form

GRID = [(2, 5), (3, 4), (3, 5), (3, 6), (4, 5), (4, 6), (6, 5), (6, 8)]
RESULTS_PATH = settings.DEVELOPMENT_DIR / "grid_results.json"


def main(grid: list[tuple[int, int]], runs: int) -> list[dict]:
    """Measure every grid point and write the results."""
    frame = generate(settings.N_ROWS, settings.SEED)
    x, y = float_features(frame), frame["approved"].to_numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=settings.TEST_FRACTION, random_state=settings.SEED, stratify=y
    )
    rows = []
    for n_bits, max_depth in grid:
        _, tree, spec = fit_tree(
            x_train, y_train, n_bits=n_bits, max_depth=max_depth, ranges=field_ranges(frame)
        )
        q_train, q_test = circuit_rows(spec, x_train), circuit_rows(spec, x_test)
        float_tree = SkDecisionTreeClassifier(max_depth=max_depth, random_state=settings.SEED)
        float_tree.fit(x_train, y_train)
        module = compile_module(tree, q_train, len(settings.YEARS_EMPLOYED_BINS))
        start = time.perf_counter()
        warm = measure_warm_predict(module, q_test, tree.party_slices, runs=runs)
        row = {
            "n_bits": n_bits,
            "max_depth": max_depth,
            "f1_float": round(float(f1_score(y_test, float_tree.predict(x_test))), 4),
            "f1_quantized": round(float(f1_score(y_test, tree.predict_clear(q_test))), 4),
            "form": "lookups" if find_two_lookup_form(tree) is not None else "paths",
            "bootstraps_predict": int(module.predict.programmable_bootstrap_count),
            "bootstraps_explain": int(module.explain.programmable_bootstrap_count),
            "warm_predict_s": round(warm, 3),
            "measure_s": round(time.perf_counter() - start, 1),
        }
        print(row, flush=True)
        rows.append(row)
    RESULTS_PATH.write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| n_bits | depth | F1 float | F1 quantized | form | PBS predict | PBS explain | warm (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n_bits']} | {r['max_depth']} | {r['f1_float']:.4f} | {r['f1_quantized']:.4f} "
            f"| {r['form']} | {r['bootstraps_predict']} | {r['bootstraps_explain']} "
            f"| {r['warm_predict_s']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    main(GRID, runs=parser.parse_args().runs)
