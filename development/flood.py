"""The flood scenario of ``development.faults``: refused creations while a warm user decides.

Another process (standing for other machines) asks for session creations from
``FLOOD_THREADS`` threads, past the quota, in one of ``FLOOD_MODES``; meanwhile a warm user's
decisions are timed, and the CPU an accepted and a refused creation cost each part of the
cluster is measured.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
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


def library_creation(url: str, evaluation_keys: bytes) -> int:
    """One creation as the client library makes it; the status it ended with (201 or refusal).

    ``ServerSession.open`` asks ``GET /admission`` first and sends the keys only if admitted.
    """
    session = ServerSession(url, timeout=TIMEOUT, retry_seconds=0.0)
    try:
        session.open(evaluation_keys)
        session.delete()
        return 201
    except ServerError as refused:
        return int(refused.status_code or 0)
    finally:
        session.close()


def flood_process(url: str, keys_path: str, seconds: float, results: Any, mode: str) -> None:
    """In its own process (as other machines would be): threads asking for creations.

    ``mode`` "raw": each thread POSTs the evaluation keys again and again, whatever it is told;
    "library": each thread creates sessions with the client library, which asks first;
    "library-nice": the same at the lowest CPU priority (nice 19), standing for clients on other
    machines: on this machine's two cores it then takes CPU only when the cluster and the warm
    user leave some, so what remains of the slowdown is the cluster's own cost of refusing.
    """
    if mode.endswith("-nice"):
        os.nice(19)
        mode = mode.removesuffix("-nice")
    evaluation_keys = Path(keys_path).read_bytes()
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    def post() -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            while time.monotonic() < deadline:
                if mode == "library":
                    statuses.append(library_creation(url, evaluation_keys))
                    continue
                response = http.post(
                    "/sessions", content=evaluation_keys, headers={"Content-Type": OCTET_STREAM}
                )
                statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = os.times()
    results.put((statuses, times.user + times.system))  # and the flood's own CPU seconds


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
    "raw": "raw HTTP clients that upload the evaluation keys every time",
    "library": "clients of the library, which ask GET /admission first",
    "library-nice": "clients of the library at nice 19 (standing for other machines)",
}


def flood(run: Run, seconds: float, mode: str = "raw") -> dict[str, Any]:
    """Refused creations from 4 threads while a warm user decides; their cost.

    Args:
        run: the running cluster.
        seconds: how long the flood (and the measurement before it) lasts.
        mode: "raw", "library" or "library-nice" (``FLOOD_MODES``).
    """
    headers = {"Content-Type": OCTET_STREAM}
    http = httpx.Client(base_url=run.cluster.url, timeout=TIMEOUT)
    created: list[tuple[str, dict]] = []

    def accepted() -> None:
        created.append(open_session(http, run.keys))

    def refused() -> None:
        if mode.startswith("library"):
            status = library_creation(run.cluster.url, run.keys.evaluation_keys)
        else:
            response = http.post("/sessions", content=run.keys.evaluation_keys, headers=headers)
            status = response.status_code
        if status != 429:
            raise RuntimeError(f"expected a refusal, got {status}")

    warm = open_session(http, run.keys)
    decide(http, run.keys, *warm)
    accepted()  # the first creation pays one-time costs too
    cost_accepted = cpu_per_creation(run, accepted, CPU_SAMPLES)
    now_ms = int(time.time() * 1000)
    run.admin.zadd("fhe:quota:127.0.0.1", {f"flood-{n}": now_ms for n in range(QUOTA)})
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
    flooder.start()
    during = decision_times(run, warm, seconds)
    answers, flood_cpu = results.get(timeout=seconds + 300)
    flooder.join()
    refusals, statuses = len(answers), set(answers)
    run.admin.delete("fhe:quota:127.0.0.1")
    for session_id, auth in [*created, warm]:
        http.delete(f"/sessions/{session_id}", headers=auth)
    http.close()
    median_before, median_during = statistics.median(before), statistics.median(during)
    share = sum(cost_refused.values()) / sum(cost_accepted.values())
    return row(
        f"a {seconds:.0f} s flood of refused creations, {FLOOD_THREADS} threads of "
        f"{FLOOD_MODES[mode]}",
        f"429 at once ({refusals} refusals, statuses {sorted(statuses)}); a warm user's "
        f"decision median {median_before:.2f} s before, {median_during:.2f} s during "
        f"(x{median_during / median_before:.2f}; the flooding process itself used "
        f"{flood_cpu / seconds:.2f} of the {psutil.cpu_count()} cores); a refusal costs "
        f"{share:.1%} of the CPU of an accepted creation",
        "nothing",
        "none needed",
        refusals=refusals,
        statuses=sorted(statuses),
        decisions_before=len(before),
        decisions_during=len(during),
        median_before=median_before,
        median_during=median_during,
        cpu_accepted=cost_accepted,
        cpu_refused=cost_refused,
        refused_cpu_share=share,
        flood_cpu_seconds=flood_cpu,
    )
