"""A portfolio scored in one evaluation: each party's CSV of its own columns, three processes.

A batch session for N applications; each party's command line reads its own columns of the N
applications (``--csv``) and the applicant and the bank write each verdict (``--out``). Every
verdict must be the clear tree's on the same rows. Run again after an interruption, a party
goes on where it stopped (its committed inputs are kept), so the portfolio is resumable.
"""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys

from fhe_server.launcher import REPO_DIR
from tests.support.servers import running_server
from threeparty import party, processes, protocol
from threeparty.layout import load_layout

APPLICATIONS = 48


def _portfolio(folder) -> dict[str, list[dict]]:
    """The first applications of the data set, split into each party's own CSV."""
    with open(REPO_DIR / "data" / "applications.csv", newline="") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), APPLICATIONS))
    fields = {}
    for role in protocol.ROLES:
        columns = party.party_fields(role)
        with open(folder / f"{role}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: row[c] for c in columns} for row in rows)
        fields[role] = party.read_rows(folder / f"{role}.csv", role)
    return fields


def test_a_portfolio_from_csv_to_csv_gives_the_clear_verdicts(tmp_path):
    fields = _portfolio(tmp_path)
    known = processes.identities(tmp_path / "keys")
    roster = [f"{role}={known[role]['verify_key']}" for role in protocol.ROLES]
    with running_server(None, env={"OMP_NUM_THREADS": "1"}, app="threeparty.server:app") as url:
        created = subprocess.run(
            [sys.executable, "-m", "threeparty", "new-session", "--server", url, "--mode", "batch"]
            + ["--applications", str(APPLICATIONS), "--roster", *roster],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        )
        invitations = json.loads(created.stdout)["invitations"]
        started = {
            role: processes.start_party(
                url,
                role,
                invitations[role],
                {},
                tmp_path / "keys" / role,
                120,
                processes.peers_of(role, known),
                ["--csv", str(tmp_path / f"{role}.csv"), "--out", str(tmp_path / f"{role}.out")],
            )
            for role in protocol.ROLES
        }
        runs = {role: processes.finish_party(p, role) for role, p in started.items()}
    for role, run in runs.items():
        assert run.returncode == 0, (role, run.lines[-1:], run.stderr[-2000:])
        assert "9/9 done" in run.stderr  # the progress bar
    expected = party.clear_verdicts(fields, "batch", load_layout())
    assert len(expected) == APPLICATIONS and 0 < sum(expected) < APPLICATIONS
    for role in protocol.RECIPIENTS:
        with open(tmp_path / f"{role}.out", newline="") as handle:
            written = list(csv.DictReader(handle))
        assert [int(r["application"]) for r in written] == list(range(APPLICATIONS))
        assert [r["approved"] == "true" for r in written] == [bool(v) for v in expected]
    assert not (tmp_path / "credit_bureau.out").exists()
