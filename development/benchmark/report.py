"""The figures of one run, their targets and the two result files (JSON and Markdown)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from development.benchmark.figures import FIGURE_BY_KEY, FIGURES, MB, Figure, format_value


@dataclass
class Report:
    """Figures measured so far, with their samples; one console line per figure.

    Attributes:
        values: figure key -> value (seconds, bytes, fractions, ratios), and the run's facts
            (date, machine, command: see ``facts``).
        samples: figure key -> every measured sample (seconds) behind a median.
        notes: remarks printed in the Markdown report.
        bar: the overall progress bar (one step per stage).
    """

    values: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bar: Any = None
    _staged: bool = False

    def record(self, key: str, value: Any) -> Any:
        """Record a figure declared in ``figures.FIGURES`` and print its line; return the value.

        Raises:
            KeyError: if no figure of that key is declared.
        """
        figure = FIGURE_BY_KEY[key]
        self.values[key] = value
        tqdm.write(f"  {figure.label:<58} {format_value(value, figure.unit)}")
        return value

    def median(self, key: str, samples: list[float]) -> float:
        """Record the median of timing samples (seconds) and keep the samples; return it."""
        figure = FIGURE_BY_KEY[key]
        value = float(np.median(samples))
        self.samples[key] = [round(s, 6) for s in samples]
        self.values[key] = round(value, 6)
        spread = f" (min {min(samples):.3f}, max {max(samples):.3f}, n={len(samples)})"
        tqdm.write(f"  {figure.label:<58} {format_value(value, 's')}{spread}")
        return value

    def facts(self, **facts: Any) -> None:
        """Keep facts of the run that are not measured figures (date, machine, command...)."""
        self.values.update(facts)

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


def miss_bound(figure: Figure, values: dict[str, Any]) -> str:
    """What bounds a missed target (bootstrap count x measured time per bootstrap, ...)."""
    per_bootstrap = float(values.get("time_per_bootstrap_s", 0.0))
    if figure.key in ("warm_predict_s", "fresh_predict_s"):
        count = values.get("bootstraps_predict", 0)
        in_bootstraps = count * per_bootstrap
        text = (
            f"{count} bootstraps x {per_bootstrap * 1e3:.1f} ms = {in_bootstraps:.3f} s "
            f"(+ {float(values['warm_predict_s']) - in_bootstraps:.3f} s outside bootstraps)"
        )
        if figure.key == "fresh_predict_s":
            first_use = float(values["fresh_predict_s"]) - float(values["warm_predict_s"])
            text += (
                f", plus {first_use:.3f} s first use of the keys (expanding "
                f"{values.get('server_key_memory_bytes', 0) / MB:.0f} MB of key material)"
            )
        return text
    if figure.key == "explain_over_predict":
        count = values.get("bootstraps_explain", 0)
        return (
            f"explain has {count} bootstraps (predict {values.get('bootstraps_predict', 0)}) x "
            f"{per_bootstrap * 1e3:.1f} ms = {count * per_bootstrap:.3f} s"
        )
    if figure.key == "flow_s":
        parts = [
            f"{name} {values.get(f'flow_{name}_s', 0.0):.2f} s"
            for name in ("keygen_upload", "send_applicant", "send_bank", "send_credit_bureau")
            + ("predict", "fetch_decrypt")
        ]
        return "steps: " + ", ".join(parts)
    if figure.key == "speedup_vs_naive":
        return (
            f"bootstraps {values.get('naive_bootstraps', 0)} (naive) vs "
            f"{values.get('bootstraps_predict', 0)} (ours); per bootstrap "
            f"{float(values.get('naive_time_per_bootstrap_s', 0)) * 1e3:.1f} ms vs "
            f"{per_bootstrap * 1e3:.1f} ms"
        )
    if figure.key == "speedup_vs_naive3":
        return (
            f"bootstraps {values.get('naive3_bootstraps', 0)} (naive, n_bits 3) vs "
            f"{values.get('bootstraps_predict', 0)} (ours); per bootstrap "
            f"{float(values.get('naive3_time_per_bootstrap_s', 0)) * 1e3:.1f} ms vs "
            f"{per_bootstrap * 1e3:.1f} ms"
        )
    if figure.key == "portfolio_per_s":
        return (
            f"{values.get('portfolio_applications', 0)} applications in "
            f"{float(values.get('portfolio_s', 0)):.2f} s; warm, a batch of 16 takes "
            f"{float(values.get('portfolio_warm_batch_s', 0)):.3f} s "
            f"({float(values.get('portfolio_warm_per_s', 0)):.1f} / s): the rest is the key "
            f"generation ({float(values.get('keygen_s', 0)):.2f} s), the upload and the keys' "
            "first preparation on the server"
        )
    if figure.key == "evaluation_key_bytes":
        return f"key material {values.get('server_key_memory_bytes', 0) / MB:.0f} MB expanded"
    return ""


def evaluate_targets(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured figure, met or missed, and for a miss by how much."""
    rows = []
    for figure in FIGURES:
        target = figure.target
        if target is None:
            continue
        value = values.get(figure.key)
        if value is None:
            rows.append({"key": figure.key, "target": target.text, "met": None})
            continue
        met = target.met(float(value))
        row = {"key": figure.key, "value": value, "target": target.text, "met": met}
        if not met:
            if target.higher_is_better:
                row["missed_by"] = f"{target.bound / float(value):.2f}x short"
            else:
                excess = float(value) - target.bound
                shown = (
                    f"{excess:.2f}" if figure.unit == "ratio" else format_value(excess, figure.unit)
                )
                row["missed_by"] = f"{shown} over ({float(value) / target.bound:.2f}x the target)"
            row["bound"] = miss_bound(figure, values)
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
    for row in targets:
        figure = FIGURE_BY_KEY[row["key"]]
        measured = format_value(row.get("value"), figure.unit)
        if row["met"] is None:
            result = "not measured"
        elif row["met"]:
            result = "met"
        else:
            result = f"**missed** by {row['missed_by']}; bound: {row['bound']}"
        lines.append(f"| {figure.label} | {measured} | {row['target']} | {result} |")
    lines += ["", "## All figures", "", "| Figure | Measured |", "|---|---|"]
    for figure in FIGURES:
        if figure.table and figure.target is None and figure.key in values:
            lines.append(f"| {figure.label} | {format_value(values[figure.key], figure.unit)} |")
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


def write_results(report: Report, out_dir: Path) -> tuple[dict[str, Any], Path, Path]:
    """Evaluate the targets and write benchmark_results.json and .md into ``out_dir``.

    Returns:
        The JSON's content and the paths of the two files.
    """
    targets = evaluate_targets(report.values)
    for row in targets:
        if row["met"] is False:
            report.note(f"{row['key']} missed by {row['missed_by']}; bound: {row['bound']}")
    result = {**report.values, "targets": targets, "samples": report.samples}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "benchmark_results.json"
    md_path = out_dir / "benchmark_results.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report.values, targets, report.notes), encoding="utf-8")
    return result, json_path, md_path
