"""Command line of the three-party mode (run it with .venv-threeparty's Python).

Take part as one party (its fields as JSON on stdin, one JSON line per step on stdout)::

    python -m threeparty --role bank --server URL --session CODE --keys DIR < bank.json

Create a session and print the three parties' codes (JSON)::

    python -m threeparty new-session --server URL [--mode explain]

Exit codes: 0 done; 1 the flow failed (the last line is {"step": "error", "message", "code"} and
the message is also on stderr); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from threeparty import protocol
from threeparty.party import DEFAULT_WAIT_SECONDS, PartyClient, PartyError, create_session

WAIT_VARIABLE = "THREEPARTY_PARTY_WAIT_SECONDS"


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _fail(message: str, code: str, exit_code: int) -> int:
    _emit({"step": "error", "code": code, "message": message})
    print(f"threeparty: {message}", file=sys.stderr)
    return exit_code


def _party_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m threeparty",
        description="Take part in a three-party session as one party (fields as JSON on stdin). "
        "Use `python -m threeparty new-session --server URL` to create a session.",
    )
    parser.add_argument("--role", required=True, choices=protocol.ROLES)
    parser.add_argument("--server", required=True, help="the three-party server's URL")
    parser.add_argument("--session", required=True, help="this party's session code")
    parser.add_argument("--keys", required=True, type=Path, help="this party's own key folder")
    parser.add_argument(
        "--wait",
        type=float,
        default=float(os.environ.get(WAIT_VARIABLE, DEFAULT_WAIT_SECONDS)),
        help=f"seconds to wait for another party before giving up (default %(default)s, or "
        f"{WAIT_VARIABLE})",
    )
    return parser


def _new_session_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m threeparty new-session",
        description="Create a session and print the three parties' codes as JSON.",
    )
    parser.add_argument("--server", required=True, help="the three-party server's URL")
    parser.add_argument("--mode", choices=protocol.MODES, default="predict")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["new-session"]:
        args = _new_session_parser().parse_args(argv[1:])
        try:
            _emit(create_session(args.server, args.mode))
        except PartyError as error:
            return _fail(str(error), error.code, 1)
        return 0
    args = _party_parser().parse_args(argv)
    try:
        fields = json.loads(sys.stdin.read() or "null")
    except ValueError as error:
        return _fail(f"the fields on stdin are not JSON: {error}", "invalid_field", 2)
    if not isinstance(fields, dict):
        return _fail("the fields on stdin must be a JSON object", "invalid_field", 2)
    try:
        with PartyClient(
            args.role, args.server, args.session, args.keys, args.wait, on_progress=_emit
        ) as client:
            client.run(fields)
    except PartyError as error:
        return _fail(str(error), error.code, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
