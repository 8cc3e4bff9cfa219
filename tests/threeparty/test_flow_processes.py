"""The whole three-party flow with each party a separate OS process (the CLI), real server.

Each party runs ``python -m threeparty --role ROLE ...`` with its own key folder, its fields on
stdin, and prints JSON lines. The verdict the applicant and the bank fuse must equal the clear
tree's (the layout's clear arithmetic, which a main-suite test checks against the reference tree
on 6,000 rows). A party that never shows up makes the others stop with a clear time-out; run
again once it is there, they all finish, and nothing done before is lost.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from fhe_server.launcher import REPO_DIR
from tests.helpers_server import running_server
from threeparty import protocol
from threeparty.layout import load_layout
from threeparty.party import party_rows

APPLICANT = {
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
# Seconds a party waits for another in the time-out test: long enough for the other two to get
# through their own first steps, short next to the test's process time-outs.
SHORT_WAIT = 4.0
PROCESS_TIMEOUT = 300


@pytest.fixture(scope="module")
def url():
    with running_server(None, env={"OMP_NUM_THREADS": "1"}, app="threeparty.server:app") as base:
        yield base


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "threeparty", *args]


def new_session(url: str, mode: str) -> dict:
    done = subprocess.run(
        _cli("new-session", "--server", url, "--mode", mode),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def start(url: str, codes: dict, role: str, fields: dict, keys, wait: float) -> subprocess.Popen:
    """Start one party's CLI; its fields go to stdin from a file."""
    keys.mkdir(exist_ok=True)
    fields_file = keys / f"{role}-fields.json"
    fields_file.write_text(json.dumps(fields))
    options = ["--role", role, "--server", url, "--session", codes[role]]
    options += ["--keys", str(keys / role), "--wait", str(wait)]
    with fields_file.open() as stdin:
        return subprocess.Popen(
            _cli(*options),
            cwd=REPO_DIR,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def finish(process: subprocess.Popen) -> tuple[int, list[dict], str]:
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    return process.returncode, [json.loads(line) for line in stdout.splitlines()], stderr


def run_three(url: str, codes: dict, fields: dict, keys) -> dict[str, list[dict]]:
    """Run the three parties at once; each must finish (exit 0). Returns their JSON lines."""
    processes = {r: start(url, codes, r, fields[r], keys, 120) for r in protocol.ROLES}
    results = {}
    for role, process in processes.items():
        code, lines, stderr = finish(process)
        assert code == 0, (role, lines, stderr)
        results[role] = lines
    return results


def clear_verdicts(fields: dict, mode: str) -> list[int]:
    layout = load_layout()
    rows = {role: party_rows(role, fields[role], mode, layout) for role in protocol.ROLES}
    return [int(v) for v in layout.clear_verdicts(rows)]


def test_explain_flow_as_three_processes_gives_the_clear_verdict(url, tmp_path):
    fields = {
        "applicant": APPLICANT,
        "bank": {"account_age": 12},
        "credit_bureau": {"employed": False, "years_employed": "0-2"},
    }
    codes = new_session(url, "explain")["codes"]
    results = run_three(url, codes, fields, tmp_path)
    for lines in results.values():
        steps = [line["step"] for line in lines]
        expected = ["joined", "round1", "round2", "uploaded", "evaluated", "partial_decrypted"]
        assert steps[: len(expected)] == expected and steps[-1] == "done"
    clear = clear_verdicts(fields, "explain")
    bins = load_layout().explain_candidates["years_employed"]
    want = {
        "approved": bool(clear[0]),
        "approved_years_employed": [b for b, v in zip(bins, clear[1:], strict=True) if v],
    }
    for role in protocol.RECIPIENTS:
        verdict = next(line for line in results[role] if line["step"] == "verdict")
        assert {k: verdict[k] for k in want} == want
    assert not any(line["step"] == "verdict" for line in results["credit_bureau"])
    # Each key folder holds its own party's share and box key only, readable by it alone.
    for role in protocol.ROLES:
        folder = tmp_path / role
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["box_secret.key", f"{role}.keyshare"]
        )
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for path in folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_party_that_never_shows_up_times_out_and_the_flow_finishes_later(url, tmp_path):
    fields = {
        "applicant": APPLICANT,
        "bank": {"account_age": 40},
        "credit_bureau": {"employed": True, "years_employed": "11-18"},
    }
    codes = new_session(url, "predict")["codes"]
    early = {
        r: start(url, codes, r, fields[r], tmp_path, SHORT_WAIT) for r in ("applicant", "bank")
    }
    for role, process in early.items():
        code, lines, stderr = finish(process)
        assert code == 1, (role, lines, stderr)
        assert lines[-1]["step"] == "error" and lines[-1]["code"] == "timeout", lines
        assert "timed out" in stderr and "run the same command again" in stderr
    # The credit bureau shows up; the two others run the same command again and go on.
    results = run_three(url, codes, fields, tmp_path)
    # The applicant's round 1 was kept: its second run did not make keys again.
    assert "round1" not in [line["step"] for line in results["applicant"]]
    expected = bool(clear_verdicts(fields, "predict")[0])
    for role in protocol.RECIPIENTS:
        verdict = next(line for line in results[role] if line["step"] == "verdict")
        assert verdict["approved"] is expected


def test_cli_errors_are_clear_and_not_tracebacks(url, tmp_path):
    codes = new_session(url, "predict")["codes"]
    bad = start(url, codes, "bank", {"account_age": "thirty"}, tmp_path, 5)
    code, lines, stderr = finish(bad)
    assert code == 1 and lines[-1]["code"] == "invalid_field" and "Traceback" not in stderr
    wrong_code = codes["bank"][:-4] + "AAAA"
    process = start(url, {"bank": wrong_code}, "bank", {"account_age": 3}, tmp_path, 5)
    code, lines, stderr = finish(process)
    assert code == 1 and lines[-1]["code"] == "unauthorized" and "Traceback" not in stderr
