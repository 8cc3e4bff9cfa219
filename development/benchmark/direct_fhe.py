"""Stage 2, our FHE without HTTP: ``fhe.Client`` and ``fhe.Server.load`` of the artifacts.

Key generation, evaluation-key size, encryption time and ciphertext size per party, FHE predict
with freshly deserialized keys and warm, explain of all candidate bins, decryption, and real FHE
on held-out rows (agreement with the clear tree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from concrete import fhe
from sklearn.metrics import f1_score
from tqdm import tqdm

import settings
from development.benchmark.dataset import Dataset
from development.benchmark.options import Options
from development.benchmark.report import Report
from development.benchmark.timing import Stopwatch, longest_gil_stall, sample_times
from fhe_server.concrete_runtime import start_concrete_runtime


class DeployedFhe:
    """The deployed client specs and server artifact, with one client key set.

    Attributes:
        client: ``fhe.Client`` of client_specs.json (no key cache: keygen(force=True) is new).
        server: ``fhe.Server.load`` of server.zip.
        evaluation_keys: the server-side (deserialized) evaluation keys of the last keygen.
    """

    def __init__(self) -> None:
        specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
        start_concrete_runtime()  # the benchmark talks HTTP after running circuits here
        self.server = fhe.Server.load(settings.SERVER_ARTIFACT_PATH)
        self.client = fhe.Client(specs)
        self.evaluation_keys: Any = None

    def run(self, *arguments: Any, function_name: str) -> Any:
        """Run one function on the server with the current evaluation keys."""
        return self.server.run(
            *arguments, evaluation_keys=self.evaluation_keys, function_name=function_name
        )


def measure_direct_fhe(
    report: Report, options: Options, data: Dataset, card: dict[str, Any]
) -> None:
    """Client crypto and server FHE times with fhe.Client and fhe.Server.load of the artifacts."""
    deployed = DeployedFhe()
    report.stage("client keys")
    measure_keys(report, options, data, deployed)
    report.stage("encryption")
    n_candidates = int(card["parameters"]["explain_candidates"])
    candidates = measure_encryption(report, options, data, deployed, n_candidates)
    report.stage("warm predict")
    encrypted = measure_warm_predict(report, options, data, deployed)
    report.stage("explain")
    measure_explain(report, options, data, deployed, encrypted, candidates)
    report.stage("real FHE rows")
    measure_real_rows(report, options, data, deployed)


def measure_keys(report: Report, options: Options, data: Dataset, deployed: DeployedFhe) -> None:
    """Keygen, evaluation-key size and (de)serialization, and predict with fresh keys.

    Each run generates new keys, serializes the evaluation keys ("upload"), deserializes them on
    the server side and runs predict once: the first run after deserializing them.
    """
    client = deployed.client
    row_args = data.split_row(data.q_test[0])
    # Does key generation let other threads of the process run? (It is measured apart.)
    keygen_once, stall = longest_gil_stall(lambda: client.keygen(force=True))
    report.record("keygen_gil_hold_fraction", round(min(1.0, stall / keygen_once), 3))
    keygen, serialize, deserialize, fresh = [], [], [], []
    ek_sizes = set()
    for index in tqdm(range(1 + options.runs), desc="keygen + fresh predict", leave=False):
        with Stopwatch() as keygen_watch:
            client.keygen(force=True)
        with Stopwatch() as serialize_watch:
            ek_bytes = client.evaluation_keys.serialize()
        with Stopwatch() as deserialize_watch:
            deployed.evaluation_keys = fhe.EvaluationKeys.deserialize(ek_bytes)
        encrypted = client.encrypt(*row_args, function_name="predict")
        with Stopwatch() as fresh_watch:
            deployed.run(*encrypted, function_name="predict")
        ek_sizes.add(len(ek_bytes))
        if index:  # the first round is the warm-up
            keygen.append(keygen_watch.seconds)
            serialize.append(serialize_watch.seconds)
            deserialize.append(deserialize_watch.seconds)
            fresh.append(fresh_watch.seconds)
    report.median("keygen_s", keygen)
    report.record("evaluation_key_bytes", max(ek_sizes))
    report.median("evaluation_key_serialize_s", serialize)
    report.median("evaluation_key_deserialize_s", deserialize)
    report.median("fresh_predict_s", fresh)
    server = deployed.server
    report.record(
        "server_key_memory_bytes",
        int(server.size_of_bootstrap_keys + server.size_of_keyswitch_keys),
    )


def measure_encryption(
    report: Report, options: Options, data: Dataset, deployed: DeployedFhe, n_candidates: int
) -> np.ndarray:
    """Encryption time and ciphertext size of each party and of the explain candidates.

    Returns:
        The candidates' clear rows (the credit bureau's part of the first held-out rows).
    """
    client = deployed.client
    row_args = data.split_row(data.q_test[0])
    for position, party in enumerate(settings.PARTIES):
        arguments: list[np.ndarray | None] = [None, None, None]
        arguments[position] = row_args[position]

        def encrypt_one(arguments: list[np.ndarray | None] = arguments) -> Any:
            return client.encrypt(*arguments, function_name="predict")

        report.median(
            f"encrypt_{party}_s", sample_times(encrypt_one, options.runs, f"encrypt {party}")
        )
        report.record(f"ciphertext_{party}_bytes", len(encrypt_one()[position].serialize()))
    candidates = np.stack([data.split_row(data.q_test[i])[2] for i in range(n_candidates)])

    def encrypt_candidates() -> Any:
        return client.encrypt(None, None, candidates, function_name="explain")

    report.median(
        "encrypt_candidates_s", sample_times(encrypt_candidates, options.runs, "encrypt candidates")
    )
    report.record("ciphertext_candidates_bytes", len(encrypt_candidates()[2].serialize()))
    return candidates


def measure_warm_predict(
    report: Report, options: Options, data: Dataset, deployed: DeployedFhe
) -> tuple[Any, ...]:
    """Warm FHE predict, the encrypted verdict's size and decryption.

    Returns:
        The encrypted arguments of held-out row 0.

    Raises:
        RuntimeError: if the FHE verdict differs from the clear tree's.
    """
    client = deployed.client
    encrypted = client.encrypt(*data.split_row(data.q_test[0]), function_name="predict")
    warm = sample_times(
        lambda: deployed.run(*encrypted, function_name="predict"), options.runs, "warm predict"
    )
    report.median("warm_predict_s", warm)
    output_bytes = deployed.run(*encrypted, function_name="predict").serialize()
    report.record("output_bytes", len(output_bytes))

    def decrypt() -> int:
        value = fhe.Value.deserialize(output_bytes)
        return int(client.decrypt(value, function_name="predict"))

    report.median("decrypt_s", sample_times(decrypt, options.runs, "decrypt"))
    if decrypt() != int(data.y_quant[0]):
        raise RuntimeError("the FHE verdict differs from the clear tree's on held-out row 0")
    return tuple(encrypted)


def measure_explain(
    report: Report,
    options: Options,
    data: Dataset,
    deployed: DeployedFhe,
    encrypted: tuple[Any, ...],
    candidates: np.ndarray,
) -> None:
    """FHE explain of all candidate bins, its bootstraps, and the time per bootstrap.

    Raises:
        RuntimeError: if the explain verdicts differ from the clear tree's.
    """
    a, b, _ = encrypted
    _, _, encrypted_candidates = deployed.client.encrypt(
        None, None, candidates, function_name="explain"
    )

    def explain() -> Any:
        return deployed.run(a, b, encrypted_candidates, function_name="explain")

    explain_s = report.median("explain_s", sample_times(explain, options.runs, "explain"))
    warm_s = float(report.values["warm_predict_s"])
    report.record("explain_over_predict", round(explain_s / warm_s, 3))
    verdicts = np.asarray(deployed.client.decrypt(explain(), function_name="explain")).reshape(-1)
    c0 = data.tree.party_slices["credit_bureau"][0]
    rows = np.stack([np.concatenate([data.q_test[0][:c0], c]) for c in candidates])
    if not np.array_equal(verdicts, data.tree.predict_clear(rows)):
        raise RuntimeError("the FHE explain verdicts differ from the clear tree's")
    bootstraps = {
        name: int(deployed.server.programmable_bootstrap_count(function=name))
        for name in ("predict", "explain")
    }
    report.record("bootstraps_predict", bootstraps["predict"])
    report.record("bootstraps_explain", bootstraps["explain"])
    # Measured time per bootstrap: the slope between the two functions of the same key set
    # (explain has more bootstraps of the same parameters); what is left is fixed overhead.
    extra = bootstraps["explain"] - bootstraps["predict"]
    per_bootstrap = (explain_s - warm_s) / extra if extra > 0 else warm_s / bootstraps["predict"]
    report.record("time_per_bootstrap_s", round(max(per_bootstrap, 0.0), 6))


def measure_real_rows(
    report: Report, options: Options, data: Dataset, deployed: DeployedFhe
) -> None:
    """Real FHE on the first held-out rows: agreement with the clear tree, and F1."""
    n_rows = min(options.real_fhe_rows, len(data.q_test))
    y_real = []
    for row in tqdm(data.q_test[:n_rows], desc="real FHE rows", leave=False):
        args = deployed.client.encrypt(*data.split_row(row), function_name="predict")
        out = deployed.run(*args, function_name="predict")
        y_real.append(int(deployed.client.decrypt(out, function_name="predict")))
    y_real_arr, y_quant = np.array(y_real), data.y_quant[:n_rows]
    y_true = data.y_test[:n_rows]
    report.record("real_fhe_rows", n_rows)
    report.record("fhe_agreement_real", round(float(np.mean(y_real_arr == y_quant)), 4))
    report.record(
        "f1_fhe_real_rows", round(float(f1_score(y_true, y_real_arr, zero_division=0.0)), 4)
    )
    report.record(
        "f1_quantized_real_rows", round(float(f1_score(y_true, y_quant, zero_division=0.0)), 4)
    )
