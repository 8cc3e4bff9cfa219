"""Helpers of the tests that run a real cluster (``tests/cluster/``): binaries, health, routing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fhe_server.cluster import Cluster, find_binary

WAIT_SECONDS = 60.0  # generous: both cores may be busy
TIMEOUT = httpx.Timeout(120.0)


def require_cluster_binaries() -> None:
    """Skip the calling module without redis-server or nginx; fail under REQUIRE_CLUSTER=1."""
    missing = [name for name in ("redis-server", "nginx") if find_binary(name) is None]
    if missing:
        reason = f"not installed: {', '.join(missing)} (apt-get install redis-server nginx)"
        if os.environ.get("REQUIRE_CLUSTER") == "1":
            raise RuntimeError(f"REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason, allow_module_level=True)


def health(url: str) -> dict[str, Any]:
    """GET /health, which must answer 200; return its body."""
    response = httpx.get(f"{url}/health", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def cached_keys(url: str) -> int:
    """How many prepared key sets a replica holds."""
    return int(health(url)["key_cache"]["size"])


def wait_until(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> float:
    """Poll ``condition`` every 0.1 s until it holds; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() < start + seconds, f"not within {seconds} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def routed_to(cluster: Cluster, session_id: str) -> int:
    """Index of the replica nginx sends this session to (read from nginx's X-FHE-Upstream)."""
    response = httpx.get(f"{cluster.url}/sessions/{session_id}/output", timeout=TIMEOUT)
    assert response.status_code == 401, response.text  # no token: answered by the replica
    upstream = response.headers["X-FHE-Upstream"].split(",")[-1].strip()
    return cluster.replica_ports.index(int(upstream.rsplit(":", 1)[1]))


def kill(cluster: Cluster, index: int) -> None:
    """SIGKILL a replica and wait for it to be gone."""
    process = cluster.replicas[index].process
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
