"""Sessions survive a restart of the three-party server (its store folder on disk).

Two parties start a session and stop waiting for the third (a time-out); the server is stopped
and a new one started on the same store folder; the three parties then run the same command
again, go on where they stopped and get the clear tree's verdict.
"""

from __future__ import annotations

import threading

from tests.helpers_server import running_server
from tests.threeparty.support import FIELDS, Kit, create, play
from threeparty import protocol
from threeparty.layout import load_layout
from threeparty.party import PartyClient, PartyError, clear_verdicts

APP = "threeparty.server:app"
SHORT_WAIT = 6.0


def test_a_session_goes_on_after_the_server_restarts(tmp_path):
    kit = Kit(tmp_path / "keys")
    store = tmp_path / "store"
    stopped: dict[str, PartyError] = {}
    with running_server(store, env={"OMP_NUM_THREADS": "1"}, app=APP) as url:
        created = create(url, kit)

        def early(role: str) -> None:
            client = PartyClient(
                role,
                url,
                created["invitations"][role],
                kit.root / role,
                kit.peers(role),
                SHORT_WAIT,
            )
            try:
                with client:
                    client.run(FIELDS[role])
            except PartyError as error:
                stopped[role] = error

        threads = [threading.Thread(target=early, args=(r,)) for r in ("applicant", "bank")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert {role: error.code for role, error in stopped.items()} == {
        "applicant": "timeout",
        "bank": "timeout",
    }
    assert (store / created["session_id"] / "meta.json").exists()
    with running_server(store, env={"OMP_NUM_THREADS": "1"}, app=APP) as url:
        outcome = play(url, kit, created)
    assert not outcome.errors, outcome.errors
    # The applicant's and the bank's round 1 were kept across the restart: not made again.
    for role in ("applicant", "bank"):
        assert "round1" not in outcome.steps(role), outcome.steps(role)
    expected = bool(clear_verdicts(FIELDS, "predict", load_layout())[0])
    for role in protocol.RECIPIENTS:
        assert outcome.results[role] == {"approved": expected}
    assert not (store / created["session_id"]).exists()  # deleted at the end of play()
