"""The page's limits without a browser (page/limits.py): rates, admissions, sessions, keys.

The per-client rate limiter's sliding window, limits that fit where the page listens, checks
that admit their step once, the client's address behind proxies, the session registry's cap
and expiry, and the key folders of a dead process removed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import app
import settings
from page.limits import Admissions, LimitExceeded, RateLimiter
from page.strings import tr
from tests.support.page_handlers import (
    EN_REQUEST,
    ZH_REQUEST,
    make_request,
)


def test_rate_limiter_counts_per_client_in_a_sliding_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=2, window=10.0, clock=lambda: now[0])
    limiter.acquire("a", "err_rate_steps")
    limiter.acquire("a", "err_rate_steps")
    limiter.acquire("b", "err_rate_steps")
    with pytest.raises(LimitExceeded) as caught:
        limiter.acquire("a", "err_rate_steps")
    assert caught.value.key == "err_rate_steps" and caught.value.values == {"seconds": 10}
    now[0] = 10.5
    limiter.acquire("a", "err_rate_steps")


@pytest.mark.parametrize(
    ("setting", "host", "proxies", "local"),
    [
        ("auto", "127.0.0.1", 0, True),
        ("auto", "127.0.1.1", 0, True),
        ("auto", "localhost", 0, True),
        ("auto", "::1", 0, True),
        ("auto", "127.0.0.1", 1, False),  # a proxy on the same host makes the page public
        ("auto", "0.0.0.0", 0, False),
        ("auto", "192.168.1.5", 0, False),
        ("public", "127.0.0.1", 0, False),
        ("local", "0.0.0.0", 0, True),
    ],
)
def test_limits_fit_where_the_page_listens(
    setting: str, host: str, proxies: int, local: bool, tmp_path: Path
) -> None:
    page_settings = settings.ClientSettings(
        client_keys_dir=tmp_path / "keys",
        page_limits=setting,
        page_host=host,
        page_trusted_proxies=proxies,
        page_keygen_per_client=3,
    )
    runtime = app.PageRuntime(page_settings)
    request = make_request(EN_REQUEST)
    for _ in range(10 if local else 3):
        runtime.admit("keygen", request)
    if local:
        assert runtime.limits_text("en", request) == tr("en", "limits_local", host=host)
        assert "本机" in runtime.limits_text("zh", request)
    else:
        with pytest.raises(LimitExceeded):
            runtime.admit("keygen", request)
        assert "0 key generations" in runtime.limits_text("en", request)


def test_admissions_are_used_once_and_forgotten_when_old() -> None:
    now = [0.0]
    admissions = Admissions(max_age=60.0, clock=lambda: now[0])
    admissions.add("tab", "steps")
    admissions.add("tab", "steps")
    assert admissions.take("tab", "steps") and admissions.take("tab", "steps")
    assert not admissions.take("tab", "steps") and not admissions.take("other", "steps")
    admissions.add("tab", "keygen")
    admissions.add("tab", "steps")  # after a take emptied the list: no error
    now[0] = 61.0
    assert not admissions.take("tab", "keygen")  # too old
    admissions.add("tab", "steps")
    assert admissions.take("tab", "steps") and not admissions.take("tab", "steps")


def test_limits_line_counts_down_and_a_check_admits_its_step_once(tmp_path: Path) -> None:
    page_settings = settings.ClientSettings(
        client_keys_dir=tmp_path / "keys",
        page_limits="public",
        page_keygen_per_client=2,
        page_steps_per_client=5,
        page_rate_window_seconds=600,
    )
    runtime = app.PageRuntime(page_settings)
    request = make_request(ZH_REQUEST, session_hash="tab-a")
    left = runtime.limits_text("zh", request)
    assert "接下来的 10 分钟内还可以生成密钥 2 次" in left and "执行步骤 5 次" in left
    runtime.admit("steps", request)  # the check
    runtime.use_admission("steps", request)  # its step: not counted again
    assert "执行步骤 4 次" in runtime.limits_text("zh", request)
    runtime.use_admission("steps", request)  # a step called without its check counts itself
    assert "Left for your address" in runtime.limits_text("en", request)
    assert "3 steps" in runtime.limits_text("en", request)


@pytest.mark.parametrize(
    ("forwarded", "trusted", "expected"),
    [
        (None, 0, "10.0.0.9"),
        ("1.2.3.4", 0, "10.0.0.9"),  # not behind a proxy: the header is anyone's to write
        ("1.2.3.4", 1, "1.2.3.4"),
        ("6.6.6.6, 1.2.3.4", 1, "1.2.3.4"),  # the client wrote the first entry itself
        ("6.6.6.6, 1.2.3.4, 10.1.1.1", 2, "1.2.3.4"),
        ("1.2.3.4", 2, "10.0.0.9"),  # fewer entries than proxies: not trusted
    ],
)
def test_client_address(forwarded: str | None, trusted: int, expected: str) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    assert app.client_address(headers, "10.0.0.9", trusted) == expected


class FakeClient:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_session_registry_caps_and_expires_sessions() -> None:
    now = [0.0]
    registry = app.SessionRegistry(
        max_sessions=2, ttl=100.0, no_heartbeat_ttl=10.0, clock=lambda: now[0]
    )
    first, second = FakeClient(), FakeClient()
    registry.reserve("s1")
    registry.register("s1", first)
    registry.reserve("s2")
    with pytest.raises(LimitExceeded) as caught:
        registry.reserve("s3")
    assert caught.value.key == "err_page_full" and caught.value.values == {"limit": 2}
    registry.register("s2", second)
    registry.reserve("s1")  # a session generating new keys keeps its own slot
    registry.release("s1")
    registry.heartbeat_opened("s2")
    now[0] = 11.0
    assert registry.expire() == 1  # s1 never opened a heartbeat
    assert first.closed == 1 and second.closed == 0 and len(registry) == 1
    assert registry.holds("s2", second) and not registry.holds("s1", first)
    now[0] = 110.0
    assert registry.expire() == 0  # s2 was used at 11 s
    now[0] = 111.1
    assert registry.expire() == 1 and second.closed == 1


def test_key_folders_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    living = app.KeyFolders(keys_dir)
    living_root = living.open()
    (living_root / "session").mkdir()
    # A folder of an older layout and one whose owner died (its lock is free).
    (keys_dir / "0123abcd").mkdir()
    (keys_dir / "0123abcd" / "keys").write_bytes(b"secret")
    dead = keys_dir / "page-1-dead"
    dead.mkdir()
    (dead / ".owner.lock").touch()
    second = app.KeyFolders(keys_dir)
    second.open()
    assert not (keys_dir / "0123abcd").exists() and not dead.exists()
    assert (living_root / "session").is_dir()  # its owner holds the lock
    living.close()
    second.close()
    assert list(keys_dir.iterdir()) == []
