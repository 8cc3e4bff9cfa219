"""The filesystem store alone (fhe_server.file_store) and the session quota, on a fake clock.

Expiry, refusal when full (no live session evicted), compare-and-set of the verdict, path
safety, the quota's sliding window, and one quota shared by two stores on one directory (as by
two worker processes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fhe_server.errors import (
    InvalidTokenError,
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
    TooManySessionsError,
)
from fhe_server.file_store import FileSessionStore
from fhe_server.protocol import Party
from fhe_server.runtime import SessionQuota

pytestmark = pytest.mark.slow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_store_expiry_refusal_when_full_compare_and_set_and_path_safety(tmp_path: Path) -> None:
    clock, removed = FakeClock(), []
    store = FileSessionStore(
        root=tmp_path / "store",
        ttl_seconds=60,
        max_sessions=2,
        disk_budget_bytes=10_000,
        on_remove=removed.append,
        clock=clock,
    )
    first, first_token = store.create(b"k" * 1000)
    clock.now += 10
    second, second_token = store.create(b"k" * 1000)
    clock.now += 10
    store.authenticate(first, first_token)  # first is now the most recently used
    # Full: a third session is refused, nobody is evicted; retry when second would expire.
    with pytest.raises(ServerBusyError) as full:
        store.create(b"k" * 1000)
    assert full.value.retry_after == 50 and full.value.status_code == 503
    assert set(store.session_ids()) == {first, second} and removed == []
    clock.now += 5
    store.authenticate(first, first_token)
    with pytest.raises(InvalidTokenError):
        store.authenticate(first, second_token)
    store.put_input(first, Party.bank, b"ciphertext")
    with pytest.raises(StepOutOfOrderError, match="applicant, credit_bureau"):
        store.read_inputs(first, list(Party))
    # Compare-and-set: a verdict computed from replaced inputs is never stored.
    _, version = store.read_inputs(first, [Party.bank])
    store.put_input(first, Party.bank, b"ciphertext 2")
    with pytest.raises(StepOutOfOrderError, match="changed during predict"):
        store.store_output(first, b"stale verdict", version)
    with pytest.raises(StepOutOfOrderError):
        store.read_output(first)
    store.store_output(first, b"verdict", version + 1)
    assert store.read_output(first) == b"verdict"
    # Expired sessions are purged to make room (second: idle since +10, first since +25).
    clock.now += 56
    third, _ = store.create(b"k" * 1000)
    assert set(store.session_ids()) == {first, third} and removed == [second]
    with pytest.raises(SessionNotFoundError):
        store.authenticate(second, second_token)
    clock.now += 30  # first: idle for 86 s, third for 30 s
    with pytest.raises(SessionNotFoundError):
        store.authenticate(first, first_token)
    assert first not in store.session_ids() and first in removed
    # A big session does not fit beside a live one (each counts as complete): refused, then
    # accepted once the live one is deleted, within the disk budget.
    with pytest.raises(ServerBusyError):
        store.create(b"k" * 9_000)
    store.delete(third)
    big, _ = store.create(b"k" * 9_000)
    assert store.session_ids() == [big] and store.disk_usage() <= 10_000
    for bad_id in ("..", "../" + big, big.upper(), big + "/", "", "x" * 32):
        with pytest.raises(SessionNotFoundError):
            store.authenticate(bad_id, "token")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no leftovers


def test_session_quota_sliding_window_and_failed_creations() -> None:
    clock = FakeClock()
    quota = SessionQuota(limit=2, window_seconds=100, exempt=["127.0.0.1"], clock=clock)
    for _ in range(2):
        with quota.admit("10.0.0.1"):
            clock.now += 10
    with pytest.raises(TooManySessionsError) as refused, quota.admit("10.0.0.1"):
        pass
    # The oldest creation (at +0) leaves the window at +100; it is now +20.
    assert refused.value.retry_after == 80 and refused.value.status_code == 429
    with quota.admit("10.0.0.2"):  # another client has its own quota
        pass
    for _ in range(5):  # an exempt address has none
        with quota.admit("127.0.0.1"):
            pass
    # A creation that fails gives its slot back.
    clock.now += 81  # +101: the first creation left the window
    with pytest.raises(ServerBusyError), quota.admit("10.0.0.1"):
        raise ServerBusyError("store full", retry_after=1)
    with quota.admit("10.0.0.1"):
        pass
    with pytest.raises(TooManySessionsError), quota.admit("10.0.0.1"):
        pass


def test_two_filesystem_stores_on_one_directory_share_the_session_quota(tmp_path: Path) -> None:
    # Two store objects on one directory stand for two worker processes (flock is per open file).
    stores = [
        FileSessionStore(root=tmp_path / "store", ttl_seconds=60, max_sessions=10,
                         disk_budget_bytes=10**6)
        for _ in range(2)
    ]  # fmt: skip
    quotas = [store.session_quota(limit=2, window_seconds=100) for store in stores]
    with quotas[0].admit("10.0.0.1"):
        pass
    with quotas[1].admit("10.0.0.1"):
        pass
    for quota in quotas:
        with pytest.raises(TooManySessionsError), quota.admit("10.0.0.1"):
            pass
    with quotas[1].admit("10.0.0.2"):
        pass
    # The periodic purge forgets addresses whose creations all left the window.
    quota_file = tmp_path / "store" / ".session_quota.json"
    assert sorted(json.loads(quota_file.read_text())) == ["10.0.0.1", "10.0.0.2"]
    stores[0].clock = quotas[0].clock = lambda: time.time() + 101
    stores[0].purge_expired()
    assert json.loads(quota_file.read_text()) == {}
