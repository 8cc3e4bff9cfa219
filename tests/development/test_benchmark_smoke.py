"""Smoke test of the benchmark: `python -m development.benchmark --quick` must keep working.

It runs the real thing with one run and tiny counts (real FHE, the naive Concrete ML port and a
real uvicorn server), in a subprocess, writing into a temporary directory. About 2-3 minutes.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fhe_server.launcher import REPO_DIR

TIMEOUT_SECONDS = 900

REQUIRED_KEYS = {
    "keygen_s": float,
    "evaluation_key_bytes": int,
    "warm_predict_s": float,
    "fresh_predict_s": float,
    "explain_s": float,
    "flow_s": float,
    "naive_warm_predict_s": float,
    "naive_evaluation_key_bytes": int,
    "f1_float": float,
    "f1_quantized": float,
    "fhe_agreement_simulated": float,
    "fhe_agreement_real": float,
    "server_rss_5_sessions_bytes": int,
    "cpu_model": str,
    "cores": int,
    "date": str,
}

POSITIVE_TIMES = (
    "keygen_s",
    "warm_predict_s",
    "fresh_predict_s",
    "explain_s",
    "flow_s",
    "naive_warm_predict_s",
    "naive_fresh_predict_s",
    "decrypt_s",
    "encrypt_applicant_s",
    "encrypt_bank_s",
    "encrypt_credit_bureau_s",
    "health_latency_median_s",
    "health_latency_max_s",
)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out_dir = tmp_path_factory.mktemp("benchmark")
    log_path = out_dir / "benchmark.log"
    with log_path.open("wb") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "development.benchmark", "--quick", "--out", str(out_dir)],
            cwd=REPO_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_SECONDS,
        )
    output = log_path.read_text(errors="replace")
    assert completed.returncode == 0, f"benchmark failed:\n{output[-6000:]}"
    results = json.loads((out_dir / "benchmark_results.json").read_text())
    return results, out_dir


@pytest.mark.slow
def test_quick_benchmark_writes_every_required_figure(quick_results: tuple[dict, Path]) -> None:
    results, _ = quick_results
    for key, kind in REQUIRED_KEYS.items():
        assert key in results, f"missing {key}"
        value = results[key]
        if kind is float:
            assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
            assert math.isfinite(value), (key, value)
        else:
            assert isinstance(value, kind) and not isinstance(value, bool), (key, value)


@pytest.mark.slow
def test_quick_benchmark_figures_are_sane(quick_results: tuple[dict, Path]) -> None:
    results, _ = quick_results
    for key in POSITIVE_TIMES:
        assert results[key] > 0, (key, results[key])
    # Exact sizes of this model's serialized keys and ciphertexts (model card's wire format).
    card = json.loads((REPO_DIR / "deployment_files" / "model_card.json").read_text())
    wire = card["wire_format"]
    assert results["evaluation_key_bytes"] == wire["evaluation_keys"]["bytes"]
    for party in ("applicant", "bank", "credit_bureau", "candidates"):
        assert results[f"ciphertext_{party}_bytes"] == wire[party]["bytes"]
    assert results["naive_evaluation_key_bytes"] > 0
    # FHE decides exactly like the clear tree, in simulation, in real FHE and over HTTP.
    assert results["fhe_agreement_simulated"] == 1.0
    assert results["fhe_agreement_real"] == 1.0
    assert results["naive_fhe_agreement_real"] == 1.0
    assert results["http_agreement"] == 1.0
    assert results["throughput_agreement"] == 1.0
    assert results["portfolio_agreement"] == 1.0  # every verdict of the portfolio CSV
    assert results["portfolio_applications"] == 20 and results["portfolio_per_s"] > 0
    assert 0 < results["portfolio_warm_batch_fhe_s"] < results["portfolio_warm_batch_s"]
    assert results["explain_round_trips"] == 1
    assert 0.5 < results["f1_float"] <= 1.0
    assert 0.5 < results["f1_quantized"] <= 1.0
    assert 0.5 < results["naive_f1"] <= 1.0
    assert results["f1_quantized"] == card["metrics"]["f1_quantized"]
    # Memory grows with live sessions; throughput and ratios are consistent.
    assert 0 < results["server_rss_1_session_bytes"] <= results["server_rss_5_sessions_bytes"]
    assert results["decisions_per_minute_4_clients"] > 0
    assert results["throughput_decisions"] == 2
    assert results["speedup_vs_naive"] == pytest.approx(
        results["naive_warm_predict_s"] / results["warm_predict_s"], rel=0.01
    )
    assert results["speedup_vs_naive3"] == pytest.approx(
        results["naive3_warm_predict_s"] / results["warm_predict_s"], rel=0.01
    )
    assert results["naive3_fhe_agreement_real"] == 1.0
    assert 0 < results["naive3_bootstraps"]
    assert results["upload_ratio"] == pytest.approx(
        results["evaluation_key_bytes"] / results["naive_evaluation_key_bytes"], rel=0.01
    )
    assert results["cores"] >= 1 and results["cpu_model"]
    assert results["runs"] == 1 and results["quick"] is True


@pytest.mark.slow
def test_quick_benchmark_writes_the_markdown_table(quick_results: tuple[dict, Path]) -> None:
    results, out_dir = quick_results
    text = (out_dir / "benchmark_results.md").read_text()
    assert "| Figure | Measured | Target | Result |" in text
    for label in ("Warm FHE predict", "Fresh-key FHE predict", "Full five-step HTTP flow"):
        assert label in text
    assert results["cpu_model"] in text
    assert "python -m development.benchmark --quick" in text
    rows = {row["key"]: row for row in results["targets"]}
    assert set(rows) >= {"warm_predict_s", "fresh_predict_s", "flow_s", "speedup_vs_naive"}
    for row in rows.values():
        assert row["met"] in (True, False)
        if row["met"] is False:
            assert row["missed_by"] and row["bound"]
