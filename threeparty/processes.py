"""The three parties as three separate OS processes (``python -m threeparty``), started at once.

Used by the test of the whole flow over processes and by the benchmark that times it, so both
drive the command line the same way: each party its own process, its own key folder, its fields
as JSON on stdin, ``OMP_NUM_THREADS=1``, its JSON lines read back when it exits. The command
lines themselves come from ``threeparty.command``, which the page uses too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts import examples
from threeparty import command, protocol

REPO_DIR = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 300.0

EXAMPLE_APPLICANT = examples.EXAMPLE_APPLICANT
"""An applicant's fields (``contracts.examples``, the tests' and the benchmark's example)."""


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


def party_identity(
    keys_dir: Path, *, python: str | Path = sys.executable, timeout: float = 60.0
) -> dict[str, str]:
    """Make (once) a party's identity key in its folder, in its own process; return its public part.

    The signing key is made and kept by ``python -m threeparty identity`` in ``keys_dir``: the
    calling process sees only {"verify_key", "fingerprint"}.

    Args:
        keys_dir: the party's own key folder.
        python: the interpreter with openfhe (default this one; the page gives
            ``.venv-threeparty``'s).
        timeout: seconds the command may take.

    Raises:
        RuntimeError: when the command fails.
    """
    done = subprocess.run(
        command.identity_command(python, keys_dir),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=command.party_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m threeparty identity failed: {done.stderr.strip()}")
    return json.loads(done.stdout.splitlines()[-1])


def identities(
    keys_root: Path, *, python: str | Path = sys.executable, timeout: float = 60.0
) -> dict[str, dict[str, str]]:
    """Each party's public identity (``party_identity``), folders ``keys_root``/<role>."""
    return {
        role: party_identity(keys_root / role, python=python, timeout=timeout)
        for role in protocol.ROLES
    }


def peers_of(role: str, known: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The fingerprints a party is given out of band: the two other parties'."""
    return {other: known[other]["fingerprint"] for other in protocol.ROLES if other != role}


def start_party(
    server_url: str,
    role: str,
    invitation: str,
    fields: Mapping[str, Any],
    keys_dir: Path,
    wait: float,
    peers: Mapping[str, str],
    extra: Sequence[str] = (),
    *,
    python: str | Path = sys.executable,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start one party's command line (default: with this Python); its fields go to its stdin.

    Args:
        server_url: the three-party server's base URL.
        role: the party's role.
        invitation: the party's invitation.
        fields: the party's fields (written as JSON to stdin, which is then closed).
        keys_dir: the party's own key folder.
        wait: seconds the party waits for another before a time-out (``--wait``).
        peers: {role: fingerprint} of the two other parties.
        extra: more arguments (``--csv FILE --out FILE`` for a portfolio; fields then {}).
        python: the interpreter with openfhe (the page, on Python 3.11, gives
            ``.venv-threeparty``'s).
        stderr: where the party's stderr goes (``subprocess.DEVNULL`` for a caller that reads
            only its stdout while it runs, so that a full stderr pipe cannot block it).
    """
    process = subprocess.Popen(
        command.party_command(
            python,
            role=role,
            server_url=server_url,
            invitation=invitation,
            keys_dir=keys_dir,
            wait=wait,
            peers=peers,
            extra=extra,
        ),
        cwd=REPO_DIR,
        env=command.party_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
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
    invitations: Mapping[str, str],
    fields: Mapping[str, Mapping[str, Any]],
    keys_root: Path,
    wait: float,
    known: Mapping[str, Mapping[str, str]],
    timeout: float = PROCESS_TIMEOUT_SECONDS,
) -> dict[str, PartyRun]:
    """Start the three parties at once (key folders ``keys_root``/<role>); wait for all to exit.

    Args:
        server_url: the three-party server's base URL.
        invitations: {role: invitation}.
        fields: {role: its fields}.
        keys_root: the parent of the parties' key folders.
        wait: seconds a party waits for another.
        known: ``identities(keys_root)``: each party is given the others' fingerprints.
        timeout: seconds before a party's process is killed.

    Returns:
        {role: its run}, whatever the exit codes (the caller checks them).
    """
    started = {
        role: start_party(
            server_url,
            role,
            invitations[role],
            fields[role],
            keys_root / role,
            wait,
            peers_of(role, known),
        )
        for role in protocol.ROLES
    }
    return {role: finish_party(process, role, timeout) for role, process in started.items()}
