"""The running cluster of ``development.faults`` and what its scenarios share.

``Run`` holds the cluster, a Redis admin connection, the key sets and the figures gathered so
far; ``row`` is one line of the README's Faults table; ``later`` and ``wait_for`` time a fault.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from backend import CreditScoringClient, generate_key_file
from development.bench_cluster import Keys, default_profile
from fhe_server.cluster import Cluster

TIMEOUT = httpx.Timeout(300.0)
FAULT_SECONDS = 5.0
QUOTA = 1000  # sessions per client and window: only the flood fills it (on purpose)
MB = 1024 * 1024


class Run:
    """The running cluster, a Redis admin connection, keys and the figures gathered so far."""

    def __init__(self, cluster: Cluster, workdir: Path):
        """Generate the key sets used by every scenario."""
        self.cluster = cluster
        self.admin = redis.Redis.from_url(cluster.redis_url, socket_timeout=30)
        self.keys = Keys()  # raw HTTP clients: evaluation keys and one profile's ciphertexts
        self.key_dir = workdir / "library-keys"
        self.library_keys = generate_key_file(self.key_dir)
        self.workdir = workdir
        self.profile = default_profile()
        self.wrong_verdicts = 0
        self.clients = 0

    def client(self, **options: Any) -> CreditScoringClient:
        """A library client through nginx whose key generation copies one saved key set."""
        self.clients += 1

        def copy_keys(key_dir: Path) -> bytes:
            shutil.copytree(self.key_dir, key_dir, dirs_exist_ok=True)
            return self.library_keys

        return CreditScoringClient(
            self.cluster.url,
            key_dir=self.workdir / f"client-{self.clients}",
            timeout=TIMEOUT,
            key_generator=copy_keys,
            **options,
        )

    def send_all(self, client: CreditScoringClient) -> None:
        """Open a session and send the three parties' inputs."""
        client.generate_keys()
        client.send_applicant(**self.profile["applicant"])
        client.send_bank(**self.profile["bank"])
        client.send_credit_bureau(**self.profile["credit_bureau"])

    def check(self, client: CreditScoringClient) -> None:
        """Decrypt the verdict and count it if wrong."""
        if int(client.decrypt_verdict()) != self.keys.expected:
            self.wrong_verdicts += 1

    def health(self, index: int) -> dict[str, Any]:
        """A replica's /health."""
        return httpx.get(f"{self.cluster.replica_urls[index]}/health", timeout=TIMEOUT).json()

    def heal(self) -> None:
        """Redis writable, unpaused, unbounded."""
        self.admin.execute_command("CLIENT", "UNPAUSE")
        self.admin.execute_command("REPLICAOF", "NO", "ONE")
        self.admin.config_set("maxmemory", 0)


def later(seconds: float, action: Callable[[], Any]) -> threading.Timer:
    """Run ``action`` in ``seconds`` (started now)."""
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def wait_for(condition: Callable[[], bool], limit: float = 120.0) -> float:
    """Seconds until ``condition`` holds (polled every 0.1 s), at most ``limit``."""
    start = time.monotonic()
    while not condition() and time.monotonic() - start < limit:
        time.sleep(0.1)
    return time.monotonic() - start


def row(fault: str, sees: str, lost: str, recovery: str, **details: Any) -> dict[str, Any]:
    """One line of the table, with its measured details."""
    return {"fault": fault, "sees": sees, "lost": lost, "recovery": recovery, **details}
