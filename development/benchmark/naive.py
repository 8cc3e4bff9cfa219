"""Stage 3, the naive port: Concrete ML's own tree, default compilation, single-function deploy.

``DecisionTreeClassifier(n_bits=6)`` of the same depth on the same training split, compiled with
the default configuration (no compression) and deployed with FHEModelDev / FHEModelClient /
FHEModelServer. Its times are compared with ours (stage 2) in ratios. Then the same tree at
``n_bits=3`` (our inputs' precision), warm runs only, for the second ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from concrete import fhe
from sklearn.metrics import f1_score
from tqdm import tqdm

import settings
from development.benchmark.dataset import Dataset
from development.benchmark.options import Options
from development.benchmark.report import Report
from development.benchmark.timing import Stopwatch, timed

NAIVE_N_BITS = 6
NAIVE_LOW_N_BITS = 3
"""The naive port again at our own input precision (3 bits): fewer, smaller bootstraps."""
NAIVE_SLOW_RUN_SECONDS = 30.0
NAIVE_SLOW_CAP = 3


@dataclass
class NaiveFreshRuns:
    """What the fresh runs of the naive port leave for its warm runs.

    Attributes:
        client: the naive port's ``FHEModelClient`` (its last keys).
        server: its ``FHEModelServer``.
        evaluation_keys: the last evaluation keys, deserialized (warmed up by a run).
        runs: how many runs were measured (fewer if one run was too slow).
        agreement: per run, whether the FHE prediction was the clear one.
        decrypt_seconds: per measured run, the decryption's seconds.
        evaluation_key_bytes: the size of the serialized evaluation keys.
        fresh_seconds: the median of a predict on fresh keys.
    """

    client: Any
    server: Any
    evaluation_keys: Any
    runs: int
    agreement: list[bool]
    decrypt_seconds: list[float]
    evaluation_key_bytes: int
    fresh_seconds: float


def measure_naive(
    report: Report, options: Options, data: Dataset, card: dict[str, Any], work_dir: Path
) -> None:
    """Concrete ML's own tree (n_bits 6, same depth), default compile, single-function deploy."""
    from concrete.ml.deployment import FHEModelDev

    report.stage("naive port")
    model, y_naive = fit_naive(report, data, card)
    model_dir = work_dir / "naive_model"
    FHEModelDev(str(model_dir), model).save()
    x_test = data.built["x"][data.built["idx_test"]]
    fresh = naive_fresh_runs(report, options, model_dir, x_test, y_naive)
    naive_warm_runs(report, fresh, x_test, y_naive)


def fit_naive(report: Report, data: Dataset, card: dict[str, Any]) -> tuple[Any, Any]:
    """Fit and compile the naive port on the training split; return it and its test predictions."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    max_depth = int(card["parameters"]["max_depth"])
    x, y = data.built["x"], data.built["y"]
    idx_train, idx_test = data.built["idx_train"], data.built["idx_test"]
    model = DecisionTreeClassifier(
        n_bits=NAIVE_N_BITS, max_depth=max_depth, random_state=settings.SEED
    )
    fit_s, _ = timed(lambda: model.fit(x[idx_train], y[idx_train]))
    compile_s, _ = timed(lambda: model.compile(x[idx_train]))
    report.record("naive_n_bits", NAIVE_N_BITS)
    report.record("naive_max_depth", max_depth)
    report.record("naive_compile_s", round(compile_s + fit_s, 3))
    y_naive = model.predict(x[idx_test])
    naive_f1 = report.record("naive_f1", round(float(f1_score(y[idx_test], y_naive)), 4))
    f1_gap = round(abs(float(report.values["f1_quantized"]) - naive_f1) * 100, 2)
    report.record("f1_gap_vs_naive_points", f1_gap)
    report.record("naive_bootstraps", int(model.fhe_circuit.programmable_bootstrap_count))
    return model, y_naive


def naive_fresh_runs(
    report: Report, options: Options, model_dir: Path, x_test: Any, y_naive: Any
) -> NaiveFreshRuns:
    """Key generation and a predict on fresh keys, run after run (the first one a warm-up)."""
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    # No key directory (a key-set cache): with one, every keygen would reload the same keys.
    client = FHEModelClient(str(model_dir), key_dir=None)
    server = FHEModelServer(str(model_dir))

    runs = options.naive_runs
    warmup = 0 if options.quick else 1
    keygen, fresh, deserialize, encrypt_times, decrypt_times = [], [], [], [], []
    ek_size, ct_size = 0, 0
    agreement: list[bool] = []
    evaluation_keys: Any = None
    index = 0
    bar = tqdm(total=warmup + runs, desc="naive keygen + fresh predict", leave=False)
    while index < warmup + runs:
        row = index % len(x_test)
        with Stopwatch() as keygen_watch:
            client.generate_private_and_evaluation_keys(force=True)
        ek_bytes = client.get_serialized_evaluation_keys()
        with Stopwatch() as deserialize_watch:
            evaluation_keys = fhe.EvaluationKeys.deserialize(ek_bytes)
        with Stopwatch() as encrypt_watch:
            encrypted = client.quantize_encrypt_serialize(x_test[row : row + 1])
        with Stopwatch() as fresh_watch:
            output = server.run(encrypted, evaluation_keys)
        with Stopwatch() as decrypt_watch:
            probabilities = client.deserialize_decrypt_dequantize(output)
        agreement.append(int(np.argmax(probabilities[0])) == int(y_naive[row]))
        ek_size, ct_size = len(ek_bytes), len(encrypted)
        if index >= warmup:
            keygen.append(keygen_watch.seconds)
            fresh.append(fresh_watch.seconds)
            deserialize.append(deserialize_watch.seconds)
            encrypt_times.append(encrypt_watch.seconds)
            decrypt_times.append(decrypt_watch.seconds)
        if fresh_watch.seconds > NAIVE_SLOW_RUN_SECONDS and runs > NAIVE_SLOW_CAP:
            report.note(
                f"one naive FHE run took {fresh_watch.seconds:.1f} s "
                f"(> {NAIVE_SLOW_RUN_SECONDS:.0f} s): the naive port is capped at "
                f"{NAIVE_SLOW_CAP} runs"
            )
            runs = NAIVE_SLOW_CAP
            bar.total = warmup + runs
        index += 1
        bar.update(1)
    bar.close()
    report.record("naive_runs", runs)
    report.median("naive_keygen_s", keygen)
    report.record("naive_evaluation_key_bytes", ek_size)
    report.record("naive_ciphertext_bytes", ct_size)
    report.median("naive_encrypt_s", encrypt_times)
    report.median("naive_evaluation_key_deserialize_s", deserialize)
    naive_fresh = report.median("naive_fresh_predict_s", fresh)
    return NaiveFreshRuns(
        client=client,
        server=server,
        evaluation_keys=evaluation_keys,
        runs=runs,
        agreement=agreement,
        decrypt_seconds=decrypt_times,
        evaluation_key_bytes=ek_size,
        fresh_seconds=naive_fresh,
    )


def naive_warm_runs(report: Report, fresh: NaiveFreshRuns, x_test: Any, y_naive: Any) -> None:
    """Warm predicts on the last keys, then the naive port's figures beside ours (the ratios)."""
    client, server, evaluation_keys = fresh.client, fresh.server, fresh.evaluation_keys
    agreement = fresh.agreement
    # Warm runs: the same deserialized keys again (the fresh run above warmed them up).
    warm, row = [], 0
    for _ in tqdm(range(fresh.runs), desc="naive warm predict", leave=False):
        row = (row + 1) % len(x_test)
        encrypted = client.quantize_encrypt_serialize(x_test[row : row + 1])
        with Stopwatch() as warm_watch:
            output = server.run(encrypted, evaluation_keys)
        probabilities = client.deserialize_decrypt_dequantize(output)
        agreement.append(int(np.argmax(probabilities[0])) == int(y_naive[row]))
        warm.append(warm_watch.seconds)
    naive_warm = report.median("naive_warm_predict_s", warm)
    report.median("naive_decrypt_s", fresh.decrypt_seconds)
    report.record("naive_fhe_agreement_real", round(float(np.mean(agreement)), 4))
    report.record(
        "naive_time_per_bootstrap_s",
        round(naive_warm / max(1, report.values["naive_bootstraps"]), 6),
    )
    ours = float(report.values["warm_predict_s"])
    report.record("speedup_vs_naive", round(naive_warm / ours, 2))
    report.record("predict_time_ratio", round(ours / naive_warm, 4))
    report.record(
        "fresh_predict_time_ratio",
        round(float(report.values["fresh_predict_s"]) / fresh.fresh_seconds, 4),
    )
    report.record(
        "upload_ratio", round(report.values["evaluation_key_bytes"] / fresh.evaluation_key_bytes, 4)
    )


def measure_naive_low_bits(
    report: Report, options: Options, data: Dataset, card: dict[str, Any], work_dir: Path
) -> None:
    """Concrete ML's own tree at n_bits 3 (same depth, default compile): warm predict only."""
    from concrete.ml.deployment import FHEModelClient, FHEModelDev, FHEModelServer
    from concrete.ml.sklearn import DecisionTreeClassifier

    report.stage(f"naive port, n_bits {NAIVE_LOW_N_BITS}")
    max_depth = int(card["parameters"]["max_depth"])
    x, y = data.built["x"], data.built["y"]
    idx_train, idx_test = data.built["idx_train"], data.built["idx_test"]
    model = DecisionTreeClassifier(
        n_bits=NAIVE_LOW_N_BITS, max_depth=max_depth, random_state=settings.SEED
    )
    model.fit(x[idx_train], y[idx_train])
    model.compile(x[idx_train])
    y_naive = model.predict(x[idx_test])
    report.record("naive3_f1", round(float(f1_score(y[idx_test], y_naive)), 4))
    report.record("naive3_bootstraps", int(model.fhe_circuit.programmable_bootstrap_count))
    model_dir = work_dir / "naive3_model"
    FHEModelDev(str(model_dir), model).save()
    client = FHEModelClient(str(model_dir), key_dir=None)
    server = FHEModelServer(str(model_dir))
    client.generate_private_and_evaluation_keys(force=True)
    evaluation_keys = fhe.EvaluationKeys.deserialize(client.get_serialized_evaluation_keys())
    x_test = x[idx_test]
    warm, agreement = [], []
    for index in tqdm(range(options.naive_runs + 1), desc="naive 3-bit warm", leave=False):
        encrypted = client.quantize_encrypt_serialize(x_test[index : index + 1])
        with Stopwatch() as watch:
            output = server.run(encrypted, evaluation_keys)
        probabilities = client.deserialize_decrypt_dequantize(output)
        agreement.append(int(np.argmax(probabilities[0])) == int(y_naive[index]))
        if index:  # the first run on the keys expands them
            warm.append(watch.seconds)
    naive_warm = report.median("naive3_warm_predict_s", warm)
    report.record("naive3_fhe_agreement_real", round(float(np.mean(agreement)), 4))
    report.record(
        "naive3_time_per_bootstrap_s",
        round(naive_warm / max(1, report.values["naive3_bootstraps"]), 6),
    )
    ours = float(report.values["warm_predict_s"])
    report.record("speedup_vs_naive3", round(naive_warm / ours, 2))
