"""Scale-out benchmark: decisions per minute of one replica vs two replicas behind nginx.

Run from the repository root (needs redis-server and nginx; about 6 minutes)::

    python -m development.bench_cluster               # 40 s per phase
    python -m development.bench_cluster --seconds 5   # a quick look

For 1 and then 2 replicas (``fhe_server.cluster.Cluster``: Redis, single-worker replicas, nginx
hashing on the session id), ``--clients`` client threads send requests through nginx:

- warm: each client keeps one session (opened, uploaded and predicted once before the clock
  starts) and repeats a decision on it: PUT the three parties' ciphertexts, POST predict, GET the
  encrypted verdict, decrypt it;
- fresh: each decision is a new session: POST the evaluation keys, the same decision, DELETE.

Client key generation and encryption are done once, before the clock starts (they run on the
clients' machines, not on the server), so the figures are the servers' capacity. Reported per
phase: decisions per minute, the replicas' CPU seconds per decision (user + system, from
``psutil``; the decisions under way when the clock stops are finished and counted here only),
the cores the replicas obtained, key preparations (key-cache misses) per session, and errors;
plus Redis's memory per session and the time to write and read one evaluation-key blob in Redis.

Results go to ``<out>/bench_cluster_results.json`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis
from concrete import fhe

import settings
from backend import PartyPreprocessor
from contracts.wire import OCTET_STREAM, RETRY_AFTER_HEADER, bearer
from development.reference import clear_verdict
from fhe_server.cluster import Cluster

TIMEOUT = httpx.Timeout(300.0)
OCTET = {"Content-Type": OCTET_STREAM}


def default_profile() -> dict[str, dict[str, Any]]:
    """The page's default application: the data's typical numbers, first category of each field."""
    ranges = settings.field_ranges()

    def value(field: str) -> Any:
        if field in ranges:
            return ranges[field]["value"]
        if field in settings.CATEGORY_VALUES:
            return settings.CATEGORY_VALUES[field][0]
        return True  # the yes/no fields

    return {party: {f: value(f) for f in fields} for party, fields in settings.PARTY_FIELDS.items()}


class Keys:
    """One client key set, its evaluation keys, a profile's three ciphertexts and its verdict."""

    def __init__(self) -> None:
        """Generate the keys and encrypt the profile (before any clock starts)."""
        specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
        self.client = fhe.Client(specs)
        self.client.keygen(force=True)
        self.evaluation_keys = self.client.evaluation_keys.serialize()
        preprocessors = PartyPreprocessor.load_all()
        profile = default_profile()
        self.expected = int(clear_verdict(*(profile[p] for p in settings.PARTIES)))
        quantized = [preprocessors[p].transform(profile[p]) for p in settings.PARTIES]
        values = self.client.encrypt(*quantized, function_name="predict")
        self.ciphertexts = {
            party: value.serialize() for party, value in zip(settings.PARTIES, values, strict=True)
        }

    def verdict(self, data: bytes) -> int:
        """Decrypt an encrypted verdict."""
        decrypted = self.client.decrypt(fhe.Value.deserialize(data), function_name="predict")
        return int(np.asarray(decrypted).reshape(-1)[0])


def send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; a 503 is retried after its Retry-After."""
    while True:
        response = http.request(method, path, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get(RETRY_AFTER_HEADER, "1")))


def open_session(http: httpx.Client, keys: Keys) -> tuple[str, dict[str, str]]:
    """POST /sessions; return the id and the Authorization header."""
    response = send(http, "POST", "/sessions", content=keys.evaluation_keys, headers=OCTET)
    response.raise_for_status()
    body = response.json()
    return body["session_id"], bearer(body["token"])


def decide(http: httpx.Client, keys: Keys, session_id: str, auth: dict[str, str]) -> int:
    """Upload the three ciphertexts, predict, fetch and decrypt the verdict."""
    for party, data in keys.ciphertexts.items():
        response = send(
            http, "PUT", f"/sessions/{session_id}/inputs/{party}", content=data,
            headers={**auth, **OCTET},
        )  # fmt: skip
        response.raise_for_status()
    send(http, "POST", f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
    output = send(http, "GET", f"/sessions/{session_id}/output", headers=auth)
    output.raise_for_status()
    return keys.verdict(output.content)


def replica_cpu_seconds(cluster: Cluster) -> float:
    """User + system CPU seconds used so far by the replicas' processes."""
    total = 0.0
    for replica in cluster.replicas:
        if replica.pid is not None:
            times = psutil.Process(replica.pid).cpu_times()
            total += times.user + times.system
    return total


def key_cache(cluster: Cluster) -> dict[str, list[int]]:
    """Key-cache hits and misses of each replica."""
    caches = [
        httpx.get(f"{url}/health", timeout=TIMEOUT).json()["key_cache"]
        for url in cluster.replica_urls
    ]
    return {name: [int(cache[name]) for cache in caches] for name in ("hits", "misses")}


def run_phase(
    cluster: Cluster,
    clients: int,
    seconds: float,
    decision: Callable[[httpx.Client, int], int],
    expected: int,
) -> dict[str, Any]:
    """Run ``clients`` threads calling ``decision`` for ``seconds``; measure the replicas."""
    stop = threading.Event()
    counts = [0] * clients
    late = [0] * clients
    errors: list[str] = []

    def worker(index: int) -> None:
        with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
            while not stop.is_set():
                try:
                    verdict = decision(http, index)
                except (httpx.HTTPError, KeyError, ValueError) as error:
                    errors.append(repr(error))
                    continue
                if verdict != expected:
                    errors.append(f"wrong verdict {verdict}")
                if stop.is_set():
                    late[index] += 1  # finished after the clock stopped: CPU only
                    return
                counts[index] += 1

    cache_before, cpu_before = key_cache(cluster), replica_cpu_seconds(cluster)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    cpu_in_window = replica_cpu_seconds(cluster) - cpu_before
    for thread in threads:
        thread.join()
    # The decisions under way at the stop are finished, so that the CPU of every started
    # decision is counted once.
    cpu = replica_cpu_seconds(cluster) - cpu_before
    cache_after = key_cache(cluster)
    decisions, finished = sum(counts), sum(counts) + sum(late)
    return {
        "seconds": round(elapsed, 1),
        "decisions": decisions,
        "decisions_per_minute": round(decisions * 60 / elapsed, 1),
        "replica_cores_used": round(cpu_in_window / elapsed, 2),
        "replica_cpu_seconds_per_decision": round(cpu / finished, 3) if finished else None,
        "key_preparations": sum(cache_after["misses"]) - sum(cache_before["misses"]),
        # FHE runs on warm keys, per replica: how the sessions spread over the replicas.
        "key_cache_hits_per_replica": [
            after - before
            for after, before in zip(cache_after["hits"], cache_before["hits"], strict=True)
        ],
        "errors": errors[:5],
        "error_count": len(errors),
    }


def bench(
    replicas: int, clients: int, seconds: float, keys: Keys, expected: int, measure_redis: bool
) -> dict[str, Any]:
    """Warm and fresh phases against a new cluster of ``replicas`` replicas."""
    env = {"FHE_KEY_CACHE_SIZE": str(clients), "FHE_MAX_WAITING_FHE": str(2 * clients)}
    with Cluster(replicas=replicas, env=env) as cluster:
        # Warm: one session per client, prepared once before the clock starts.
        sessions = []
        with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
            for _ in range(clients):
                session_id, auth = open_session(http, keys)
                decide(http, keys, session_id, auth)
                sessions.append((session_id, auth))
        warm = run_phase(
            cluster,
            clients,
            seconds,
            lambda http, i: decide(http, keys, *sessions[i]),
            expected,
        )
        warm["sessions"] = clients
        warm["key_preparations_per_session"] = round(warm["key_preparations"] / clients, 2)
        with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
            for session_id, auth in sessions:
                send(http, "DELETE", f"/sessions/{session_id}", headers=auth)

        opened = [0]  # sessions opened during the fresh phase (finished or not)
        opened_lock = threading.Lock()

        def fresh_decision(http: httpx.Client, index: int) -> int:
            session_id, auth = open_session(http, keys)
            with opened_lock:
                opened[0] += 1
            try:
                return decide(http, keys, session_id, auth)
            finally:
                send(http, "DELETE", f"/sessions/{session_id}", headers=auth)

        fresh = run_phase(cluster, clients, seconds, fresh_decision, expected)
        fresh["sessions"] = opened[0]
        fresh["key_preparations_per_session"] = (
            round(fresh["key_preparations"] / opened[0], 2) if opened[0] else None
        )
        rss = [psutil.Process(r.pid).memory_info().rss for r in cluster.replicas if r.pid]
        result = {
            "replicas": replicas,
            "clients": clients,
            "warm": warm,
            "fresh": fresh,
            "replica_rss_bytes_at_end": rss,
        }
        if measure_redis:
            result["redis_blob"] = redis_blob_costs(cluster.redis_url, keys)
        return result


def redis_blob_costs(redis_url: str, keys: Keys, repeats: int = 5) -> dict[str, Any]:
    """Redis memory per stored evaluation-key blob and the time to write and read one."""
    client = redis.Redis.from_url(redis_url)
    before = int(client.info("memory")["used_memory"])
    writes, reads = [], []
    for index in range(repeats):
        start = time.perf_counter()
        client.set(f"bench:keys:{index}", keys.evaluation_keys)
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert client.get(f"bench:keys:{index}") == keys.evaluation_keys
        reads.append(time.perf_counter() - start)
    used = int(client.info("memory")["used_memory"]) - before
    client.delete(*(f"bench:keys:{index}" for index in range(repeats)))
    client.close()
    return {
        "blob_bytes": len(keys.evaluation_keys),
        "redis_memory_per_blob_bytes": used // repeats,
        "write_seconds_median": round(float(np.median(writes)), 4),
        "read_seconds_median": round(float(np.median(reads)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--out", type=Path, default=settings.DEVELOPMENT_DIR)
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()
    keys = Keys()
    runs = [bench(n, args.clients, args.seconds, keys, keys.expected, n == 1) for n in (1, 2)]
    one, two = (run["warm"]["decisions_per_minute"] for run in runs)
    results = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python -m development.bench_cluster", *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "runs": runs,
        "warm_speedup_two_vs_one": round(two / one, 2) if one else None,
        "redis_blob": runs[0].pop("redis_blob"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_cluster_results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    header = ("replicas", "phase", "dec/min", "CPU s/dec", "cores", "prep/sess", "err")
    print("\n" + " ".join(f"{name:>9}" for name in header))
    for run in runs:
        for phase in ("warm", "fresh"):
            row = run[phase]
            print(
                f"{run['replicas']:>9} {phase:>9} {row['decisions_per_minute']:>9} "
                f"{row['replica_cpu_seconds_per_decision']!s:>9} {row['replica_cores_used']:>9} "
                f"{row['key_preparations_per_session']!s:>9} {row['error_count']:>9}"
            )
    print(f"warm speed-up, 2 vs 1 replica: {results['warm_speedup_two_vs_one']} x (target 1.7 x)")
    print(f"Redis, one evaluation-key blob: {results['redis_blob']}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
