"""The command scoring a bank's portfolio in single-key mode, CSV to CSV (``credit-portfolio``).

The front of ``fhe_client.portfolio`` (the library call ``score_portfolio``): it reads the
settings (``FHE_SERVER_URL``, ``FHE_CLIENT_KEYS_DIR``) and the repository's deployment files and
passes them in. The command::

    python -m credit_portfolio --server URL --csv applications.csv --out verdicts.csv \
        [--explain] [--sessions N] [--key-dir DIR] [--limit N]

Exit codes: 0 done (or the --limit reached: run again to go on); 1 the server failed or refused;
2 bad arguments or a bad CSV (the message names the row and the field; nothing written is lost);
130 interrupted (everything decrypted so far is written).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

import backend
import settings
from fhe_client.portfolio import DEFAULT_SESSIONS, Progress, default_key_dir, score_portfolio
from fhe_client.portfolio_csv import PortfolioInputError, read_applications


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m credit_portfolio",
        description="Score every application of a CSV with the encrypted decision tree; write "
        "each verdict (and, with --explain, each refusal's explanation) to a CSV. Run it again "
        "with the same --out to go on after an interruption.",
    )
    parser.add_argument(
        "--server",
        default=None,
        help="the FHE server's URL (default: FHE_SERVER_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument("--csv", type=Path, required=True, help="the applications CSV")
    parser.add_argument("--out", type=Path, required=True, help="the verdicts CSV")
    parser.add_argument(
        "--key-dir",
        type=Path,
        help="the key folder (default: one per --out under FHE_CLIENT_KEYS_DIR)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="explain each refusal: the fewest years employed that would most likely give "
        "approval (one more FHE run per refused application)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=DEFAULT_SESSIONS,
        help=f"server sessions scoring at once (default {DEFAULT_SESSIONS})",
    )
    parser.add_argument("--limit", type=int, help="score at most this many applications now")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def progress_bar(stream: TextIO | None = None, width: int = 30) -> Progress:
    """A progress callback drawing one line on stderr: bar, count, rate and time left.

    Args:
        stream: where to draw (default stderr).
        width: the bar's width in characters.
    """
    out = stream or sys.stderr
    started = time.perf_counter()
    before: int | None = None  # written by an earlier run

    def draw(written: int, total: int) -> None:
        nonlocal before
        before = written - 1 if before is None else before
        elapsed = time.perf_counter() - started
        rate = (written - before) / elapsed if elapsed > 0 else 0.0
        left = (total - written) / rate if rate > 0 else 0.0
        filled = width * written // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if written == total else ""
        line = f"\r[{bar}] {written}/{total} applications, {rate:.2f}/s, {left:.0f} s left "
        print(line, end=end, file=out, flush=True)

    return draw


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code (see the module's docstring)."""
    args = _parser().parse_args(argv)
    if args.sessions < 1 or (args.limit is not None and args.limit < 0):
        print("error: --sessions must be at least 1 and --limit at least 0", file=sys.stderr)
        return 2
    client_settings = settings.ClientSettings()
    server_url = args.server or client_settings.resolved_server_url()
    key_dir = args.key_dir or default_key_dir(args.out, client_settings.client_keys_dir)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        preprocessors = {party: backend.party_preprocessor(party) for party in settings.PARTIES}
        applications = read_applications(args.csv, preprocessors)
        result = score_portfolio(
            server_url,
            applications,
            args.out,
            key_dir=key_dir,
            client_specs_path=settings.CLIENT_SPECS_PATH,
            preprocessing_path=settings.PREPROCESSING_PATH,
            explain=args.explain,
            sessions=args.sessions,
            limit=args.limit,
            on_progress=None if args.quiet else progress_bar(),
        )
    except PortfolioInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except backend.ClientError as error:
        print(
            f"\nerror: {error} (every verdict decrypted so far is in {args.out})", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to go on ({args.out})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    rate = result.scored / result.seconds if result.seconds > 0 else 0.0
    state = "complete" if result.complete else "not complete: run the same command again"
    keys = ", with the keys of the interrupted run" if result.reused_keys else ""
    print(
        f"{result.scored} applications scored in {result.seconds:.1f} s ({rate:.2f}/s{keys}), "
        f"{result.skipped} already written; {args.out}: {state}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
