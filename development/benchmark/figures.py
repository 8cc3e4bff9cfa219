"""Every figure of the benchmark, declared once: JSON key, label, unit and target if any.

The stages record values by key (``Report.record``); the console line, the JSON and the Markdown
tables all take the label and the unit from here. Figures with a target form the "Targets"
table (in this order); the others marked ``table`` form the "All figures" table (in this order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MB = 1_000_000


@dataclass(frozen=True)
class Target:
    """A performance target (issue 6).

    Attributes:
        bound: the target value.
        higher_is_better: True for "at least" targets.
        text: the target as written in the report.
    """

    bound: float
    higher_is_better: bool
    text: str

    def met(self, value: float) -> bool:
        """Whether a value meets the target."""
        return value >= self.bound if self.higher_is_better else value <= self.bound


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    Attributes:
        key: its JSON key.
        label: what it is, in words (console and Markdown).
        unit: "s", "bytes", "fraction", "ratio", "per_min", "per_s" or "" (printed as is).
        target: its target, if it has one (then it is in the "Targets" table).
        table: whether a figure without a target is in the "All figures" table.
    """

    key: str
    label: str
    unit: str = ""
    target: Target | None = None
    table: bool = True


def _no_table(key: str, label: str, unit: str = "") -> Figure:
    return Figure(key, label, unit, table=False)


FIGURES: tuple[Figure, ...] = (
    # Targets, in the order of the report's "Targets" table.
    Figure("warm_predict_s", "Warm FHE predict", "s", Target(0.6, False, "<= 0.6 s")),
    Figure("fresh_predict_s", "Fresh-key FHE predict", "s", Target(1.5, False, "<= 1.5 s")),
    Figure("flow_s", "Full five-step HTTP flow", "s", Target(6.0, False, "<= 6 s")),
    Figure(
        "explain_over_predict", "Explain / one warm predict", "ratio", Target(3.0, False, "<= 3x")
    ),
    Figure("explain_round_trips", "Explain round trips", "", Target(1, False, "1")),
    Figure(
        "evaluation_key_bytes", "Evaluation-key upload", "bytes", Target(50 * MB, False, "<= 50 MB")
    ),
    Figure("speedup_vs_naive", "Speed-up vs naive port", "ratio", Target(10.0, True, ">= 10x")),
    Figure(
        "speedup_vs_naive3",
        "Speed-up vs naive port at n_bits 3",
        "ratio",
        Target(7.0, True, ">= 7x (issue 21)"),
    ),
    Figure(
        "f1_gap_vs_naive_points", "F1 gap vs naive (points)", "", Target(1.0, False, "<= 1 point")
    ),
    Figure(
        "portfolio_per_s",
        "Portfolio, CSV to CSV with its own keys",
        "per_s",
        Target(12.0, True, ">= 12 / s (issue 21)"),
    ),
    # The "All figures" table, in its order (figures with table=False are in the JSON only).
    Figure("keygen_s", "Client key generation", "s"),
    _no_table(
        "keygen_gil_hold_fraction",
        "Share of a keygen during which other threads cannot run",
        "fraction",
    ),
    Figure("encrypt_applicant_s", "Encrypt applicant", "s"),
    Figure("encrypt_bank_s", "Encrypt bank", "s"),
    Figure("encrypt_credit_bureau_s", "Encrypt credit bureau", "s"),
    Figure("encrypt_candidates_s", "Encrypt explain candidates", "s"),
    Figure("ciphertext_applicant_bytes", "Applicant ciphertext", "bytes"),
    Figure("ciphertext_bank_bytes", "Bank ciphertext", "bytes"),
    Figure("ciphertext_credit_bureau_bytes", "Credit-bureau ciphertext", "bytes"),
    Figure("ciphertext_candidates_bytes", "Candidates ciphertext", "bytes"),
    Figure("decrypt_s", "Decrypt verdict", "s"),
    Figure("output_bytes", "Encrypted verdict", "bytes"),
    Figure("server_key_memory_bytes", "Server: evaluation keys once expanded in memory", "bytes"),
    _no_table("evaluation_key_serialize_s", "Evaluation-key serialization", "s"),
    Figure("evaluation_key_deserialize_s", "Server: evaluation-key deserialization", "s"),
    Figure("explain_s", "FHE explain (6 bins, one run)", "s"),
    Figure("explain_http_s", "Explain over HTTP (encrypt, round trip, decrypt)", "s"),
    _no_table("explain_server_fhe_s", "Server FHE time of explain", "s"),
    Figure("flow_keygen_upload_s", "Flow step 1: keygen + evaluation-key upload", "s"),
    Figure("http_upload_keys_s", "  of which POST /sessions (upload + server checks)", "s"),
    Figure("flow_send_applicant_s", "Flow step 2a: encrypt + send applicant", "s"),
    Figure("flow_send_bank_s", "Flow step 2b: encrypt + send bank", "s"),
    Figure("flow_send_credit_bureau_s", "Flow step 2c: encrypt + send credit bureau", "s"),
    Figure("flow_predict_s", "Flow step 3: predict (HTTP round trip)", "s"),
    Figure("flow_fetch_decrypt_s", "Flow steps 4-5: fetch + decrypt", "s"),
    Figure("http_first_predict_fhe_s", "Server FHE time, 1st predict of a session", "s"),
    Figure("http_warm_predict_fhe_s", "Server FHE time, 2nd predict of a session", "s"),
    _no_table("bootstraps_predict", "Bootstraps in predict"),
    _no_table("bootstraps_explain", "Bootstraps in explain"),
    Figure("time_per_bootstrap_s", "Measured time per bootstrap", "s"),
    _no_table("server_start_s", "Server start (until /health answers)", "s"),
    _no_table("http_sessions", "HTTP sessions (first one = warm-up)"),
    Figure("server_rss_0_sessions_bytes", "Server RSS, no session", "bytes"),
    Figure("server_rss_1_session_bytes", "Server RSS after 1 live session", "bytes"),
    Figure("server_rss_5_sessions_bytes", "Server RSS after 5 live sessions", "bytes"),
    Figure("server_rss_after_close_bytes", "Server RSS after closing every session", "bytes"),
    Figure("decisions_per_minute_4_clients", "Decisions per minute, 4 clients at once", "per_min"),
    Figure("throughput_decisions", "  decisions measured"),
    _no_table("throughput_elapsed_s", "  in", "s"),
    _no_table("throughput_agreement", "Agreement, throughput verdicts vs clear", "fraction"),
    Figure("health_latency_idle_median_s", "/health latency, idle, median", "s"),
    Figure("health_latency_median_s", "/health latency while FHE runs, median", "s"),
    Figure("health_latency_max_s", "/health latency while FHE runs, max", "s"),
    _no_table("health_requests", "/health requests while FHE ran"),
    Figure("portfolio_applications", "Portfolio: applications"),
    Figure("portfolio_s", "Portfolio: seconds end to end (keys generated for it)", "s"),
    Figure("portfolio_agreement", "Portfolio: verdicts agree with the clear tree", "fraction"),
    Figure("portfolio_warm_batch_s", "Portfolio: decide_batch of 16, keys warm", "s"),
    Figure("portfolio_warm_batch_fhe_s", "  of which server FHE time", "s"),
    Figure("portfolio_warm_per_s", "Portfolio: warm decisions per second", "per_s"),
    Figure("naive_warm_predict_s", "Naive port: warm FHE predict", "s"),
    Figure("naive_fresh_predict_s", "Naive port: fresh-key FHE predict", "s"),
    Figure("naive_keygen_s", "Naive port: key generation", "s"),
    Figure("naive_evaluation_key_bytes", "Naive port: evaluation keys", "bytes"),
    _no_table("naive_ciphertext_bytes", "Naive port: input ciphertext", "bytes"),
    _no_table("naive_encrypt_s", "Naive port: quantize + encrypt + serialize", "s"),
    _no_table("naive_evaluation_key_deserialize_s", "Naive port: key deserialization", "s"),
    _no_table("naive_decrypt_s", "Naive port: decrypt + dequantize", "s"),
    Figure("naive_bootstraps", "Naive port: bootstraps per prediction"),
    Figure("naive3_warm_predict_s", "Naive port at n_bits 3: warm FHE predict", "s"),
    Figure("naive3_bootstraps", "Naive port at n_bits 3: bootstraps per prediction"),
    _no_table("naive3_f1", "Naive port at n_bits 3: F1"),
    _no_table(
        "naive3_time_per_bootstrap_s", "Naive port at n_bits 3: warm predict / bootstraps", "s"
    ),
    _no_table("naive3_fhe_agreement_real", "Naive port at n_bits 3: FHE agrees with its clear"),
    _no_table("naive_time_per_bootstrap_s", "Naive port: warm predict / bootstraps", "s"),
    _no_table("naive_n_bits", "Naive port: n_bits (Concrete ML default)"),
    _no_table("naive_max_depth", "Naive port: max_depth (same as ours)"),
    _no_table("naive_compile_s", "Naive port: fit + compile", "s"),
    _no_table("naive_runs", "Naive port: measured runs"),
    Figure("upload_ratio", "Upload size, ours / naive"),
    Figure("predict_time_ratio", "Warm FHE time, ours / naive"),
    _no_table("fresh_predict_time_ratio", "Fresh-key FHE time, ours / naive"),
    _no_table("build_s", "Rebuild split + tree (same as deployed)", "s"),
    _no_table("compile_s", "Compile our module (predict + explain)", "s"),
    _no_table("simulate_s", "FHE simulation time", "s"),
    Figure("f1_float", "F1, float sklearn tree"),
    Figure("f1_quantized", "F1, quantized tree (clear)"),
    Figure("f1_fhe_simulated", "F1, FHE simulation"),
    Figure("naive_f1", "F1, naive port"),
    Figure("simulated_rows", "Held-out rows simulated (of test_rows)"),
    Figure("test_rows", "Held-out rows"),
    Figure("fhe_agreement_simulated", "Agreement, FHE simulation vs clear", "fraction"),
    Figure("real_fhe_rows", "Held-out rows decided with real FHE"),
    Figure("fhe_agreement_real", "Agreement, real FHE vs clear", "fraction"),
    Figure("f1_fhe_real_rows", "F1 of real FHE on those rows"),
    Figure("f1_quantized_real_rows", "F1 of the clear tree on the same rows"),
    Figure("http_agreement", "Agreement, HTTP verdicts and explanations vs clear", "fraction"),
    Figure(
        "naive_fhe_agreement_real",
        "Naive port: agreement, real FHE vs its clear predict",
        "fraction",
    ),
)

FIGURE_BY_KEY: dict[str, Figure] = {figure.key: figure for figure in FIGURES}


def format_value(value: Any, unit: str) -> str:
    """Format a figure for a console line or the Markdown table."""
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
    if unit == "per_s":
        return f"{value:.1f} / s"
    return str(value)
