"""One benchmark run: the stages in order, then the two result files."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

import settings
from development.benchmark.accuracy import measure_accuracy
from development.benchmark.dataset import load_dataset
from development.benchmark.direct_fhe import measure_direct_fhe
from development.benchmark.http_flows import measure_http
from development.benchmark.naive import measure_naive, measure_naive_low_bits
from development.benchmark.options import Options, parse_options
from development.benchmark.portfolio import measure_portfolio
from development.benchmark.report import Report, write_results
from development.benchmark.throughput import measure_throughput
from development.benchmark.timing import machine_info
from fhe_server.launcher import ServerProcess

STAGES = (
    "accuracy",
    "client keys",
    "encryption",
    "warm predict",
    "explain",
    "real FHE rows",
    "naive port",
    "naive port, n_bits 3",
    "server start",
    "HTTP flows",
    "throughput",
    "portfolio",
    "report",
)
SERVER_START_TIMEOUT_SECONDS = 180.0
# The benchmark server lets every throughput client queue (the default allows 4 waiting jobs).
SERVER_ENV = {"FHE_MAX_WAITING_FHE": "8"}


def run(options: Options) -> dict[str, Any]:
    """Measure everything, write the JSON and Markdown results; return the JSON's content."""
    started = time.perf_counter()
    card = json.loads(settings.MODEL_CARD_PATH.read_text(encoding="utf-8"))
    report = Report()
    report.facts(**machine_info())
    report.facts(
        command=options.command,
        runs=options.runs,
        quick=options.quick,
        server_env=SERVER_ENV,
        model_card_metrics=card.get("metrics", {}),
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
        data = load_dataset(card)
        measure_accuracy(report, card, data, simulated_rows=options.simulated_rows)
        measure_direct_fhe(report, options, data, card)
        measure_naive(report, options, data, card, work_dir)
        measure_naive_low_bits(report, options, data, card, work_dir)
        report.stage("server start")
        server = ServerProcess(
            env={"FHE_STORE_DIR": str(work_dir / "store"), **SERVER_ENV},
            log_path=work_dir / "server.log",
            log_level="warning",
            start_timeout=SERVER_START_TIMEOUT_SECONDS,
        )
        start_s = time.perf_counter()
        with server:
            report.record("server_start_s", round(time.perf_counter() - start_s, 3))
            try:
                measure_http(report, options, data, server, work_dir)
                measure_throughput(report, options, data, server, work_dir)
                measure_portfolio(report, options, server, work_dir)
            except Exception:
                tqdm.write(f"server log (tail):\n{server.log_tail()}")
                raise
        report.stage("report")
        report.facts(
            load_average_end=[round(x, 2) for x in os.getloadavg()],
            benchmark_total_s=round(time.perf_counter() - started, 1),
        )
        result, json_path, md_path = write_results(report, options.out_dir)
        bar.update(1)
    tqdm.write(f"wrote {json_path} and {md_path} in {report.values['benchmark_total_s']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m development.benchmark``."""
    from development import benchmark

    run(parse_options(argv, description=(benchmark.__doc__ or "").splitlines()[0]))
    return 0
