"""Sessions survive a restart of the three-party server, with either store.

Two parties start a session and stop waiting for the third (a time-out); the server is stopped
and a new one started on the same store (its folder on disk, or the same Redis database); the
three parties then run the same command again, go on where they stopped and get the clear
tree's verdict.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fhe_server.launcher import free_port
from tests.support.servers import running_server
from tests.threeparty.support import FIELDS, Kit, create, play
from threeparty import protocol
from threeparty.layout import load_layout
from threeparty.party import PartyClient, PartyError, clear_verdicts
from threeparty.server.redis_storage import blobs_key, meta_key

APP = "threeparty.server:app"
SHORT_WAIT = 6.0
ENV = {"OMP_NUM_THREADS": "1"}


def _two_parties_time_out(url: str, kit: Kit) -> dict:
    """Create a session; the applicant and the bank run until they time out waiting."""
    created = create(url, kit)
    stopped: dict[str, PartyError] = {}

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
    return created


def _the_flow_finishes(url: str, kit: Kit, created: dict) -> None:
    """The three parties go on where they stopped and get the clear tree's verdict."""
    outcome = play(url, kit, created)
    assert not outcome.errors, outcome.errors
    # The applicant's and the bank's round 1 were kept across the restart: not made again.
    for role in ("applicant", "bank"):
        assert "round1" not in outcome.steps(role), outcome.steps(role)
    expected = bool(clear_verdicts(FIELDS, "predict", load_layout())[0])
    for role in protocol.RECIPIENTS:
        assert outcome.results[role] == {"approved": expected}


def test_a_session_goes_on_after_the_server_restarts(tmp_path):
    kit = Kit(tmp_path / "keys")
    store = tmp_path / "store"
    with running_server(store, env=ENV, app=APP) as url:
        created = _two_parties_time_out(url, kit)
    assert (store / created["session_id"] / "meta.json").exists()
    with running_server(store, env=ENV, app=APP) as url:
        _the_flow_finishes(url, kit, created)
    assert not (store / created["session_id"]).exists()  # deleted at the end of play()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own on a free loopback port, persistence off."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_CLUSTER") == "1":
            raise RuntimeError("REQUIRE_CLUSTER=1 but redis-server is not installed")
        pytest.skip("not installed: redis-server (apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    process = subprocess.Popen(
        [*command, "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "no redis-server"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_session_goes_on_after_the_server_restarts_with_the_redis_store(tmp_path, redis_url):
    kit = Kit(tmp_path / "keys")
    folder = tmp_path / "store"  # named, but unused with a store URL
    env = {**ENV, "THREEPARTY_STORE_URL": redis_url, "THREEPARTY_SESSION_LIFETIME_SECONDS": "900"}
    with running_server(folder, env=env, app=APP) as url:
        created = _two_parties_time_out(url, kit)
    client = redis.Redis.from_url(redis_url)
    sid = created["session_id"]
    assert client.exists(meta_key(sid)) and client.hlen(blobs_key(sid)) > 0
    # Redis expires the session at the end of its lifetime even with no server running.
    for key in (meta_key(sid), blobs_key(sid)):
        assert 0 < client.ttl(key) <= 900
    assert not folder.exists() or not any(folder.iterdir())
    with running_server(folder, env=env, app=APP) as url:
        _the_flow_finishes(url, kit, created)
    assert not client.exists(meta_key(sid), blobs_key(sid))  # deleted at the end of play()
