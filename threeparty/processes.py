"""The three parties as three separate OS processes (``python -m threeparty``), started at once.

Used by the test of the whole flow over processes and by the benchmark that times it, so both
drive the command line the same way: each party its own process, its own key folder, its fields
as JSON on stdin, ``OMP_NUM_THREADS=1``, its JSON lines read back when it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threeparty import protocol

REPO_DIR = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 300.0

EXAMPLE_APPLICANT: dict[str, Any] = {
    "own_car": False,
    "own_property": True,
    "mobile_phone": True,
    "num_children": 1,
    "household_size": 3,
    "total_income": 90000,
    "age": 38,
    "income_type": "Commercial associate",
    "education_type": "Higher education",
    "family_status": "Married",
    "occupation_type": "Managers",
    "housing_type": "House / apartment",
}
"""An applicant's fields (the tests' and the benchmark's example application)."""


@dataclass(frozen=True)
class PartyRun:
    """One party process that has exited.

    Attributes:
        role: the party's role.
        returncode: its exit code (0 done, 1 the flow failed, 2 bad arguments or input).
        lines: its JSON lines, in order.
        stderr: what it wrote to stderr.
    """

    role: str
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    def step(self, name: str) -> dict[str, Any] | None:
        """The last line of step ``name`` (``"done"``, ``"verdict"``…), None if there is none."""
        return next((line for line in reversed(self.lines) if line.get("step") == name), None)


def start_party(
    server_url: str,
    role: str,
    code: str,
    fields: Mapping[str, Any],
    keys_dir: Path,
    wait: float,
) -> subprocess.Popen[str]:
    """Start one party's command line with this Python; its fields go to its stdin.

    Args:
        server_url: the three-party server's base URL.
        role: the party's role.
        code: the party's session code.
        fields: the party's fields (written as JSON to stdin, which is then closed).
        keys_dir: the party's own key folder.
        wait: seconds the party waits for another before a time-out (``--wait``).
    """
    command = [sys.executable, "-m", "threeparty", "--role", role, "--server", server_url]
    command += ["--session", code, "--keys", str(keys_dir), "--wait", str(wait)]
    process = subprocess.Popen(
        command,
        cwd=REPO_DIR,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(dict(fields)))  # small: it fits the pipe before any read
    process.stdin.close()
    process.stdin = None  # closed: communicate() must not flush it again
    return process


def finish_party(
    process: subprocess.Popen[str], role: str = "", timeout: float = PROCESS_TIMEOUT_SECONDS
) -> PartyRun:
    """Wait for a party's process to exit (killed after ``timeout`` s); return its run."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return PartyRun(role, process.returncode, lines, stderr)


def run_parties(
    server_url: str,
    codes: Mapping[str, str],
    fields: Mapping[str, Mapping[str, Any]],
    keys_root: Path,
    wait: float,
    timeout: float = PROCESS_TIMEOUT_SECONDS,
) -> dict[str, PartyRun]:
    """Start the three parties at once (key folders ``keys_root``/<role>); wait for all to exit.

    Returns:
        {role: its run}, whatever the exit codes (the caller checks them).
    """
    started = {
        role: start_party(server_url, role, codes[role], fields[role], keys_root / role, wait)
        for role in protocol.ROLES
    }
    return {role: finish_party(process, role, timeout) for role, process in started.items()}
