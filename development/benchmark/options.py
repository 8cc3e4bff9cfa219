"""What one benchmark run measures and how many times (from the command line)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import settings

DEFAULT_RUNS = 5
DEFAULT_REAL_FHE_ROWS = 20
DEFAULT_THROUGHPUT_DECISIONS = 20
QUICK_SIMULATED_ROWS = 200
NAIVE_MAX_RUNS = 5


@dataclass
class Options:
    """What to measure and how many times.

    Attributes:
        runs: measured runs of each timing (after one warm-up run).
        naive_runs: measured runs of the naive port (it is ~30x slower).
        real_fhe_rows: held-out rows decided with real FHE for the accuracy figures.
        throughput_decisions: decisions made by the 4 concurrent HTTP clients.
        simulated_rows: held-out rows simulated in FHE (None: all of them).
        quick: smoke-test mode (tiny counts, no warm-up of the naive port's fresh-key runs).
        out_dir: where the JSON and Markdown results are written.
        command: the command line, as written in the report.
    """

    runs: int
    naive_runs: int
    real_fhe_rows: int
    throughput_decisions: int
    simulated_rows: int | None
    quick: bool
    out_dir: Path
    command: str


def parse_options(argv: list[str] | None = None, description: str = "") -> Options:
    """Read the command line (``argv``, or ``sys.argv[1:]`` when None)."""
    parser = argparse.ArgumentParser(
        prog="python -m development.benchmark", description=description
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
        simulated_rows=QUICK_SIMULATED_ROWS if quick else None,
        quick=quick,
        out_dir=args.out,
        command=shlex.join(["python", "-m", "development.benchmark", *arguments]),
    )
