"""Stage 5, a bank's portfolio: 100 applications CSV to CSV, and warm batches of 16.

End to end is what ``python -m credit_portfolio --csv ... --out ...`` does once its process has
started: the applications read and checked, a key set generated for the portfolio, the keys
uploaded and prepared by the server at the first batch, every application decided (in batches of
16, a short last batch one by one) and its verdict written. Each run has an output file of its
own, so each one generates its keys. The warm figure is one ``decide_batch`` of 16 on a session
whose keys are already prepared. Every verdict is compared with the clear tree's.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from tqdm import tqdm

import settings
from contracts.single_key import BATCH_ROWS
from development.benchmark.options import Options
from development.benchmark.report import Report
from development.benchmark.timing import timed
from development.reference import clear_verdict
from fhe_server.launcher import ServerProcess

PORTFOLIO_APPLICATIONS = 100
QUICK_PORTFOLIO_APPLICATIONS = 20


def write_portfolio_csv(path: Path, count: int) -> int:
    """The first ``count`` rows of the data set as a portfolio CSV; return how many."""
    with open(settings.DATA_PATH, newline="") as source:
        reader = csv.DictReader(source)
        rows = list(itertools.islice(reader, count))
        columns = list(reader.fieldnames or [])
    with open(path, "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def measure_portfolio(
    report: Report, options: Options, server: ServerProcess, work_dir: Path
) -> None:
    """Portfolio rate end to end (median of ``options.runs``), warm batches, agreement."""
    from backend import CreditScoringClient, party_preprocessor
    from fhe_client.portfolio import score_portfolio
    from fhe_client.portfolio_csv import read_applications

    report.stage("portfolio")
    count = QUICK_PORTFOLIO_APPLICATIONS if options.quick else PORTFOLIO_APPLICATIONS
    source = work_dir / "portfolio.csv"
    count = write_portfolio_csv(source, count)
    preprocessors = {party: party_preprocessor(party) for party in settings.PARTIES}
    runs = max(1, min(options.runs, 3))

    def one_run(number: int) -> tuple[float, list[bool]]:
        out = work_dir / f"verdicts-{number}.csv"
        seconds, _ = timed(
            lambda: score_portfolio(
                server.url,
                read_applications(source, preprocessors),
                out,
                key_dir=work_dir / f"portfolio-keys-{number}",
                client_specs_path=settings.CLIENT_SPECS_PATH,
                preprocessing_path=settings.PREPROCESSING_PATH,
            )
        )
        with open(out, newline="") as handle:
            verdicts = [row["approved"] == "true" for row in csv.DictReader(handle)]
        return seconds, verdicts

    applications = read_applications(source, preprocessors)
    expected = [clear_verdict(a["applicant"], a["bank"], a["credit_bureau"]) for a in applications]
    if not options.quick:
        one_run(0)  # warm-up: the server's first portfolio pays one-time costs
    seconds, agree = [], []
    for number in tqdm(range(1, runs + 1), desc="portfolios", leave=False):
        run_seconds, verdicts = one_run(number)
        seconds.append(run_seconds)
        agree.append(verdicts == expected)
    report.record("portfolio_applications", count)
    median = report.median("portfolio_s", seconds)
    report.record("portfolio_per_s", round(count / median, 2))
    report.record("portfolio_agreement", float(all(agree)))

    client = CreditScoringClient(server.url, key_dir=work_dir / "batch-keys")
    try:
        client.generate_keys()
        batch = [applications[i % count] for i in range(BATCH_ROWS)]
        client.decide_batch(batch)  # the keys' first preparation
        batch_seconds, fhe_seconds = [], []
        for _ in tqdm(range(options.runs), desc="warm batches", leave=False):
            seconds_one, _ = timed(lambda: client.decide_batch(batch))
            batch_seconds.append(seconds_one)
            fhe_seconds.append(float(client.batch_fhe_execution_time or 0.0))
    finally:
        client.close()
    warm = report.median("portfolio_warm_batch_s", batch_seconds)
    report.median("portfolio_warm_batch_fhe_s", fhe_seconds)
    report.record("portfolio_warm_per_s", round(BATCH_ROWS / warm, 2))
