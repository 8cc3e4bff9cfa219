"""The whole three-party flow with each party a separate OS process (the CLI), real server.

Each party runs ``python -m threeparty --role ROLE ...`` with its own key folder, its fields on
stdin, and prints JSON lines. The verdict the applicant and the bank fuse must equal the clear
tree's (the layout's clear arithmetic, which a main-suite test checks against the reference tree
on 6,000 rows). A party that never shows up makes the others stop with a clear time-out; run
again once it is there, they all finish, and nothing done before is lost.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from contracts import examples
from fhe_server.launcher import REPO_DIR
from tests.support.servers import running_server
from threeparty import party, processes, protocol
from threeparty.layout import load_layout

APPLICANT = processes.EXAMPLE_APPLICANT
# Seconds a party waits for another in the time-out test: long enough for the other two to get
# through their own first steps, short next to the test's process time-outs.
SHORT_WAIT = 4.0


@pytest.fixture(scope="module")
def url():
    with running_server(None, env={"OMP_NUM_THREADS": "1"}, app="threeparty.server:app") as base:
        yield base


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "threeparty", *args]


def new_session(url: str, mode: str, keys) -> tuple[dict, dict]:
    """Each party's identity (its own process), then a session for their roster (the CLI)."""
    known = processes.identities(keys)
    roster = [f"{role}={known[role]['verify_key']}" for role in protocol.ROLES]
    done = subprocess.run(
        _cli("new-session", "--server", url, "--mode", mode, "--roster", *roster),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)["invitations"], known


def start(url: str, session: tuple, role: str, fields: dict, keys, wait: float):
    """Start one party's CLI (key folder ``keys``/<role>)."""
    invitations, known = session
    peers = processes.peers_of(role, known)
    return processes.start_party(url, role, invitations[role], fields, keys / role, wait, peers)


def finish(process: subprocess.Popen) -> tuple[int, list[dict], str]:
    run = processes.finish_party(process)
    return run.returncode, run.lines, run.stderr


def run_three(url: str, session: tuple, fields: dict, keys) -> dict[str, list[dict]]:
    """Run the three parties at once; each must finish (exit 0). Returns their JSON lines."""
    invitations, known = session
    runs = processes.run_parties(url, invitations, fields, keys, 120, known)
    for role, run in runs.items():
        assert run.returncode == 0, (role, run.lines, run.stderr)
    return {role: run.lines for role, run in runs.items()}


def clear_verdicts(fields: dict, mode: str) -> list[int]:
    return party.clear_verdicts(fields, mode, load_layout())


def test_explain_flow_as_three_processes_gives_the_clear_verdict(url, tmp_path):
    fields = examples.EXAMPLE_FIELDS  # refused (not employed): explain has something to say
    session = new_session(url, "explain", tmp_path)
    results = run_three(url, session, fields, tmp_path)
    for lines in results.values():
        steps = [line["step"] for line in lines]
        expected = [
            "joined",
            "round1",
            "chain_verified",
            "key_confirmed",
            "uploaded",
            "evaluated",
            "verified",
            "partial_decrypted",
        ]
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
    # Each key folder holds its own party's identity and, per session, its share, box key and
    # commitments only, readable by it alone.
    for role in protocol.ROLES:
        folder = tmp_path / role
        (session_dir,) = folder.glob("session-*")
        assert sorted(p.name for p in folder.iterdir()) == ["identity.key", session_dir.name]
        secrets = ["box_secret.key", f"{role}.keyshare", "token", "confirm.partial"]
        secrets += ["inputs.frame", "output.partial"]
        secrets += ["tag"] if role in protocol.RECIPIENTS else []  # a recipient's secret tag
        assert sorted(p.name for p in session_dir.iterdir()) == sorted(secrets)
        for path in [folder, session_dir]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for path in [folder / "identity.key", *session_dir.iterdir()]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_party_that_never_shows_up_times_out_and_the_flow_finishes_later(url, tmp_path):
    fields = {
        "applicant": APPLICANT,
        "bank": {"account_age": 40},
        "credit_bureau": {"employed": True, "years_employed": "11-18"},
    }
    session = new_session(url, "predict", tmp_path)
    early = {
        r: start(url, session, r, fields[r], tmp_path, SHORT_WAIT) for r in ("applicant", "bank")
    }
    for role, process in early.items():
        code, lines, stderr = finish(process)
        assert code == 1, (role, lines, stderr)
        assert lines[-1]["step"] == "error" and lines[-1]["code"] == "timeout", lines
        assert "timed out" in stderr and "run the same command again" in stderr
    # The credit bureau shows up; the two others run the same command again and go on.
    results = run_three(url, session, fields, tmp_path)
    # The applicant's round 1 was kept: its second run did not make keys again.
    assert "round1" not in [line["step"] for line in results["applicant"]]
    expected = bool(clear_verdicts(fields, "predict")[0])
    for role in protocol.RECIPIENTS:
        verdict = next(line for line in results[role] if line["step"] == "verdict")
        assert verdict["approved"] is expected


def test_cli_errors_are_clear_and_not_tracebacks(url, tmp_path):
    invitations, known = new_session(url, "predict", tmp_path)
    bad = start(url, (invitations, known), "bank", {"account_age": "thirty"}, tmp_path, 5)
    code, lines, stderr = finish(bad)
    assert code == 2 and lines[-1]["code"] == "invalid_field" and "Traceback" not in stderr
    wrong = {**invitations, "bank": invitations["bank"][:-4] + "AAAA"}
    process = start(url, (wrong, known), "bank", {"account_age": 3}, tmp_path, 5)
    code, lines, stderr = finish(process)
    assert code == 1 and lines[-1]["code"] == "forbidden" and "Traceback" not in stderr
