"""Command line of the three-party mode (run it with .venv-threeparty's Python).

Each party first makes (once) its identity key in its own folder and tells the others its
fingerprint out of band::

    python -m threeparty identity --keys DIR

Whoever creates a session lists the three verify keys; it prints each party's invitation::

    python -m threeparty new-session --server URL --roster applicant=KEY bank=KEY \
        credit_bureau=KEY [--mode explain]

Each party then takes part with its invitation and the two others' fingerprints (its fields as
JSON on stdin, one JSON line per step on stdout)::

    python -m threeparty --role bank --server URL --session INVITATION --keys DIR \
        --peer applicant=FINGERPRINT --peer credit_bureau=FINGERPRINT < bank.json

A bank's portfolio: a session for N applications (``new-session --mode batch --applications N``),
each party with a CSV of its own columns, one row per application, in the same order; the
applicant and the bank write each application's verdict (a progress bar goes to stderr)::

    python -m threeparty --role bank ... --csv bank.csv --out verdicts.csv

Exit codes: 0 done; 1 the flow failed or was refused (the last line is {"step": "error",
"message", "code"} and the message is also on stderr); 2 bad arguments or input.
"""

from __future__ import annotations

import os

# A party process runs OpenFHE single-threaded (see threeparty.engine); set before anything loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from threeparty import protocol  # noqa: E402
from threeparty.party import (  # noqa: E402
    DEFAULT_WAIT_SECONDS,
    PartyClient,
    PartyError,
    create_session,
    read_rows,
)
from threeparty.transcript import Identity  # noqa: E402

WAIT_VARIABLE = "THREEPARTY_PARTY_WAIT_SECONDS"


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _fail(message: str, code: str, exit_code: int) -> int:
    _emit({"step": "error", "code": code, "message": message})
    print(f"threeparty: {message}", file=sys.stderr)
    return exit_code


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """``role=value`` arguments as a dict (argparse error on a bad one)."""
    pairs = {}
    for value in values:
        role, sep, text = value.partition("=")
        if not sep or role not in protocol.ROLES:
            raise argparse.ArgumentTypeError(
                f"{what} is ROLE=VALUE with ROLE in {', '.join(protocol.ROLES)}; got {value!r}"
            )
        pairs[role] = text
    return pairs


def _party_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m threeparty",
        description="Take part in a three-party session as one party (fields as JSON on stdin). "
        "Subcommands: identity (this party's fingerprint), new-session (create a session).",
    )
    parser.add_argument("--role", required=True, choices=protocol.ROLES)
    parser.add_argument("--server", required=True, help="the three-party server's URL")
    parser.add_argument("--session", required=True, help="this party's invitation")
    parser.add_argument("--keys", required=True, type=Path, help="this party's own key folder")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ROLE=FINGERPRINT",
        help="another party's fingerprint, compared out of band (one flag per other party)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        help="batch mode: this party's columns, one row per application (instead of stdin)",
    )
    parser.add_argument(
        "--out", type=Path, help="batch mode (recipients): where to write each verdict as CSV"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=float(os.environ.get(WAIT_VARIABLE, DEFAULT_WAIT_SECONDS)),
        help=f"seconds to wait for another party before giving up (default %(default)s, or "
        f"{WAIT_VARIABLE})",
    )
    return parser


def _identity(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m threeparty identity",
        description="Make (once) this party's identity key in its folder; print its verify key "
        "(for the roster) and fingerprint (to compare out of band).",
    )
    parser.add_argument("--keys", required=True, type=Path, help="this party's own key folder")
    args = parser.parse_args(argv)
    try:
        identity = Identity.load_or_create(args.keys)
    except (OSError, ValueError) as error:
        return _fail(f"cannot use the key folder {args.keys}: {error}", "key_dir", 2)
    _emit({"verify_key": identity.verify_key.hex(), "fingerprint": identity.fingerprint})
    return 0


def _new_session(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m threeparty new-session",
        description="Create a session for three verify keys; print each party's invitation.",
    )
    parser.add_argument("--server", required=True, help="the three-party server's URL")
    parser.add_argument("--mode", choices=protocol.MODES, default="predict")
    parser.add_argument(
        "--applications",
        type=int,
        default=1,
        help=f"batch mode: applications in one evaluation (1-{protocol.MAX_APPLICATIONS})",
    )
    parser.add_argument(
        "--roster", nargs=3, required=True, metavar="ROLE=VERIFY_KEY", help="the three keys"
    )
    args = parser.parse_args(argv)
    try:
        roster = _pairs(args.roster, "--roster")
    except argparse.ArgumentTypeError as error:
        return _fail(str(error), "invalid_request", 2)
    try:
        _emit(create_session(args.server, roster, args.mode, args.applications))
    except PartyError as error:
        return _fail(str(error), error.code, 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["identity"]:
        return _identity(argv[1:])
    if argv[:1] == ["new-session"]:
        return _new_session(argv[1:])
    args = _party_parser().parse_args(argv)
    try:
        peers = _pairs(args.peer, "--peer")
    except argparse.ArgumentTypeError as error:
        return _fail(str(error), "invalid_request", 2)
    try:
        fields = _fields(args)
        progress = _emit if args.csv is None else _with_bar(_emit)
        with PartyClient(
            args.role,
            args.server,
            args.session,
            args.keys,
            peers,
            args.wait,
            on_progress=progress,
        ) as client:
            result = client.run(fields)
        if args.out is not None and isinstance(result.get("approved"), list):
            _write_verdicts(args.out, result["approved"])
    except PartyError as error:
        exit_code = 2 if error.code in ("invalid_field", "invalid_code") else 1
        return _fail(str(error), error.code, exit_code)
    return 0


def _fields(args: argparse.Namespace) -> Any:
    """The party's fields: its CSV (batch), or one JSON object on stdin.

    Raises:
        PartyError: invalid_field.
    """
    if args.csv is not None:
        return read_rows(args.csv, args.role)
    try:
        fields = json.loads(sys.stdin.read() or "null")
    except ValueError as error:
        raise PartyError(f"the fields on stdin are not JSON: {error}", "invalid_field") from None
    if not isinstance(fields, dict):
        raise PartyError("the fields on stdin must be a JSON object", "invalid_field")
    return fields


STEPS = ("joined", "round1", "chain_verified", "key_confirmed", "uploaded", "evaluated")
STEPS += ("verified", "partial_decrypted", "done")


def _with_bar(emit: Any) -> Any:
    """``emit`` plus a progress bar on stderr (one step of the flow after the other)."""

    def progress(event: dict[str, Any]) -> None:
        emit(event)
        if event["step"] in STEPS:
            done = STEPS.index(event["step"]) + 1
            bar = "#" * (3 * done) + "." * (3 * (len(STEPS) - done))
            end = "\n" if event["step"] == "done" else ""
            print(f"\r[{bar}] {done}/{len(STEPS)} {event['step']:<18}", end=end, file=sys.stderr)

    return progress


def _write_verdicts(path: Path, approved: list[bool]) -> None:
    """Each application's verdict, in the CSV's order (written whole, then moved in place)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["application", "approved"])
        writer.writerows([index, str(verdict).lower()] for index, verdict in enumerate(approved))
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
