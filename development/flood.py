"""The flood scenario of ``development.faults``: refused creations while a warm user decides.

Another process (standing for other machines) asks for session creations from
``FLOOD_THREADS`` threads, past the quota, in one of ``FLOOD_MODES``; meanwhile a warm user's
decisions are timed, and the CPU an accepted and a refused creation cost each part of the
cluster is measured. A flood comes from one client address, which nginx's limit on requests for
a new session (``FHE_CREATION_REQUESTS_PER_SECOND``) slows down, or is spread over
``SPREAD_ADDRESSES`` loopback addresses, each of them under that limit, as a flood from many
machines would be: then every request reaches the replicas' admission check.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from contracts.wire import OCTET_STREAM
from development.bench_cluster import decide, open_session
from development.fault_run import QUOTA, TIMEOUT, Run, row
from fhe_client.errors import ServerError
from fhe_client.transport import ServerSession

FLOOD_THREADS = 4
CPU_SAMPLES = 30  # creations measured for the CPU of an accepted and of a refused one
# The client addresses of a spread flood (any 127/8 address reaches a loopback listener), each
# with its quota used up; one request in 200 per address stays far below nginx's limit.
SPREAD_ADDRESSES = tuple(f"127.0.0.{n}" for n in range(10, 210))
ONE_ADDRESS = ("127.0.0.1",)
NEWCOMER_ADDRESS = "127.0.0.250"  # a client opening a session during the flood


def cpu_seconds(run: Run) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the replicas, Redis and nginx."""
    parts = {
        "replicas": [r.pid for r in run.cluster.replicas],
        "redis": [run.cluster.redis.pid],
        "nginx": [run.cluster.nginx.pid],
    }
    totals = {}
    for name, pids in parts.items():
        total = 0.0
        for pid in pids:
            process = psutil.Process(pid)
            for each in (process, *process.children(recursive=True)):
                times = each.cpu_times()
                total += times.user + times.system
        totals[name] = total
    return totals


def cpu_per_creation(run: Run, create: Callable[[], None], count: int) -> dict[str, float]:
    """CPU seconds per call of ``create`` in each part of the cluster, idle use taken out.

    The parts' idle use (the replicas' listeners, Redis's timers) is measured for as long as
    the calls took, just after them, and subtracted.
    """
    before, start = cpu_seconds(run), time.monotonic()
    for _ in range(count):
        create()
    after, elapsed = cpu_seconds(run), time.monotonic() - start
    time.sleep(elapsed)
    idle = cpu_seconds(run)
    return {
        name: max(0.0, (after[name] - before[name]) - (idle[name] - after[name])) / count
        for name in after
    }


def transport_from(address: str) -> httpx.HTTPTransport:
    """An httpx transport whose connections leave from the client address ``address``."""
    return httpx.HTTPTransport(local_address=address)


def library_creation(url: str, evaluation_keys: bytes, address: str = ONE_ADDRESS[0]) -> int:
    """One creation as the client library makes it; the status it ended with (201 or refusal).

    ``ServerSession.open`` asks ``GET /admission`` first and sends the keys only if admitted.

    Args:
        url: the cluster's URL.
        evaluation_keys: the keys the creation would upload.
        address: the client address the request leaves from.
    """
    session = ServerSession(
        url, transport=transport_from(address), timeout=TIMEOUT, retry_seconds=0.0
    )
    try:
        session.open(evaluation_keys)
        session.delete()
        return 201
    except ServerError as refused:
        return int(refused.status_code or 0)
    finally:
        session.close()


def newcomer_creation(url: str, evaluation_keys: bytes) -> tuple[int, float]:
    """A client that is not flooding (an address of its own) opens and closes one session.

    Returns:
        The status it ended with (201: opened) and the seconds it took.
    """
    start = time.monotonic()
    status = library_creation(url, evaluation_keys, NEWCOMER_ADDRESS)
    return status, time.monotonic() - start


class Creations:
    """Session creations the way a flood ``mode`` makes them, each from the next of its addresses.

    Raw clients keep one connection pool per address; the library opens a session of its own
    for every creation, as ``library_creation`` does.
    """

    def __init__(self, url: str, evaluation_keys: bytes, mode: str) -> None:
        """Prepare the addresses (and, for raw clients, one httpx client each) of ``mode``."""
        self.url = url
        self.evaluation_keys = evaluation_keys
        self.addresses = SPREAD_ADDRESSES if mode.endswith("-spread") else ONE_ADDRESS
        self.raw_clients = (
            {
                address: httpx.Client(
                    base_url=url, timeout=TIMEOUT, transport=transport_from(address)
                )
                for address in self.addresses
            }
            if mode.startswith("raw")
            else {}
        )
        self._turns = itertools.count()

    def ask(self) -> int:
        """One creation from the next address; the status it ended with."""
        address = self.addresses[next(self._turns) % len(self.addresses)]
        if not self.raw_clients:
            return library_creation(self.url, self.evaluation_keys, address)
        response = self.raw_clients[address].post(
            "/sessions", content=self.evaluation_keys, headers={"Content-Type": OCTET_STREAM}
        )
        return response.status_code

    def close(self) -> None:
        """Close the raw clients' connections."""
        for client in self.raw_clients.values():
            client.close()


def flood_process(url: str, keys_path: str, seconds: float, results: Any, mode: str) -> None:
    """In its own process (as other machines would be): threads asking for creations.

    ``mode`` "raw": each thread POSTs the evaluation keys again and again, whatever it is told;
    "library": each thread creates sessions with the client library, which asks first; with
    "-spread", each request leaves from the next of ``SPREAD_ADDRESSES``, else all from one.
    """
    creations = Creations(url, Path(keys_path).read_bytes(), mode)
    answers: list[tuple[int, float]] = []  # each request's status and seconds
    deadline = time.monotonic() + seconds

    def ask() -> None:
        while time.monotonic() < deadline:
            start = time.monotonic()
            status = creations.ask()
            answers.append((status, time.monotonic() - start))

    threads = [threading.Thread(target=ask) for _ in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    creations.close()
    times = os.times()
    results.put((answers, times.user + times.system))  # and the flood's own CPU seconds


def decision_times(run: Run, session: tuple[str, dict], seconds: float) -> list[float]:
    """A warm user's decisions for ``seconds``: each one's duration."""
    times = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=run.cluster.url, timeout=TIMEOUT) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            if decide(http, run.keys, *session) != run.keys.expected:
                run.wrong_verdicts += 1
            times.append(time.perf_counter() - start)
    return times


FLOOD_MODES = {
    "library": "clients of the library (they ask GET /admission first) from one address",
    "raw": "raw HTTP clients uploading the keys every time, from one address",
    "library-spread": "clients of the library spread over 200 addresses",
    "raw-spread": "raw HTTP clients uploading the keys every time, spread over 200 addresses",
}


def fill_quotas(run: Run, addresses: Sequence[str]) -> None:
    """Use up the session quota of every client address in ``addresses``."""
    now_ms = int(time.time() * 1000)
    with run.admin.pipeline(transaction=False) as pipe:
        for address in addresses:
            pipe.zadd(f"fhe:quota:{address}", {f"flood-{n}": now_ms for n in range(QUOTA)})
        pipe.execute()


def flood(run: Run, seconds: float, mode: str = "raw") -> dict[str, Any]:
    """Refused creations from 4 threads while a warm user decides; their cost.

    Args:
        run: the running cluster.
        seconds: how long the flood (and the measurement before it) lasts.
        mode: one of ``FLOOD_MODES``.
    """
    http = httpx.Client(base_url=run.cluster.url, timeout=TIMEOUT)
    creations = Creations(run.cluster.url, run.keys.evaluation_keys, mode)
    created: list[tuple[str, dict]] = []

    def accepted() -> None:
        created.append(open_session(http, run.keys))

    def refused() -> None:
        status = creations.ask()
        if status != 429:
            raise RuntimeError(f"expected a refusal, got {status}")

    warm = open_session(http, run.keys)
    decide(http, run.keys, *warm)
    accepted()  # the first creation pays one-time costs too
    cost_accepted = cpu_per_creation(run, accepted, CPU_SAMPLES)
    fill_quotas(run, creations.addresses)
    for _ in range(5):  # the first refusals pay one-time costs (imports, connections)
        refused()
    cost_refused = cpu_per_creation(run, refused, CPU_SAMPLES)
    before = decision_times(run, warm, seconds)
    keys_path = run.workdir / "evaluation_keys.bin"
    keys_path.write_bytes(run.keys.evaluation_keys)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    flooder = context.Process(
        target=flood_process, args=(run.cluster.url, str(keys_path), seconds, results, mode)
    )
    newcomer_before = newcomer_creation(run.cluster.url, run.keys.evaluation_keys)
    newcomer_during: list[tuple[int, float]] = []
    probe = threading.Timer(
        seconds / 2,
        lambda: newcomer_during.append(
            newcomer_creation(run.cluster.url, run.keys.evaluation_keys)
        ),
    )
    flooder.start()
    probe.start()
    during = decision_times(run, warm, seconds)
    probe.join()
    answers, flood_cpu = results.get(timeout=seconds + 300)
    flooder.join()
    run.admin.delete(*(f"fhe:quota:{address}" for address in creations.addresses))
    for session_id, auth in [*created, warm]:
        http.delete(f"/sessions/{session_id}", headers=auth)
    http.close()
    creations.close()
    statuses = sorted({status for status, _ in answers})
    answer_median = statistics.median(took for _, took in answers)
    (status_before, took_before), (status_during, took_during) = (
        newcomer_before,
        *(newcomer_during or [(0, math.nan)]),
    )
    if (status_before, status_during) != (201, 201):
        raise RuntimeError(f"a newcomer's session was refused: {status_before}, {status_during}")
    median_before, median_during = statistics.median(before), statistics.median(during)
    share = sum(cost_refused.values()) / sum(cost_accepted.values())
    return row(
        f"a {seconds:.0f} s flood of refused creations, {FLOOD_THREADS} threads of "
        f"{FLOOD_MODES[mode]}",
        f"{len(answers)} refusals ({len(answers) / seconds:.1f} per s, statuses {statuses}, "
        f"each answered in {answer_median:.2f} s, median); a warm user's decision median "
        f"{median_before:.2f} s before, {median_during:.2f} s during "
        f"(x{median_during / median_before:.2f}; the flooding process itself used "
        f"{flood_cpu / seconds:.2f} of the {psutil.cpu_count()} cores); a refusal costs "
        f"{share:.1%} of the CPU of an accepted creation; a new client's session took "
        f"{took_during:.2f} s to open ({took_before:.2f} s before)",
        "nothing",
        "none needed",
        refusals=len(answers),
        statuses=statuses,
        refusal_answer_median=answer_median,
        decisions_before=len(before),
        decisions_during=len(during),
        median_before=median_before,
        median_during=median_during,
        cpu_accepted=cost_accepted,
        cpu_refused=cost_refused,
        refused_cpu_share=share,
        flood_cpu_seconds=flood_cpu,
        newcomer_seconds_before=took_before,
        newcomer_seconds_during=took_during,
    )
