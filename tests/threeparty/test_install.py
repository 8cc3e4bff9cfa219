"""``pip install .`` gives a party program that runs from any folder, as a party's machine has it.

The project is installed (a real wheel build by pip, without dependencies: this environment has
them) into a folder of its own; the three parties then run the console script
``threeparty-party`` from a folder outside the repository, against a real server, and the
recipients' verdict must be the clear tree's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import running_server
from threeparty import party, processes, protocol
from threeparty.layout import load_layout

REPO = Path(__file__).resolve().parents[2]
FIELDS = {
    "applicant": processes.EXAMPLE_APPLICANT,
    "bank": {"account_age": 25},
    "credit_bureau": {"employed": True, "years_employed": "5-8"},
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, REPO],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _script(installed: Path, *args: str, cwd: Path, stdin: str = "") -> subprocess.Popen:
    """Start the installed console script; its stdin is written and closed at once."""
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [str(installed / "bin" / "threeparty-party"), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    process.stdin = None
    return process


def _lines(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_installed_party_program_runs_outside_the_repository(installed, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import threeparty, fhe_client; print(threeparty.__file__)"],
        cwd=outside,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(installed))
    known = {
        role: _lines(_script(installed, "identity", "--keys", str(outside / role), cwd=outside))[-1]
        for role in protocol.ROLES
    }
    with running_server(None, env={"OMP_NUM_THREADS": "1"}, app="threeparty.server:app") as url:
        roster = [f"{role}={known[role]['verify_key']}" for role in protocol.ROLES]
        created = _lines(
            _script(installed, "new-session", "--server", url, "--roster", *roster, cwd=outside)
        )[-1]
        running = {}
        for role in protocol.ROLES:
            peers = [
                arg
                for other in protocol.ROLES
                if other != role
                for arg in ("--peer", f"{other}={known[other]['fingerprint']}")
            ]
            args = ["--role", role, "--server", url, "--session", created["invitations"][role]]
            args += ["--keys", str(outside / role), *peers]
            running[role] = _script(installed, *args, cwd=outside, stdin=json.dumps(FIELDS[role]))
        results = {role: _lines(process) for role, process in running.items()}
    expected = bool(party.clear_verdicts(FIELDS, "predict", load_layout())[0])
    for role in protocol.RECIPIENTS:
        verdict = next(line for line in results[role] if line["step"] == "verdict")
        assert verdict["approved"] is expected
