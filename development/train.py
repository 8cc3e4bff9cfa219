"""Regenerate data/ and deployment_files/ deterministically: ``python -m development.train``.

1. generate the synthetic applications (seeded) into data/applications.csv;
2. build each party's preprocessing (its own fields only) and the input quantizers of a Concrete
   ML DecisionTreeClassifier trained on the training split;
3. compile the quantized tree into ONE concrete-python module (predict + explain, one key set);
4. write the server artifact, the client specs, the preprocessing, the field ranges, the model
   card and (development only) the clear reference tree; then measure the model report;
5. write the three-party mode's slot layout of the tree (``development.threeparty_layout``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from concrete import fhe
from concrete.ml.sklearn import DecisionTreeClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier as SkDecisionTreeClassifier

import settings
from backend import PartyPreprocessor
from contracts.single_key import BATCH_INPUTS, BATCH_ROWS
from development.fhe_tree import QuantizedTree
from development.generate_data import RULES, generate
from development.two_lookups import domain_rows, find_two_lookup_form, tree_variables

N_PROBE = 64
KEYGENS_FOR_WIRE_FORMAT = 4
N_REAL_FHE_ROWS = 20
FHE_CONFIGURATION = {
    "compress_evaluation_keys": True,
    "compress_input_ciphertexts": True,
    # A per-bootstrap error probability instead of concrete's default global one (1e-5 over a
    # circuit): a decision about 1e-9 likely to be wrong per bootstrap. For the two-lookup circuit
    # (4-bit lookups) the optimizer then picks a 1 x 2048 GLWE bootstrap key with 5-level key
    # switching (24.9 MB of compressed evaluation keys); in one run on 2026-12-07, 1e-7, 1e-8,
    # 1e-10 and 1e-12 gave warm predicts of 0.068-0.076 s and batches of 16 of 0.32-0.35 s, 1e-9
    # among the fastest. (For the earlier 11-bootstrap circuit, 1e-9 had also beaten the default:
    # 2 x 1024 with 3 levels instead of 4 x 512 with 5, predict 1.3 times faster.)
    "p_error": 1e-9,
    "global_p_error": None,
}


def library_versions() -> dict[str, str]:
    """Versions the artifacts depend on (the server refuses artifacts built with others)."""
    return {
        "python": platform.python_version(),
        "concrete-python": version("concrete-python"),
        "concrete-ml": version("concrete-ml"),
    }


def feature_kinds() -> dict[str, str]:
    """Kind of each raw field: bool, category, log_numeric or numeric."""
    kinds = {}
    for fields in settings.PARTY_FIELDS.values():
        for field in fields:
            if field in settings.BOOLEAN_FIELDS:
                kinds[field] = "bool"
            elif field in settings.CATEGORY_VALUES:
                kinds[field] = "category"
            elif field == "total_income":
                kinds[field] = "log_numeric"
            else:
                kinds[field] = "numeric"
    return kinds


def float_features(frame: pd.DataFrame) -> np.ndarray:
    """Raw fields -> float features in circuit order (applicant | bank | credit bureau).

    Each column depends on its own field only, so each party can compute its own part.
    """
    kinds = feature_kinds()
    columns = []
    for party in settings.PARTIES:
        for field in settings.PARTY_FIELDS[party]:
            values = frame[field]
            if kinds[field] == "bool":
                columns.append(values.astype(float).to_numpy())
            elif kinds[field] == "category":
                codes = {v: i for i, v in enumerate(settings.CATEGORY_VALUES[field])}
                columns.append(values.map(codes).astype(float).to_numpy())
            elif kinds[field] == "log_numeric":
                columns.append(np.log(values.astype(float).to_numpy()))
            else:
                columns.append(values.astype(float).to_numpy())
    return np.stack(columns, axis=1)


def feature_slices() -> dict[str, tuple[int, int]]:
    """Column range of each party's float features (one per field, as the model sees them)."""
    slices, start = {}, 0
    for party in settings.PARTIES:
        stop = start + len(settings.PARTY_FIELDS[party])
        slices[party] = (start, stop)
        start = stop
    return slices


def encoding_of(field: str) -> str:
    """How a field reaches the circuit: booleans as 0/1, the years-employed bin one-hot.

    Comparisons on 0/1 and one-hot inputs are linear, so the credit bureau's fields, which
    explain evaluates once per candidate, cost no bootstrap; every other field is quantized.
    """
    if field in settings.BOOLEAN_FIELDS:
        return "binary"
    return "onehot" if field == "years_employed" else "quantized"


def circuit_rows(spec: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Float feature rows -> the circuit's integer input rows, party by party (client side)."""
    parts = []
    for party, (start, stop) in feature_slices().items():
        preprocessor = PartyPreprocessor.from_spec(party, spec)
        parts.append(np.stack([preprocessor.quantize_numbers(list(r)) for r in x[:, start:stop]]))
    return np.concatenate(parts, axis=1)


def circuit_layout(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Where each model feature sits among the circuit inputs, and each party's input range."""
    features, slices, column = [], {}, 0
    for party in settings.PARTIES:
        start = column
        for feature in PartyPreprocessor.from_spec(party, spec).features:
            levels = 2 if feature.encoding == "binary" else len(feature.categories)
            features.append({"encoding": feature.encoding, "column": column, "levels": levels})
            column += feature.width
        slices[party] = (start, column)
    return features, slices


def field_ranges(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Slider ranges and defaults of the numeric fields, measured on the data."""
    ranges = {}
    for field in ("num_children", "household_size", "total_income", "age", "account_age"):
        values = frame[field]
        ranges[field] = {
            "minimum": float(values.min()) if field == "total_income" else int(values.min()),
            "maximum": float(values.max()) if field == "total_income" else int(values.max()),
            "value": float(values.median()) if field == "total_income" else int(values.median()),
        }
    return ranges


def preprocessing_spec(model: DecisionTreeClassifier, ranges: dict[str, Any]) -> dict[str, Any]:
    """Each party's features: encoding, and the Concrete ML input quantizer of quantized ones."""
    kinds = feature_kinds()
    parties: dict[str, Any] = {}
    index = 0
    for party in settings.PARTIES:
        features = []
        for field in settings.PARTY_FIELDS[party]:
            quantizer = model.input_quantizers[index]
            feature: dict[str, Any] = {
                "field": field,
                "kind": kinds[field],
                "encoding": encoding_of(field),
            }
            if feature["encoding"] == "quantized":
                feature["scale"] = float(quantizer.scale)
                feature["zero_point"] = float(quantizer.zero_point)
                feature["n_bits"] = int(quantizer.n_bits)
            if kinds[field] == "category":
                feature["categories"] = settings.CATEGORY_VALUES[field]
            features.append(feature)
            index += 1
        parties[party] = {
            "features": features,
            "ranges": {
                f: {"minimum": ranges[f]["minimum"], "maximum": ranges[f]["maximum"]}
                for f in settings.PARTY_FIELDS[party]
                if f in ranges
            },
        }
    return {"parties": parties}


def fit_tree(
    x_train: np.ndarray, y_train: np.ndarray, n_bits: int, max_depth: int, ranges: dict
) -> tuple[DecisionTreeClassifier, QuantizedTree, dict[str, Any]]:
    """Fit Concrete ML's DecisionTreeClassifier; return it, its circuit tree and preprocessing."""
    model = DecisionTreeClassifier(n_bits=n_bits, max_depth=max_depth, random_state=settings.SEED)
    model.fit(x_train, y_train)
    spec = preprocessing_spec(model, ranges)
    features, slices = circuit_layout(spec)
    for index, feature in enumerate(features):
        if feature["encoding"] != "quantized":
            # Concrete ML's quantized value of each raw level (0/1, or the category index).
            levels = np.arange(feature.pop("levels"), dtype=float)
            feature["q_levels"] = model.input_quantizers[index].quant(levels).tolist()
    tree = QuantizedTree.from_sklearn(
        model.sklearn_model, features=features, n_bits=n_bits, party_slices=slices
    )
    return model, tree, spec


def compile_module(tree: QuantizedTree, q_train: np.ndarray, n_candidates: int) -> Any:
    """Compile the predict + explain module on an input set drawn from the training rows."""
    slices = tree.party_slices
    rng = np.random.default_rng(settings.SEED)
    rows = q_train[rng.choice(len(q_train), size=min(len(q_train), 400), replace=False)]
    # Every quantized input at both ends of its range (with real rows' 0/1 and one-hot inputs),
    # so no value a client's preprocessing can produce is outside the compiled range.
    quantized = np.array(tree.column_max) > 1
    extremes = rows[:2].copy()
    extremes[0, quantized], extremes[1, quantized] = 0, 2**tree.n_bits - 1
    rows = np.concatenate([rows, extremes])
    if find_two_lookup_form(tree) is not None:
        # Every input of the variables the tree reads (at most 16 x the linear variable's
        # states): the lookups' input widths then cover every value a client can produce.
        rows = np.concatenate([rows, domain_rows(tree, tree_variables(tree))])

    def split(row: np.ndarray) -> list[np.ndarray]:
        """Each party's columns of a row (or of a matrix of rows)."""
        return [row[..., slices[p][0] : slices[p][1]] for p in settings.PARTIES]

    predict_set = [tuple(split(row)) for row in rows]
    explain_set = []
    for i, row in enumerate(rows):
        a, b, _ = split(row)
        candidates = np.stack([split(rows[(i + k) % len(rows)])[2] for k in range(n_candidates)])
        explain_set.append((a, b, candidates))
    # Batches of real rows, and one of each extreme row (the lookups' ranges are per row).
    batch = BATCH_ROWS
    batch_set = [
        tuple(split(rows[(np.arange(batch) + i) % len(rows)])) for i in range(0, len(rows), 7)
    ]
    batch_set += [tuple(split(np.stack([row] * batch))) for row in extremes]
    configuration = fhe.Configuration(**FHE_CONFIGURATION)
    inputsets = {"predict": predict_set, "predict_batch": batch_set, "explain": explain_set}
    return tree.module().compile(inputsets, configuration)


def measure_warm_predict(module: Any, q_rows: np.ndarray, slices: dict, runs: int = 3) -> float:
    """Median warm FHE predict time (s) with real encryption, keys generated in-process."""
    module.keygen()
    times = []
    for row in q_rows[: runs + 1]:
        args = module.predict.encrypt(*[row[slices[p][0] : slices[p][1]] for p in settings.PARTIES])
        start = time.perf_counter()
        module.predict.run(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def measure_wire_format(
    module: Any, tree: QuantizedTree, q_rows: np.ndarray, n_candidates: int
) -> dict[str, Any]:
    """Exact byte length and fixed header of each serialized input and of the evaluation keys.

    Compressed ciphertexts and keys of this circuit always serialize to the same length with the
    same leading structure (only seeds and bodies differ), so the server can reject bytes of the
    wrong party, shape or circuit before handing them to the native deserializer, which can
    crash on a corrupted key structure. The fixed header is the longest prefix shared by every
    sample of several key generations and encryptions (a random byte matches by chance with
    probability 1/256 per extra sample, so the samples are many).
    """
    slices = tree.party_slices
    samples: dict[str, list[bytes]] = {}
    for _ in range(KEYGENS_FOR_WIRE_FORMAT):
        module.keygen(force=True)
        samples.setdefault("evaluation_keys", []).append(module.keys.evaluation.serialize())
        for row in q_rows:
            parts = [row[slices[p][0] : slices[p][1]] for p in settings.PARTIES]
            for party, value in zip(settings.PARTIES, module.predict.encrypt(*parts), strict=True):
                samples.setdefault(party, []).append(value.serialize())
            candidates = np.stack([parts[2]] * n_candidates)
            encrypted = module.explain.encrypt(None, None, candidates)[2]
            samples.setdefault("candidates", []).append(encrypted.serialize())
        rows = q_rows[np.arange(BATCH_ROWS) % len(q_rows)]
        parts = [rows[:, slices[p][0] : slices[p][1]] for p in settings.PARTIES]
        for party, value in zip(
            settings.PARTIES, module.predict_batch.encrypt(*parts), strict=True
        ):
            samples.setdefault(BATCH_INPUTS[party], []).append(value.serialize())
    wire = {}
    for name, blobs in samples.items():
        lengths = {len(b) for b in blobs}
        assert len(lengths) == 1, f"{name}: serialized length is not fixed: {lengths}"
        prefix = os.path.commonprefix(blobs)
        wire[name] = {"bytes": lengths.pop(), "prefix_hex": prefix.hex()}
    return wire


def build(frame: pd.DataFrame, n_bits: int, max_depth: int) -> dict[str, Any]:
    """Split, fit the tree and derive the per-party preprocessing (no compilation, no files).

    Returns:
        A dict with x, y, q (client-side quantized rows), idx_train, idx_test, model, tree, spec
        (the preprocessing JSON) and ranges (the field ranges JSON).
    """
    x = float_features(frame)
    y = frame["approved"].to_numpy()
    idx_train, idx_test = train_test_split(
        np.arange(len(frame)),
        test_size=settings.TEST_FRACTION,
        random_state=settings.SEED,
        stratify=y,
    )
    ranges = field_ranges(frame)
    model, tree, spec = fit_tree(
        x[idx_train], y[idx_train], n_bits=n_bits, max_depth=max_depth, ranges=ranges
    )
    q = circuit_rows(spec, x)
    # Quantized inputs are exactly Concrete ML's quantized features ...
    quantized_model_features = model.quantize_input(x)
    for index, feature in enumerate(circuit_layout(spec)[0]):
        if feature["encoding"] == "quantized":
            column = q[:, feature["column"]]
            assert np.array_equal(column, quantized_model_features[:, index]), "quantizer differs"
    # ... and the clients' encoding, through the circuit's integer arithmetic, gives exactly
    # Concrete ML's quantized tree's verdicts, on every row.
    expected = model.sklearn_model.predict(quantized_model_features)
    assert np.array_equal(tree.predict_clear(q), expected), "circuit tree differs from the model"
    return {
        "x": x,
        "y": y,
        "q": q,
        "idx_train": idx_train,
        "idx_test": idx_test,
        "model": model,
        "tree": tree,
        "spec": spec,
        "ranges": ranges,
    }


def main(out_dir: Path = settings.DEPLOYMENT_DIR, real_fhe_rows: int = N_REAL_FHE_ROWS) -> dict:
    """Regenerate the data, the artifacts and the model report; return the model card."""
    n_bits, max_depth = settings.CHOSEN_N_BITS, settings.CHOSEN_MAX_DEPTH
    settings.DATA_DIR.mkdir(exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings.REFERENCE_TREE_PATH.parent.mkdir(parents=True, exist_ok=True)

    frame = generate(settings.N_ROWS, settings.SEED)
    frame.to_csv(settings.DATA_PATH, index=False)
    built = build(frame, n_bits=n_bits, max_depth=max_depth)
    tree, idx_train, idx_test = built["tree"], built["idx_train"], built["idx_test"]
    x, y, q_all, ranges = built["x"], built["y"], built["q"], built["ranges"]
    print(f"data: {len(frame)} rows, approval rate {y.mean():.3f}")
    (out_dir / settings.PREPROCESSING_PATH.name).write_text(
        json.dumps(built["spec"], indent=1) + "\n"
    )
    (out_dir / settings.FIELD_RANGES_PATH.name).write_text(json.dumps(ranges, indent=1) + "\n")
    q_train, q_test = q_all[idx_train], q_all[idx_test]
    y_test = y[idx_test]

    float_tree = SkDecisionTreeClassifier(max_depth=max_depth, random_state=settings.SEED)
    float_tree.fit(x[idx_train], y[idx_train])
    y_float = float_tree.predict(x[idx_test])
    y_quant = tree.predict_clear(q_test)

    n_candidates = len(settings.YEARS_EMPLOYED_BINS)
    print("compiling the FHE module ...")
    start = time.perf_counter()
    module = compile_module(tree, q_train, n_candidates)
    compile_s = time.perf_counter() - start
    module.server.save(out_dir / settings.SERVER_ARTIFACT_PATH.name)
    (out_dir / settings.CLIENT_SPECS_PATH.name).write_bytes(module.server.client_specs.serialize())
    settings.REFERENCE_TREE_PATH.write_text(json.dumps(tree.to_json(), indent=1) + "\n")

    slices = tree.party_slices

    def split(row: np.ndarray) -> list[np.ndarray]:
        return [row[slices[p][0] : slices[p][1]] for p in settings.PARTIES]

    print("simulating the whole held-out set ...")
    y_sim = np.array([int(module.predict.simulate(*split(row))) for row in q_test])
    print(f"real FHE on {real_fhe_rows} held-out rows ...")
    module.keygen()
    real_rows = q_test[:real_fhe_rows]
    y_real, times = [], []
    for row in real_rows:
        encrypted = module.predict.encrypt(*split(row))
        start = time.perf_counter()
        result = module.predict.run(*encrypted)
        times.append(time.perf_counter() - start)
        y_real.append(int(module.predict.decrypt(result)))
    y_real = np.array(y_real)
    wire_format = measure_wire_format(module, tree, q_test[:4], n_candidates)

    probe = q_test[:N_PROBE]
    card = {
        "versions": library_versions(),
        "parameters": {
            "model": "concrete.ml.sklearn.DecisionTreeClassifier",
            "n_bits": n_bits,
            "max_depth": max_depth,
            "seed": settings.SEED,
            "fhe_configuration": FHE_CONFIGURATION,
            "explain_candidates": n_candidates,
            "batch_rows": BATCH_ROWS,
            "comparisons": len(tree.comparisons),
            "bootstrapped_comparisons": len(tree.bootstrapped),
            "matched_leaf_class": tree.leaf_class,
            "matched_leaves": len(tree.leaf_paths),
            # "lookups": the two-lookup form of development/two_lookups.py; "paths": one
            # bootstrap per threshold comparison and per matched leaf.
            "circuit_form": "lookups" if find_two_lookup_form(tree) is not None else "paths",
        },
        "feature_layout": {p: list(settings.PARTY_FIELDS[p]) for p in settings.PARTIES},
        "input_shapes": {p: [s1 - s0] for p, (s0, s1) in slices.items()}
        | {"candidates": [n_candidates, slices["credit_bureau"][1] - slices["credit_bureau"][0]]}
        | {BATCH_INPUTS[p]: [BATCH_ROWS, s1 - s0] for p, (s0, s1) in slices.items()},
        "wire_format": wire_format,
        "bootstraps": {
            "predict": int(module.predict.programmable_bootstrap_count),
            "explain": int(module.explain.programmable_bootstrap_count),
            "predict_batch": int(module.predict_batch.programmable_bootstrap_count),
        },
        "data": {
            "rows": len(frame),
            "train_rows": len(idx_train),
            "test_rows": len(idx_test),
            "approval_rate": round(float(y.mean()), 4),
            "rules": RULES,
        },
        "metrics": {
            "f1_float": round(float(f1_score(y_test, y_float)), 4),
            "f1_quantized": round(float(f1_score(y_test, y_quant)), 4),
            "f1_fhe_simulated": round(float(f1_score(y_test, y_sim)), 4),
            "agreement_simulated": round(float(np.mean(y_sim == y_quant)), 4),
            "agreement_real_fhe": round(float(np.mean(y_real == y_quant[:real_fhe_rows])), 4),
            "real_fhe_rows": real_fhe_rows,
            "accuracy_quantized": round(float(np.mean(y_quant == y_test)), 4),
            "real_fhe_median_predict_s": round(float(np.median(times)), 3),
            "compile_s": round(compile_s, 1),
        },
        "probe": {
            "rows": probe.tolist(),
            "predictions": tree.predict_clear(probe).tolist(),
        },
    }
    (out_dir / settings.MODEL_CARD_PATH.name).write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("parameters", "bootstraps", "metrics")}, indent=1))
    from development import threeparty_layout  # imports this module: not at the top

    threeparty_layout.main(layout_path=out_dir / threeparty_layout.LAYOUT_PATH.name)
    return card


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-fhe-rows", type=int, default=N_REAL_FHE_ROWS)
    main(real_fhe_rows=parser.parse_args().real_fhe_rows)
