"""Benchmark report: latency, sizes, memory and accuracy, beside the naive Concrete ML port.

Run from the repository root::

    python -m development.benchmark            # full run (medians over 5 runs after a warm-up)
    python -m development.benchmark --quick    # 1 run and tiny counts (the smoke test uses it)

Everything is measured in ONE run on the same machine, so the ratios to the naive port hold when
the machine's speed drifts:

1. accuracy: the float sklearn tree, the quantized tree in clear and the FHE simulation on the
   whole held-out set (the module is recompiled from ``development.train.build`` on
   ``data/applications.csv``; the rebuilt tree must equal the deployed reference tree);
2. client and server FHE with the deployed artifacts (``fhe.Client`` on client_specs.json,
   ``fhe.Server.load`` of server.zip): key generation, evaluation-key size, encryption time and
   ciphertext size per party, FHE predict with freshly deserialized keys and warm, explain of
   all candidate bins, decryption, and real FHE on held-out rows (agreement with the clear tree);
3. the naive port: Concrete ML's own ``DecisionTreeClassifier(n_bits=6)`` of the same depth on
   the same training split, compiled with the default configuration (no compression) and
   deployed single-function with FHEModelDev / FHEModelClient / FHEModelServer;
4. over HTTP against a real ``uvicorn server:app`` started here on a free port (sessions in a
   temporary FHE_STORE_DIR): the five-step flow with ``backend.CreditScoringClient`` and explain
   on refused profiles, the server's RSS after 1 and 5 live sessions, decisions per minute with
   4 clients at once and /health latency while FHE runs.

Results go to ``<out>/benchmark_results.json`` (seconds, bytes, fractions) and
``<out>/benchmark_results.md`` (each figure, its target, met or missed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
from concrete import fhe
from sklearn.metrics import f1_score
from sklearn.tree import DecisionTreeClassifier as SkDecisionTreeClassifier
from tqdm import tqdm

import settings

DEFAULT_RUNS = 5
DEFAULT_REAL_FHE_ROWS = 20
DEFAULT_THROUGHPUT_DECISIONS = 20
THROUGHPUT_CLIENTS = 4
RSS_SESSIONS = 5
QUICK_SIMULATED_ROWS = 200
NAIVE_N_BITS = 6
NAIVE_MAX_RUNS = 5
NAIVE_SLOW_RUN_SECONDS = 30.0
NAIVE_SLOW_CAP = 3
HEALTH_POLL_SECONDS = 0.1
SERVER_START_TIMEOUT_SECONDS = 180.0
# The benchmark server lets every throughput client queue (the default allows 4 waiting jobs).
SERVER_ENV = {"FHE_MAX_WAITING_FHE": "8"}
MAX_BUSY_RETRIES = 20
MB = 1_000_000

REQUIRED_KEYS = (
    "keygen_s",
    "evaluation_key_bytes",
    "warm_predict_s",
    "fresh_predict_s",
    "explain_s",
    "flow_s",
    "naive_warm_predict_s",
    "naive_evaluation_key_bytes",
    "f1_float",
    "f1_quantized",
    "fhe_agreement_simulated",
    "fhe_agreement_real",
    "server_rss_5_sessions_bytes",
    "cpu_model",
    "cores",
    "date",
)

STAGES = (
    "accuracy",
    "client keys",
    "encryption",
    "warm predict",
    "explain",
    "real FHE rows",
    "naive port",
    "server start",
    "HTTP flows",
    "throughput",
    "report",
)


# ---------------------------------------------------------------------------------------------
# Recording figures
# ---------------------------------------------------------------------------------------------
@dataclass
class Options:
    """What to measure and how many times.

    Attributes:
        runs: measured runs of each timing (after one warm-up run).
        naive_runs: measured runs of the naive port (it is ~30x slower).
        real_fhe_rows: held-out rows decided with real FHE for the accuracy figures.
        throughput_decisions: decisions made by the 4 concurrent HTTP clients.
        quick: smoke-test mode (tiny counts, no warm-up of the naive port's fresh-key runs).
        out_dir: where the JSON and Markdown results are written.
        command: the command line, as written in the report.
    """

    runs: int
    naive_runs: int
    real_fhe_rows: int
    throughput_decisions: int
    quick: bool
    out_dir: Path
    command: str


@dataclass
class Report:
    """Figures measured so far, with their samples, one summary line per figure.

    Attributes:
        values: figure name -> value (seconds, bytes, fractions, ratios, strings).
        samples: figure name -> every measured sample (seconds) behind a median.
        notes: remarks printed in the Markdown report.
        bar: the overall progress bar (one step per stage).
    """

    values: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bar: Any = None
    _staged: bool = False

    def add(self, key: str, value: Any, label: str, unit: str = "") -> None:
        """Record one figure and print its one-line summary.

        Args:
            key: the JSON key.
            value: the figure.
            label: what it is, in words.
            unit: "s", "bytes", "fraction", "ratio", "per_min" or "" (printed as is).
        """
        self.values[key] = value
        tqdm.write(f"  {label:<58} {format_value(value, unit)}")

    def add_median(self, key: str, samples: list[float], label: str) -> float:
        """Record the median of timing samples (seconds) and keep the samples."""
        value = float(np.median(samples))
        self.samples[key] = [round(s, 6) for s in samples]
        spread = f" (min {min(samples):.3f}, max {max(samples):.3f}, n={len(samples)})"
        self.values[key] = round(value, 6)
        tqdm.write(f"  {label:<58} {format_value(value, 's')}{spread}")
        return value

    def note(self, text: str) -> None:
        """Keep a remark for the report and print it."""
        self.notes.append(text)
        tqdm.write(f"  note: {text}")

    def stage(self, name: str) -> None:
        """Advance the overall progress bar to a new stage."""
        if self.bar is not None:
            if self._staged:
                self.bar.update(1)
            self.bar.set_description(name)
        self._staged = True
        tqdm.write(f"[{name}]")


def format_value(value: Any, unit: str) -> str:
    """Format a figure for a summary line or the Markdown table."""
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s" if value < 100 else f"{value:.1f} s"
    if unit == "bytes":
        return f"{int(value):,} B ({value / MB:.2f} MB)"
    if unit == "fraction":
        return f"{value:.4f}"
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit == "per_min":
        return f"{value:.1f} / min"
    return str(value)


class Stopwatch:
    """Wall time of a ``with`` block.

    Attributes:
        seconds: the block's duration, once it has ended.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``func`` once; return (seconds, its result)."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def longest_gil_stall(func: Callable[[], Any], tick: float = 0.005) -> tuple[float, float]:
    """Run ``func`` while another thread ticks; return (func's seconds, longest tick gap).

    A gap close to the call's duration means the call holds Python's GIL throughout, so
    other threads of the same process cannot run meanwhile.
    """
    gaps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        seconds, _ = timed(func)
    finally:
        stop.set()
        thread.join()
    return seconds, max(gaps, default=0.0)


def sample_times(func: Callable[[], Any], runs: int, desc: str, warmup: int = 1) -> list[float]:
    """Time ``func`` ``runs`` times after ``warmup`` discarded runs; return the seconds."""
    times = []
    for index in tqdm(range(warmup + runs), desc=desc, leave=False):
        seconds, _ = timed(func)
        if index >= warmup:
            times.append(seconds)
    return times


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU, cores, memory, load and library versions of this run."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "concrete_python": version("concrete-python"),
        "concrete_ml": version("concrete-ml"),
    }


# ---------------------------------------------------------------------------------------------
# Data and accuracy
# ---------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """The same data, split and quantization as ``development.train``.

    Attributes:
        frame: the raw applications (data/applications.csv).
        built: what ``development.train.build`` returns (x, y, q, idx_train, idx_test, model,
            tree, ...).
        y_quant: the quantized tree's verdicts on the held-out rows (clear).
    """

    frame: pd.DataFrame
    built: dict[str, Any]
    y_quant: np.ndarray

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


def split_row(row: np.ndarray, slices: dict[str, tuple[int, int]]) -> list[np.ndarray]:
    """Cut one circuit-ordered row into the parties' vectors."""
    return [row[slices[p][0] : slices[p][1]] for p in settings.PARTIES]


def measure_accuracy(
    report: Report, card: dict[str, Any], simulated_rows: int | None = None
) -> tuple[Dataset, Any]:
    """Float, quantized and simulated-FHE accuracy on the whole held-out set.

    Args:
        report: where the figures go.
        card: the model card (n_bits, max_depth, explain candidates).
        simulated_rows: simulate only the first held-out rows (quick mode), None for all.

    Returns:
        The dataset and the recompiled module (for the compile time and bootstrap counts).

    Raises:
        RuntimeError: if the data rebuilds another tree than the deployed reference tree.
    """
    from development import train

    parameters = card["parameters"]
    n_bits, max_depth = int(parameters["n_bits"]), int(parameters["max_depth"])
    frame = pd.read_csv(settings.DATA_PATH)
    build_s, built = timed(lambda: train.build(frame, n_bits=n_bits, max_depth=max_depth))
    tree = built["tree"]
    reference = json.loads(settings.REFERENCE_TREE_PATH.read_text(encoding="utf-8"))
    if json.loads(json.dumps(tree.to_json())) != reference:
        raise RuntimeError(
            "data/applications.csv rebuilds another tree than the deployed one: regenerate the "
            "artifacts with `python -m development.train`"
        )
    x, y, q = built["x"], built["y"], built["q"]
    idx_train, idx_test = built["idx_train"], built["idx_test"]
    y_test = y[idx_test]
    report.add("build_s", round(build_s, 3), "rebuild split + tree (same as deployed)", "s")

    float_tree = SkDecisionTreeClassifier(max_depth=max_depth, random_state=settings.SEED)
    float_tree.fit(x[idx_train], y[idx_train])
    y_float = float_tree.predict(x[idx_test])
    y_quant = tree.predict_clear(q[idx_test])
    report.add("test_rows", int(len(idx_test)), "held-out rows")
    report.add("f1_float", round(float(f1_score(y_test, y_float)), 4), "F1 float sklearn tree")
    report.add("f1_quantized", round(float(f1_score(y_test, y_quant)), 4), "F1 quantized (clear)")
    report.add(
        "agreement_quantized_float",
        round(float(np.mean(y_quant == y_float)), 4),
        "agreement quantized vs float",
        "fraction",
    )

    n_candidates = int(parameters["explain_candidates"])
    compile_s, module = timed(lambda: train.compile_module(tree, q[idx_train], n_candidates))
    report.add("compile_s", round(compile_s, 3), "compile our module (predict + explain)", "s")
    slices = tree.party_slices
    n_sim = len(idx_test) if simulated_rows is None else min(simulated_rows, len(idx_test))
    q_test = q[idx_test][:n_sim]
    simulate_s, y_sim = timed(
        lambda: np.array(
            [
                int(module.predict.simulate(*split_row(row, slices)))
                for row in tqdm(q_test, desc="simulate", leave=False)
            ]
        )
    )
    report.add(
        "fhe_agreement_simulated",
        round(float(np.mean(y_sim == y_quant[:n_sim])), 4),
        f"agreement FHE simulation vs clear ({n_sim} rows)",
        "fraction",
    )
    report.add("simulated_rows", n_sim, "held-out rows simulated")
    report.add(
        "f1_fhe_simulated",
        round(float(f1_score(y_test[:n_sim], y_sim, zero_division=0.0)), 4),
        "F1 FHE simulation",
    )
    report.add("simulate_s", round(simulate_s, 3), "simulation time", "s")
    if n_sim < len(idx_test):
        report.note(f"quick mode: FHE simulation on the first {n_sim} held-out rows only")
    return Dataset(frame=frame, built=built, y_quant=y_quant), module


# ---------------------------------------------------------------------------------------------
# Client and server FHE with the deployed artifacts (no HTTP)
# ---------------------------------------------------------------------------------------------
def measure_direct_fhe(
    report: Report, options: Options, data: Dataset, card: dict[str, Any], work_dir: Path
) -> None:
    """Client crypto and server FHE times with fhe.Client and fhe.Server.load of the artifacts."""
    runs = options.runs
    slices = data.built["tree"].party_slices
    specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
    server = fhe.Server.load(settings.SERVER_ARTIFACT_PATH)
    # No key-set cache directory: with one, keygen(force=True) reloads the same cached keys.
    client = fhe.Client(specs)
    q_test, y_quant = data.q_test, data.y_quant
    row_args = split_row(q_test[0], slices)

    # Keys: each run generates new keys, serializes the evaluation keys ("upload"), deserializes
    # them on the server side and runs predict once: the first run after deserializing them.
    report.stage("client keys")
    # Does key generation let other threads of the process run? (It is measured apart.)
    keygen_once, stall = longest_gil_stall(lambda: client.keygen(force=True))
    report.add(
        "keygen_gil_hold_fraction",
        round(min(1.0, stall / keygen_once), 3),
        "share of a keygen during which other threads cannot run",
        "fraction",
    )
    keygen, serialize, deserialize, fresh = [], [], [], []
    ek_sizes = set()
    evaluation_keys: Any = None
    for index in tqdm(range(1 + runs), desc="keygen + fresh predict", leave=False):
        with Stopwatch() as keygen_watch:
            client.keygen(force=True)
        with Stopwatch() as serialize_watch:
            ek_bytes = client.evaluation_keys.serialize()
        with Stopwatch() as deserialize_watch:
            evaluation_keys = fhe.EvaluationKeys.deserialize(ek_bytes)
        encrypted = client.encrypt(*row_args, function_name="predict")
        with Stopwatch() as fresh_watch:
            server.run(*encrypted, evaluation_keys=evaluation_keys, function_name="predict")
        ek_sizes.add(len(ek_bytes))
        if index:  # the first round is the warm-up
            keygen.append(keygen_watch.seconds)
            serialize.append(serialize_watch.seconds)
            deserialize.append(deserialize_watch.seconds)
            fresh.append(fresh_watch.seconds)
    report.add_median("keygen_s", keygen, "client key generation")
    report.add("evaluation_key_bytes", max(ek_sizes), "evaluation-key upload size", "bytes")
    report.add_median("evaluation_key_serialize_s", serialize, "evaluation-key serialization")
    report.add_median("evaluation_key_deserialize_s", deserialize, "server key deserialization")
    report.add_median("fresh_predict_s", fresh, "FHE predict, first run with fresh keys")
    report.add(
        "server_key_memory_bytes",
        int(server.size_of_bootstrap_keys + server.size_of_keyswitch_keys),
        "bootstrap + key-switch keys once expanded (server)",
        "bytes",
    )

    report.stage("encryption")
    parties = list(settings.PARTIES)
    for position, party in enumerate(parties):
        arguments: list[np.ndarray | None] = [None, None, None]
        arguments[position] = row_args[position]

        def encrypt_one(arguments: list[np.ndarray | None] = arguments) -> Any:
            return client.encrypt(*arguments, function_name="predict")

        times = sample_times(encrypt_one, runs, desc=f"encrypt {party}")
        report.add_median(f"encrypt_{party}_s", times, f"encrypt {party}")
        size = len(encrypt_one()[position].serialize())
        report.add(f"ciphertext_{party}_bytes", size, f"{party} ciphertext", "bytes")
    n_candidates = int(card["parameters"]["explain_candidates"])
    c0, c1 = slices["credit_bureau"]
    candidates = np.stack([q_test[i][c0:c1] for i in range(n_candidates)])

    def encrypt_candidates() -> Any:
        return client.encrypt(None, None, candidates, function_name="explain")

    report.add_median(
        "encrypt_candidates_s",
        sample_times(encrypt_candidates, runs, desc="encrypt candidates"),
        f"encrypt the {n_candidates} explain candidates",
    )
    report.add(
        "ciphertext_candidates_bytes",
        len(encrypt_candidates()[2].serialize()),
        "candidates ciphertext",
        "bytes",
    )

    report.stage("warm predict")
    encrypted = client.encrypt(*row_args, function_name="predict")
    warm = sample_times(
        lambda: server.run(*encrypted, evaluation_keys=evaluation_keys, function_name="predict"),
        runs,
        desc="warm predict",
    )
    warm_s = report.add_median("warm_predict_s", warm, "FHE predict, warm keys")
    output = server.run(*encrypted, evaluation_keys=evaluation_keys, function_name="predict")
    output_bytes = output.serialize()
    report.add("output_bytes", len(output_bytes), "encrypted verdict", "bytes")

    def decrypt() -> int:
        value = fhe.Value.deserialize(output_bytes)
        return int(client.decrypt(value, function_name="predict"))

    report.add_median("decrypt_s", sample_times(decrypt, runs, desc="decrypt"), "decrypt verdict")
    if decrypt() != int(y_quant[0]):
        raise RuntimeError("the FHE verdict differs from the clear tree's on held-out row 0")

    report.stage("explain")
    a, b, _ = encrypted
    _, _, encrypted_candidates = encrypt_candidates()
    explain = sample_times(
        lambda: server.run(
            a, b, encrypted_candidates, evaluation_keys=evaluation_keys, function_name="explain"
        ),
        runs,
        desc="explain",
    )
    explain_s = report.add_median("explain_s", explain, f"FHE explain, {n_candidates} bins")
    report.add(
        "explain_over_predict", round(explain_s / warm_s, 3), "explain / warm predict", "ratio"
    )
    result = server.run(
        a, b, encrypted_candidates, evaluation_keys=evaluation_keys, function_name="explain"
    )
    verdicts = np.asarray(client.decrypt(result, function_name="explain")).reshape(-1)
    rows = np.stack([np.concatenate([q_test[0][:c0], c]) for c in candidates])
    if not np.array_equal(verdicts, data.built["tree"].predict_clear(rows)):
        raise RuntimeError("the FHE explain verdicts differ from the clear tree's")
    bootstraps = {
        name: int(server.programmable_bootstrap_count(function=name))
        for name in ("predict", "explain")
    }
    report.add("bootstraps_predict", bootstraps["predict"], "bootstraps in predict")
    report.add("bootstraps_explain", bootstraps["explain"], "bootstraps in explain")
    # Measured time per bootstrap: the slope between the two functions of the same key set
    # (explain has more bootstraps of the same parameters); what is left is fixed overhead.
    extra = bootstraps["explain"] - bootstraps["predict"]
    per_bootstrap = (explain_s - warm_s) / extra if extra > 0 else warm_s / bootstraps["predict"]
    per_bootstrap = max(per_bootstrap, 0.0)
    report.add(
        "time_per_bootstrap_s",
        round(per_bootstrap, 6),
        "time per bootstrap ((explain - predict) / extra bootstraps)",
        "s",
    )

    report.stage("real FHE rows")
    n_rows = min(options.real_fhe_rows, len(q_test))
    y_real = []
    for row in tqdm(q_test[:n_rows], desc="real FHE rows", leave=False):
        args = client.encrypt(*split_row(row, slices), function_name="predict")
        out = server.run(*args, evaluation_keys=evaluation_keys, function_name="predict")
        y_real.append(int(client.decrypt(out, function_name="predict")))
    y_real_arr = np.array(y_real)
    y_true = data.y_test[:n_rows]
    report.add("real_fhe_rows", n_rows, "held-out rows decided with real FHE")
    report.add(
        "fhe_agreement_real",
        round(float(np.mean(y_real_arr == y_quant[:n_rows])), 4),
        "agreement real FHE vs clear",
        "fraction",
    )
    report.add(
        "f1_fhe_real_rows",
        round(float(f1_score(y_true, y_real_arr, zero_division=0.0)), 4),
        f"F1 of real FHE on those {n_rows} rows",
    )
    report.add(
        "f1_quantized_real_rows",
        round(float(f1_score(y_true, y_quant[:n_rows], zero_division=0.0)), 4),
        f"F1 of the clear tree on the same {n_rows} rows",
    )


# ---------------------------------------------------------------------------------------------
# The naive Concrete ML port
# ---------------------------------------------------------------------------------------------
def measure_naive(
    report: Report, options: Options, data: Dataset, card: dict[str, Any], work_dir: Path
) -> None:
    """Concrete ML's own tree (n_bits 6, same depth), default compile, single-function deploy."""
    from concrete.ml.deployment import FHEModelClient, FHEModelDev, FHEModelServer
    from concrete.ml.sklearn import DecisionTreeClassifier

    report.stage("naive port")
    max_depth = int(card["parameters"]["max_depth"])
    x, y = data.built["x"], data.built["y"]
    idx_train, idx_test = data.built["idx_train"], data.built["idx_test"]
    model = DecisionTreeClassifier(
        n_bits=NAIVE_N_BITS, max_depth=max_depth, random_state=settings.SEED
    )
    fit_s, _ = timed(lambda: model.fit(x[idx_train], y[idx_train]))
    compile_s, _ = timed(lambda: model.compile(x[idx_train]))
    report.add("naive_n_bits", NAIVE_N_BITS, "naive port: n_bits (Concrete ML default)")
    report.add("naive_max_depth", max_depth, "naive port: max_depth (same as ours)")
    report.add("naive_compile_s", round(compile_s + fit_s, 3), "naive port: fit + compile", "s")
    y_naive = model.predict(x[idx_test])
    naive_f1 = round(float(f1_score(y[idx_test], y_naive)), 4)
    report.add("naive_f1", naive_f1, "naive port: F1 (Concrete ML clear quantized predict)")
    f1_gap = round(abs(float(report.values["f1_quantized"]) - naive_f1) * 100, 2)
    report.add("f1_gap_vs_naive_points", f1_gap, "|F1 ours - F1 naive| in points")
    report.add(
        "naive_bootstraps",
        int(model.fhe_circuit.programmable_bootstrap_count),
        "naive port: bootstraps per prediction",
    )

    model_dir = work_dir / "naive_model"
    FHEModelDev(str(model_dir), model).save()
    # No key directory (a key-set cache): with one, every keygen would reload the same keys.
    client = FHEModelClient(str(model_dir), key_dir=None)
    server = FHEModelServer(str(model_dir))
    x_test = x[idx_test]

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
    report.add("naive_runs", runs, "naive port: measured runs")
    report.add_median("naive_keygen_s", keygen, "naive port: key generation")
    report.add("naive_evaluation_key_bytes", ek_size, "naive port: evaluation keys", "bytes")
    report.add("naive_ciphertext_bytes", ct_size, "naive port: input ciphertext", "bytes")
    report.add_median("naive_encrypt_s", encrypt_times, "naive port: quantize+encrypt+serialize")
    report.add_median("naive_evaluation_key_deserialize_s", deserialize, "naive port: key deser.")
    report.add_median("naive_fresh_predict_s", fresh, "naive port: FHE predict, fresh keys")

    # Warm runs: the same deserialized keys again (the fresh run above warmed them up).
    warm, row = [], 0
    for _ in tqdm(range(runs), desc="naive warm predict", leave=False):
        row = (row + 1) % len(x_test)
        encrypted = client.quantize_encrypt_serialize(x_test[row : row + 1])
        with Stopwatch() as warm_watch:
            output = server.run(encrypted, evaluation_keys)
        probabilities = client.deserialize_decrypt_dequantize(output)
        agreement.append(int(np.argmax(probabilities[0])) == int(y_naive[row]))
        warm.append(warm_watch.seconds)
    naive_warm = report.add_median("naive_warm_predict_s", warm, "naive port: FHE predict, warm")
    report.add_median("naive_decrypt_s", decrypt_times, "naive port: decrypt + dequantize")
    report.add(
        "naive_fhe_agreement_real",
        round(float(np.mean(agreement)), 4),
        f"naive port: real FHE vs its clear predict ({len(agreement)} rows)",
        "fraction",
    )
    report.add(
        "naive_time_per_bootstrap_s",
        round(naive_warm / max(1, report.values["naive_bootstraps"]), 6),
        "naive port: warm predict / bootstraps",
        "s",
    )
    ours = float(report.values["warm_predict_s"])
    report.add("speedup_vs_naive", round(naive_warm / ours, 2), "naive / our warm predict", "ratio")
    report.add("predict_time_ratio", round(ours / naive_warm, 4), "our / naive warm predict", "")
    report.add(
        "fresh_predict_time_ratio",
        round(float(report.values["fresh_predict_s"]) / float(np.median(fresh)), 4),
        "our / naive fresh-key predict",
    )
    report.add(
        "upload_ratio",
        round(report.values["evaluation_key_bytes"] / ek_size, 4),
        "our / naive evaluation-key upload",
    )


# ---------------------------------------------------------------------------------------------
# HTTP: a real uvicorn server:app
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``uvicorn server:app``.

    Attributes:
        url: its base URL.
        process: the child process.
        log_path: where its output goes.
    """

    url: str
    process: subprocess.Popen
    log_path: Path

    def rss_bytes(self) -> int:
        """Resident memory of the server process and its children, in bytes."""
        process = psutil.Process(self.process.pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def uvicorn_server(work_dir: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """Start ``uvicorn server:app`` on a free port with its store in ``work_dir``.

    Raises:
        RuntimeError: with the server's log if it exits or does not answer /health in time.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FHE_STORE_DIR": str(work_dir / "store"),
        **env,
    }
    log_path = work_dir / "server.log"
    command = [
        sys.executable, "-m", "uvicorn", "server:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=settings.REPO_DIR, env=child_env, stdout=log, stderr=subprocess.STDOUT
        )
        server = ServerProcess(url=url, process=process, log_path=log_path)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with status {process.returncode}:\n{server.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer /health:\n{server.log_tail()}")
                time.sleep(0.2)
            yield server
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)


class TimingTransport(httpx.BaseTransport):
    """An HTTP transport that records each request's time to response headers.

    Attributes:
        records: (method and route, seconds) of every request, in order.
    """

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.records: list[tuple[str, float]] = []

    @staticmethod
    def route(request: httpx.Request) -> str:
        """'METHOD route' with the session id left out (e.g. 'PUT inputs/bank')."""
        parts = [p for p in request.url.path.split("/") if p]
        tail = "/".join(parts[2:]) if len(parts) > 2 else "/".join(parts)
        if len(parts) == 2 and request.method == "DELETE":
            tail = "sessions/{id}"
        return f"{request.method} {tail}"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request through the real transport and time it."""
        start = time.perf_counter()
        response = self._inner.handle_request(request)
        with self._lock:
            self.records.append((self.route(request), time.perf_counter() - start))
        return response

    def count(self) -> int:
        """Number of requests sent so far."""
        with self._lock:
            return len(self.records)

    def times(self, route: str) -> list[float]:
        """The recorded times of one route."""
        with self._lock:
            return [seconds for name, seconds in self.records if name == route]

    def close(self) -> None:
        """Close the real transport."""
        self._inner.close()


def pick_profiles(data: Dataset, count: int) -> list[int]:
    """Held-out positions of refused applications that explain can turn into approvals.

    Falls back to any refused row when fewer than ``count`` such rows exist.
    """
    from development.reference import clear_explain

    refused = [int(i) for i in np.flatnonzero(data.y_quant == 0)]
    chosen = []
    for position in refused:
        parts = data.raw_parties(position)
        if clear_explain(parts["applicant"], parts["bank"], parts["credit_bureau"]) is not None:
            chosen.append(position)
            if len(chosen) == count:
                return chosen
    return (chosen + refused)[:count] or [0]


def call_retrying(func: Callable[[], Any]) -> Any:
    """Call a client step, waiting and retrying while the server answers 503 (queue full)."""
    from backend import ServerBusyError

    for attempt in range(MAX_BUSY_RETRIES):
        try:
            return func()
        except ServerBusyError as error:
            if attempt == MAX_BUSY_RETRIES - 1:
                raise
            time.sleep(error.retry_after or 1.0)
    return None


def full_flow(client: Any, parts: dict[str, dict[str, Any]]) -> tuple[dict[str, float], bool]:
    """The five steps (keys, three uploads, predict, fetch + decrypt); return times and verdict."""
    steps: dict[str, float] = {}
    steps["keygen_upload"], _ = timed(lambda: call_retrying(client.generate_keys))
    steps["send_applicant"], _ = timed(lambda: client.send_applicant(**parts["applicant"]))
    steps["send_bank"], _ = timed(lambda: client.send_bank(**parts["bank"]))
    steps["send_credit_bureau"], _ = timed(
        lambda: client.send_credit_bureau(**parts["credit_bureau"])
    )
    steps["predict"], _ = timed(lambda: call_retrying(client.predict))
    steps["fetch_decrypt"], verdict = timed(client.decrypt_verdict)
    steps["flow"] = sum(steps.values())
    return steps, bool(verdict)


def measure_http(
    report: Report, options: Options, data: Dataset, server: ServerProcess, work_dir: Path
) -> None:
    """Five-step flows, explain and the server's RSS with live sessions, over HTTP."""
    from backend import CreditScoringClient
    from development.reference import clear_explain

    report.stage("HTTP flows")
    n_sessions = max(RSS_SESSIONS, options.runs + 1)
    profiles = pick_profiles(data, n_sessions)
    transport = TimingTransport()
    clients = []
    steps: dict[str, list[float]] = {}
    first_predict_fhe, warm_predict_fhe, explain_wall, explain_fhe = [], [], [], []
    explain_trips, agree = [], []
    rss = {0: server.rss_bytes()}
    try:
        for index in tqdm(range(n_sessions), desc="sessions (flow + explain)", leave=False):
            position = profiles[index % len(profiles)]
            parts = data.raw_parties(position)
            client = CreditScoringClient(
                server.url, key_dir=work_dir / "http_keys" / str(index), transport=transport
            )
            clients.append(client)
            flow_steps, verdict = full_flow(client, parts)
            before = transport.count()
            with Stopwatch() as explain_watch:
                years = call_retrying(client.explain)
            trips = transport.count() - before
            expected_years = clear_explain(**parts)
            agree.append(verdict == bool(data.y_quant[position]) and years == expected_years)
            # Memory after this session's full flow, with every session so far still open.
            rss[index + 1] = server.rss_bytes()
            if index == 0:
                continue  # warm-up: the server's very first FHE runs
            for name, seconds in flow_steps.items():
                steps.setdefault(name, []).append(seconds)
            first_predict_fhe.append(float(client.fhe_execution_time))
            explain_wall.append(explain_watch.seconds)
            explain_trips.append(trips)
            if client.explain_fhe_execution_time is not None:
                explain_fhe.append(float(client.explain_fhe_execution_time))
            warm_predict_fhe.append(float(call_retrying(client.predict)))
        report.add("http_sessions", n_sessions, "HTTP sessions (first one = warm-up)")
        report.add_median("flow_s", steps["flow"], "full five-step HTTP flow")
        labels = {
            "keygen_upload": "  step 1: keygen + evaluation-key upload",
            "send_applicant": "  step 2a: encrypt + send applicant",
            "send_bank": "  step 2b: encrypt + send bank",
            "send_credit_bureau": "  step 2c: encrypt + send credit bureau",
            "predict": "  step 3: predict (HTTP round trip)",
            "fetch_decrypt": "  step 4-5: fetch + decrypt",
        }
        for name, label in labels.items():
            report.add_median(f"flow_{name}_s", steps[name], label)
        report.add_median("http_upload_keys_s", transport.times("POST sessions")[1:], "  POST keys")
        report.add_median(
            "http_first_predict_fhe_s", first_predict_fhe, "server FHE time, session's 1st predict"
        )
        report.add_median(
            "http_warm_predict_fhe_s", warm_predict_fhe, "server FHE time, session's 2nd predict"
        )
        report.add_median("explain_http_s", explain_wall, "explain over HTTP (encrypt..decrypt)")
        if explain_fhe:
            report.add_median("explain_server_fhe_s", explain_fhe, "server FHE time of explain")
        report.add("explain_round_trips", max(explain_trips), "HTTP round trips per explain")
        report.add(
            "http_agreement",
            round(float(np.mean(agree)), 4),
            "HTTP verdicts and explanations vs clear",
            "fraction",
        )
        report.add("server_rss_0_sessions_bytes", rss[0], "server RSS, no session", "bytes")
        report.add("server_rss_1_session_bytes", rss[1], "server RSS after 1 live session", "bytes")
        report.add(
            "server_rss_5_sessions_bytes",
            rss[RSS_SESSIONS],
            f"server RSS after {RSS_SESSIONS} live sessions",
            "bytes",
        )
        report.values["server_rss_by_sessions_bytes"] = {str(k): v for k, v in rss.items()}
    finally:
        for client in clients:
            client.close()
        transport.close()
    time.sleep(0.5)
    report.add(
        "server_rss_after_close_bytes", server.rss_bytes(), "server RSS, all closed", "bytes"
    )


def poll_health(url: str, interval: float, ready: Any, stop: Any, results: Any) -> None:
    """Child process: GET /health every ``interval`` s until ``stop``; put the latencies.

    It runs in its own process so that the latencies are the server's, not stalls of the
    benchmark's own threads (concrete's key generation holds the GIL for its whole duration).

    Args:
        url: the server's base URL.
        interval: seconds between requests.
        ready: event set once the first request has been answered.
        stop: event that ends the polling.
        results: queue receiving the list of latencies (seconds) of the 200 answers.
    """
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60.0) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.TransportError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            ready.set()
            stop.wait(interval)
    results.put(latencies)


def measure_throughput(
    report: Report, options: Options, data: Dataset, server: ServerProcess, work_dir: Path
) -> None:
    """Decisions per minute with 4 concurrent clients, and /health latency meanwhile.

    A decision is one application's full five-step flow with new keys (each applicant has its
    own key set). Each thread has its own CreditScoringClient; the threads share a fixed number
    of decisions. /health is polled from another process meanwhile.
    """
    from backend import CreditScoringClient

    report.stage("throughput")
    with httpx.Client(base_url=server.url, timeout=10.0) as health_client:
        idle = []
        for _ in range(10):
            seconds, response = timed(lambda: health_client.get("/health"))
            response.raise_for_status()
            idle.append(seconds)
    report.add_median("health_latency_idle_median_s", idle, "/health latency, idle")

    total = options.throughput_decisions
    lock = threading.Lock()
    issued = [0]
    done: list[tuple[float, bool]] = []
    errors: list[BaseException] = []
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    poller = context.Process(
        target=poll_health,
        args=(server.url, HEALTH_POLL_SECONDS, ready, stop, results),
        daemon=True,
    )
    poller.start()
    if not ready.wait(timeout=120):
        poller.kill()
        raise RuntimeError("the /health poller process did not start")
    bar = tqdm(total=total, desc=f"decisions ({THROUGHPUT_CLIENTS} clients)", leave=False)

    def worker(number: int) -> None:
        client = CreditScoringClient(server.url, key_dir=work_dir / "tp_keys" / str(number))
        try:
            while True:
                with lock:
                    if issued[0] >= total:
                        return
                    ticket = issued[0]
                    issued[0] += 1
                position = ticket % len(data.y_quant)
                _, verdict = full_flow(client, data.raw_parties(position))
                with lock:
                    done.append((time.perf_counter(), verdict == bool(data.y_quant[position])))
                    bar.update(1)
        except BaseException as error:  # reported after the threads join
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THROUGHPUT_CLIENTS)]
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        latencies: list[float] = results.get(timeout=60)
        poller.join(timeout=30)
        bar.close()
    if errors:
        raise RuntimeError(f"a throughput client failed: {errors[0]!r}") from errors[0]
    elapsed = max(t for t, _ in done) - start
    report.add("throughput_decisions", len(done), "decisions made by the concurrent clients")
    report.add("throughput_elapsed_s", round(elapsed, 3), "  in", "s")
    report.add(
        "decisions_per_minute_4_clients",
        round(len(done) / elapsed * 60, 2),
        f"decisions per minute, {THROUGHPUT_CLIENTS} clients at once",
        "per_min",
    )
    report.add(
        "throughput_agreement",
        round(float(np.mean([ok for _, ok in done])), 4),
        "throughput verdicts vs clear",
        "fraction",
    )
    if latencies:
        report.add(
            "health_latency_median_s", round(float(np.median(latencies)), 6), "/health median", "s"
        )
        report.add("health_latency_max_s", round(float(max(latencies)), 6), "/health max", "s")
        report.add("health_requests", len(latencies), "/health requests while FHE ran")


# ---------------------------------------------------------------------------------------------
# Targets and the Markdown report
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One performance target of issue 6.

    Attributes:
        key: the figure's JSON key.
        label: what it is.
        bound: the target value.
        higher_is_better: True for "at least" targets.
        unit: how to print the figure.
        text: the target as written in the report.
    """

    key: str
    label: str
    bound: float
    higher_is_better: bool
    unit: str
    text: str

    def met(self, value: float) -> bool:
        """Whether the figure meets the target."""
        return value >= self.bound if self.higher_is_better else value <= self.bound


TARGETS = (
    Target("warm_predict_s", "Warm FHE predict", 0.6, False, "s", "<= 0.6 s"),
    Target("fresh_predict_s", "Fresh-key FHE predict", 1.5, False, "s", "<= 1.5 s"),
    Target("flow_s", "Full five-step HTTP flow", 6.0, False, "s", "<= 6 s"),
    Target("explain_over_predict", "Explain / one warm predict", 3.0, False, "ratio", "<= 3x"),
    Target("explain_round_trips", "Explain round trips", 1, False, "", "1"),
    Target("evaluation_key_bytes", "Evaluation-key upload", 50 * MB, False, "bytes", "<= 50 MB"),
    Target("speedup_vs_naive", "Speed-up vs naive port", 10.0, True, "ratio", ">= 10x"),
    Target("f1_gap_vs_naive_points", "F1 gap vs naive (points)", 1.0, False, "", "<= 1 point"),
)

# Figures without a target, shown in the table in this order: (key, label, unit).
OTHER_FIGURES = (
    ("keygen_s", "Client key generation", "s"),
    ("encrypt_applicant_s", "Encrypt applicant", "s"),
    ("encrypt_bank_s", "Encrypt bank", "s"),
    ("encrypt_credit_bureau_s", "Encrypt credit bureau", "s"),
    ("encrypt_candidates_s", "Encrypt explain candidates", "s"),
    ("ciphertext_applicant_bytes", "Applicant ciphertext", "bytes"),
    ("ciphertext_bank_bytes", "Bank ciphertext", "bytes"),
    ("ciphertext_credit_bureau_bytes", "Credit-bureau ciphertext", "bytes"),
    ("ciphertext_candidates_bytes", "Candidates ciphertext", "bytes"),
    ("decrypt_s", "Decrypt verdict", "s"),
    ("output_bytes", "Encrypted verdict", "bytes"),
    ("server_key_memory_bytes", "Server: evaluation keys once expanded in memory", "bytes"),
    ("evaluation_key_deserialize_s", "Server: evaluation-key deserialization", "s"),
    ("explain_s", "FHE explain (6 bins, one run)", "s"),
    ("explain_http_s", "Explain over HTTP (encrypt, round trip, decrypt)", "s"),
    ("flow_keygen_upload_s", "Flow step 1: keygen + evaluation-key upload", "s"),
    ("http_upload_keys_s", "  of which POST /sessions (upload + server checks)", "s"),
    ("flow_send_applicant_s", "Flow step 2a: encrypt + send applicant", "s"),
    ("flow_send_bank_s", "Flow step 2b: encrypt + send bank", "s"),
    ("flow_send_credit_bureau_s", "Flow step 2c: encrypt + send credit bureau", "s"),
    ("flow_predict_s", "Flow step 3: predict (HTTP round trip)", "s"),
    ("flow_fetch_decrypt_s", "Flow steps 4-5: fetch + decrypt", "s"),
    ("http_first_predict_fhe_s", "Server FHE time, 1st predict of a session", "s"),
    ("http_warm_predict_fhe_s", "Server FHE time, 2nd predict of a session", "s"),
    ("time_per_bootstrap_s", "Measured time per bootstrap", "s"),
    ("server_rss_0_sessions_bytes", "Server RSS, no session", "bytes"),
    ("server_rss_1_session_bytes", "Server RSS after 1 live session", "bytes"),
    ("server_rss_5_sessions_bytes", "Server RSS after 5 live sessions", "bytes"),
    ("server_rss_after_close_bytes", "Server RSS after closing every session", "bytes"),
    ("decisions_per_minute_4_clients", "Decisions per minute, 4 clients at once", "per_min"),
    ("throughput_decisions", "  decisions measured", ""),
    ("health_latency_idle_median_s", "/health latency, idle, median", "s"),
    ("health_latency_median_s", "/health latency while FHE runs, median", "s"),
    ("health_latency_max_s", "/health latency while FHE runs, max", "s"),
    ("naive_warm_predict_s", "Naive port: warm FHE predict", "s"),
    ("naive_fresh_predict_s", "Naive port: fresh-key FHE predict", "s"),
    ("naive_keygen_s", "Naive port: key generation", "s"),
    ("naive_evaluation_key_bytes", "Naive port: evaluation keys", "bytes"),
    ("naive_bootstraps", "Naive port: bootstraps per prediction", ""),
    ("upload_ratio", "Upload size, ours / naive", ""),
    ("predict_time_ratio", "Warm FHE time, ours / naive", ""),
    ("f1_float", "F1, float sklearn tree", ""),
    ("f1_quantized", "F1, quantized tree (clear)", ""),
    ("f1_fhe_simulated", "F1, FHE simulation", ""),
    ("naive_f1", "F1, naive port", ""),
    ("simulated_rows", "Held-out rows simulated (of test_rows)", ""),
    ("test_rows", "Held-out rows", ""),
    ("fhe_agreement_simulated", "Agreement, FHE simulation vs clear", "fraction"),
    ("real_fhe_rows", "Held-out rows decided with real FHE", ""),
    ("fhe_agreement_real", "Agreement, real FHE vs clear", "fraction"),
    ("f1_fhe_real_rows", "F1 of real FHE on those rows", ""),
    ("f1_quantized_real_rows", "F1 of the clear tree on the same rows", ""),
    ("http_agreement", "Agreement, HTTP verdicts and explanations vs clear", "fraction"),
    (
        "naive_fhe_agreement_real",
        "Naive port: agreement, real FHE vs its clear predict",
        "fraction",
    ),
)


def miss_bound(target: Target, values: dict[str, Any]) -> str:
    """What bounds a missed target (bootstrap count x measured time per bootstrap, ...)."""
    per_bootstrap = float(values.get("time_per_bootstrap_s", 0.0))
    if target.key in ("warm_predict_s", "fresh_predict_s"):
        count = values.get("bootstraps_predict", 0)
        in_bootstraps = count * per_bootstrap
        text = (
            f"{count} bootstraps x {per_bootstrap * 1e3:.1f} ms = {in_bootstraps:.3f} s "
            f"(+ {float(values['warm_predict_s']) - in_bootstraps:.3f} s outside bootstraps)"
        )
        if target.key == "fresh_predict_s":
            first_use = float(values["fresh_predict_s"]) - float(values["warm_predict_s"])
            text += (
                f", plus {first_use:.3f} s first use of the keys (expanding "
                f"{values.get('server_key_memory_bytes', 0) / MB:.0f} MB of key material)"
            )
        return text
    if target.key == "explain_over_predict":
        count = values.get("bootstraps_explain", 0)
        return (
            f"explain has {count} bootstraps (predict {values.get('bootstraps_predict', 0)}) x "
            f"{per_bootstrap * 1e3:.1f} ms = {count * per_bootstrap:.3f} s"
        )
    if target.key == "flow_s":
        parts = [
            f"{name} {values.get(f'flow_{name}_s', 0.0):.2f} s"
            for name in ("keygen_upload", "send_applicant", "send_bank", "send_credit_bureau")
            + ("predict", "fetch_decrypt")
        ]
        return "steps: " + ", ".join(parts)
    if target.key == "speedup_vs_naive":
        return (
            f"bootstraps {values.get('naive_bootstraps', 0)} (naive) vs "
            f"{values.get('bootstraps_predict', 0)} (ours); per bootstrap "
            f"{float(values.get('naive_time_per_bootstrap_s', 0)) * 1e3:.1f} ms vs "
            f"{per_bootstrap * 1e3:.1f} ms"
        )
    if target.key == "evaluation_key_bytes":
        return f"key material {values.get('server_key_memory_bytes', 0) / MB:.0f} MB expanded"
    return ""


def evaluate_targets(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured figure, met or missed, and for a miss by how much."""
    rows = []
    for target in TARGETS:
        value = values.get(target.key)
        if value is None:
            rows.append({"key": target.key, "target": target.text, "met": None})
            continue
        met = target.met(float(value))
        row = {"key": target.key, "value": value, "target": target.text, "met": met}
        if not met:
            if target.higher_is_better:
                row["missed_by"] = f"{target.bound / float(value):.2f}x short"
            else:
                excess = float(value) - target.bound
                shown = (
                    f"{excess:.2f}" if target.unit == "ratio" else format_value(excess, target.unit)
                )
                row["missed_by"] = f"{shown} over ({float(value) / target.bound:.2f}x the target)"
            row["bound"] = miss_bound(target, values)
        rows.append(row)
    return rows


def markdown(values: dict[str, Any], targets: list[dict[str, Any]], notes: list[str]) -> str:
    """The Markdown report: targets, other figures, the machine, the date and the command."""
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {values['date']}",
        f"- Machine: {values['cores']} cores, {values['cpu_model']}, "
        f"{values['memory_bytes'] / 2**30:.1f} GiB RAM; load average at start "
        f"{values['load_average_start']}, at end {values.get('load_average_end')}",
        f"- Versions: Python {values['python']}, concrete-python {values['concrete_python']}, "
        f"Concrete ML {values['concrete_ml']}",
        f"- Command: `{values['command']}` (from the repository root)",
        f"- Medians over {values['runs']} run(s) after one warm-up run "
        f"(naive port: {values.get('naive_runs')} run(s)); total run time "
        f"{values.get('benchmark_total_s', 0):.0f} s",
        "",
        "## Targets",
        "",
        "| Figure | Measured | Target | Result |",
        "|---|---|---|---|",
    ]
    by_key = {t.key: t for t in TARGETS}
    for row in targets:
        target = by_key[row["key"]]
        measured = format_value(row.get("value"), target.unit)
        if row["met"] is None:
            result = "not measured"
        elif row["met"]:
            result = "met"
        else:
            result = f"**missed** by {row['missed_by']}; bound: {row['bound']}"
        lines.append(f"| {target.label} | {measured} | {target.text} | {result} |")
    lines += ["", "## All figures", "", "| Figure | Measured |", "|---|---|"]
    for key, label, unit in OTHER_FIGURES:
        if key in values:
            lines.append(f"| {label} | {format_value(values[key], unit)} |")
    lines += [
        "",
        "Definitions: *fresh-key predict* is the first FHE run after the server deserializes a "
        "newly generated evaluation key; *warm* runs reuse the deserialized key. FHE times are "
        "`fhe.Server.run` wall time (our module: `deployment_files/server.zip`; naive port: "
        "`FHEModelServer.run` with the deserialized key). The flow is "
        "`backend.CreditScoringClient` against `uvicorn server:app` on 127.0.0.1 (keygen and "
        "upload, three encrypted uploads, predict, fetch and decrypt). A throughput decision is "
        "one such flow with new keys; the 4 clients are threads of one process and "
        "concrete's key generation holds the GIL "
        f"({values.get('keygen_gil_hold_fraction')} of its duration), so their key "
        "generations run one at a time; /health is polled from a separate process. "
        "Time per bootstrap is (explain - predict) / (extra "
        "bootstraps of explain). The naive port is Concrete ML's DecisionTreeClassifier with "
        f"n_bits={values.get('naive_n_bits')}, max_depth={values.get('naive_max_depth')}, "
        "default compilation (no key or ciphertext compression), deployed with "
        "FHEModelDev/FHEModelClient/FHEModelServer; its F1 is Concrete ML's clear quantized "
        "prediction on the held-out set (trees are exact in FHE; real FHE agreement "
        f"{values.get('naive_fhe_agreement_real')} on the rows it ran).",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def run(options: Options) -> dict[str, Any]:
    """Measure everything, write the JSON and Markdown results; return the JSON's content."""
    started = time.perf_counter()
    card = json.loads(settings.MODEL_CARD_PATH.read_text(encoding="utf-8"))
    report = Report()
    report.values.update(machine_info())
    report.values.update(
        {
            "command": options.command,
            "runs": options.runs,
            "quick": options.quick,
            "server_env": SERVER_ENV,
            "model_card_metrics": card.get("metrics", {}),
        }
    )
    tqdm.write(
        f"benchmark: {report.values['cores']} cores, {report.values['cpu_model']}, "
        f"runs={options.runs}{' (quick)' if options.quick else ''}"
    )
    with (
        tqdm(total=len(STAGES), desc="benchmark", position=0) as bar,
        tempfile.TemporaryDirectory(prefix="fhe-benchmark-") as tmp,
    ):
        report.bar = bar
        work_dir = Path(tmp)
        report.stage("accuracy")
        data, _module = measure_accuracy(
            report, card, simulated_rows=QUICK_SIMULATED_ROWS if options.quick else None
        )
        measure_direct_fhe(report, options, data, card, work_dir)
        measure_naive(report, options, data, card, work_dir)
        report.stage("server start")
        start_s = time.perf_counter()
        with uvicorn_server(work_dir, env=SERVER_ENV) as server:
            report.add("server_start_s", round(time.perf_counter() - start_s, 3), "start", "s")
            try:
                measure_http(report, options, data, server, work_dir)
                measure_throughput(report, options, data, server, work_dir)
            except Exception:
                tqdm.write(f"server log (tail):\n{server.log_tail()}")
                raise
        report.stage("report")
        report.values["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        report.values["benchmark_total_s"] = round(time.perf_counter() - started, 1)
        targets = evaluate_targets(report.values)
        for row in targets:
            if row["met"] is False:
                report.note(f"{row['key']} missed by {row['missed_by']}; bound: {row['bound']}")
        result = {**report.values, "targets": targets, "samples": report.samples}
        options.out_dir.mkdir(parents=True, exist_ok=True)
        json_path = options.out_dir / "benchmark_results.json"
        md_path = options.out_dir / "benchmark_results.md"
        json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        md_path.write_text(markdown(report.values, targets, report.notes), encoding="utf-8")
        bar.update(1)
    tqdm.write(f"wrote {json_path} and {md_path} in {report.values['benchmark_total_s']} s")
    return result


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m development.benchmark", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help="measured runs per timing (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="1 run and tiny counts (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=settings.DEVELOPMENT_DIR,
        help="directory of benchmark_results.json and .md (default development/)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    quick = bool(args.quick)
    runs = 1 if quick else args.runs
    arguments = list(sys.argv[1:] if argv is None else argv)
    return Options(
        runs=runs,
        naive_runs=min(runs, NAIVE_MAX_RUNS),
        real_fhe_rows=2 if quick else DEFAULT_REAL_FHE_ROWS,
        throughput_decisions=2 if quick else DEFAULT_THROUGHPUT_DECISIONS,
        quick=quick,
        out_dir=args.out,
        command=shlex.join(["python", "-m", "development.benchmark", *arguments]),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m development.benchmark``."""
    run(parse_options(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
