"""Faults of the cluster, one at a time: what a client sees, what is lost, how long recovery takes.

Run from the repository root (needs redis-server and nginx; about 3 minutes)::

    python -m development.faults                      # a 40 s flood phase, as in issue 22
    python -m development.faults --flood-seconds 10   # a quick look

Starts ``fhe_server.cluster.Cluster`` (Redis with persistence off, two single-worker replicas,
nginx) and injects each fault for real while clients of the library (``CreditScoringClient``)
and raw HTTP clients go through nginx:

- Redis full: ``CONFIG SET maxmemory 1`` (noeviction) until the memory is given back;
- Redis read-only: ``REPLICAOF`` a master that does not exist, for ``FAULT_SECONDS``;
- Redis paused: ``CLIENT PAUSE`` for ``FAULT_SECONDS``;
- Redis stopped for ``FAULT_SECONDS``, then started again empty;
- a replica SIGKILLed in the middle of a predict (then started again);
- a flood of creations that the quota refuses, from 4 threads of another process, while a warm
  user decides (run first, on idle replicas): by clients of the library (they ask
  ``GET /admission`` and upload nothing when refused), the same at nice 19 (standing for clients
  on other machines), and by raw clients that upload the keys every time.

Prints the README's "Faults" table and writes ``<out>/faults_results.json`` with the details,
among them the answers 500 nginx logged (must be 0) and the wrong verdicts (must be 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

import settings
from backend import CreditScoringClient, ServerBusyError, generate_key_file, wait_while_busy
from contracts.wire import OCTET_STREAM
from development.bench_cluster import Keys, decide, default_profile, open_session
from fhe_client.errors import ServerError
from fhe_client.transport import ServerSession
from fhe_server.cluster import Cluster, free_port

TIMEOUT = httpx.Timeout(300.0)
FAULT_SECONDS = 5.0
FLOOD_THREADS = 4
QUOTA = 1000  # sessions per client and window: only the flood fills it (on purpose)
MB = 1024 * 1024
CPU_SAMPLES = 30  # creations measured for the CPU of an accepted and of a refused one


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


# ---------------------------------------------------------------------------------------------
# The faults
# ---------------------------------------------------------------------------------------------
def full_redis(run: Run) -> dict[str, Any]:
    """Redis at maxmemory: reads and deletes work, writes get 503, a waiting client gets in."""
    user = run.client()
    run.send_all(user)
    user.predict()
    run.admin.config_set("maxmemory-policy", "noeviction")
    run.admin.config_set("maxmemory", 1)
    run.check(user)  # GET output while full
    try:
        user.send_bank(**run.profile["bank"])
        write = "accepted"
    except ServerBusyError as busy:
        write = f"{busy.status_code}, Retry-After {busy.retry_after:g} s"
    session_id = user.session_id
    user.close()  # DELETE while full
    deleted = run.admin.exists(f"fhe:session:{session_id}") == 0
    newcomer, outcome = run.client(), {}
    waiter = threading.Thread(
        target=lambda: outcome.update(waited=wait_while_busy(newcomer.generate_keys).waited)
    )
    waiter.start()
    time.sleep(FAULT_SECONDS)
    healed = time.monotonic()
    run.heal()
    waiter.join()
    recovery = time.monotonic() - healed
    newcomer.close()
    return row(
        "Redis full (`maxmemory`, noeviction)",
        f"reading the verdict works; an upload {write}; DELETE "
        f"{'works' if deleted else 'FAILED'}; a new session waits "
        f"(`wait_while_busy` waited {outcome['waited']:.1f} s)",
        "nothing",
        f"{recovery:.1f} s after memory is freed (the next poll)",
        write=write,
        delete_worked=deleted,
        waited=outcome["waited"],
        recovery_seconds=recovery,
    )


def redis_fault(run: Run, name: str, start: Callable[[], Any], stop: Callable[[], Any]) -> dict:
    """A library client's upload and predict while Redis is read-only or paused."""
    user = run.client()
    run.send_all(user)
    before = time.perf_counter()
    user.predict()
    normal = time.perf_counter() - before
    start()
    timer = later(FAULT_SECONDS, stop)
    began = time.perf_counter()
    user.send_bank(**run.profile["bank"])
    user.predict()
    during = time.perf_counter() - began
    timer.join()
    run.check(user)
    user.close()
    return row(
        name,
        f"a delay: upload + predict took {during:.1f} s (normally {normal:.1f} s), no error",
        "nothing",
        f"{max(0.0, during - FAULT_SECONDS):.1f} s after the fault ends",
        fault_seconds=FAULT_SECONDS,
        seconds_during=during,
        predict_seconds_normally=normal,
    )


def replica_rss_mb(run: Run) -> list[float]:
    """Resident memory of each replica (MB)."""
    return [psutil.Process(r.pid).memory_info().rss / MB for r in run.cluster.replicas if r.pid]


def redis_restarted_empty(run: Run) -> dict[str, Any]:
    """Redis stopped, then started empty: sessions lost; replicas drop their keys."""
    idle = replica_rss_mb(run)
    with httpx.Client(base_url=run.cluster.url, timeout=TIMEOUT) as http:
        for _ in range(4):  # prepared keys on the replicas
            decide(http, run.keys, *open_session(http, run.keys))
    loaded = replica_rss_mb(run)
    user = run.client(resume_lost_sessions=True)
    run.send_all(user)
    run.cluster.redis.stop()
    degraded = wait_for(lambda: all(run.health(i)["status"] == "degraded" for i in (0, 1)))
    began = time.perf_counter()
    done = threading.Thread(target=user.predict)
    done.start()
    time.sleep(FAULT_SECONDS)
    run.cluster.start_redis()
    restarted = time.monotonic()
    recovered = wait_for(
        lambda: (
            all(run.health(i)["status"] == "ok" for i in (0, 1))
            and all(run.health(i)["key_cache"]["size"] == 0 for i in (0, 1))
        )
    )
    done.join()
    flow = time.perf_counter() - began
    run.check(user)
    user.close()
    rss_after = replica_rss_mb(run)
    memory_back = time.monotonic() - restarted
    return row(
        "Redis stopped 5 s, restarted empty",
        f'/health "degraded" within {degraded:.1f} s; 503 (transient) while down, retried by '
        f"the library; then 404: with `resume_lost_sessions` the flow finished in {flow:.1f} s",
        "every session (persistence off); replicas drop their prepared keys",
        f"{recovered:.1f} s after the restart (health ok, keys dropped); replica memory "
        f"{sum(loaded):.0f} MB -> {sum(rss_after):.0f} MB (idle {sum(idle):.0f} MB) "
        f"{memory_back:.0f} s after the restart",
        degraded_seconds=degraded,
        recovered_seconds=recovered,
        flow_seconds=flow,
        rss_idle_mb=idle,
        rss_loaded_mb=loaded,
        rss_after_mb=rss_after,
    )


def replica_killed_mid_predict(run: Run) -> dict[str, Any]:
    """SIGKILL the replica computing a predict; the library's caller sees a delay."""
    user = run.client()
    run.send_all(user)
    before = time.perf_counter()
    user.predict()
    normal = time.perf_counter() - before
    route = httpx.get(f"{run.cluster.url}/sessions/{user.session_id}/output", timeout=TIMEOUT)
    port = int(route.headers["X-FHE-Upstream"].rsplit(":", 1)[1])
    target = run.cluster.replica_ports.index(port)
    outcome: dict[str, Any] = {}

    def predict() -> None:
        start = time.perf_counter()
        try:
            user.predict()
            outcome["seconds"] = time.perf_counter() - start
        except Exception as error:  # reported in the table
            outcome["error"] = repr(error)

    worker = threading.Thread(target=predict)
    worker.start()
    wait_for(lambda: run.health(target)["fhe_queue"]["admitted"] > 0 or not worker.is_alive())
    process = run.cluster.replicas[target].process
    assert process is not None
    process.kill()
    process.wait()
    worker.join()
    run.check(user)
    user.close()
    started = time.monotonic()
    run.cluster.start_replica(target)
    back = time.monotonic() - started
    sees = (
        f"a delay: predict took {outcome['seconds']:.1f} s (normally {normal:.1f} s), no error"
        if "seconds" in outcome
        else f"an error: {outcome.get('error')}"
    )
    return row(
        "a replica SIGKILLed mid-predict",
        sees,
        "nothing (nginx repeats the predict on the other replica)",
        f"{back:.0f} s to start the replica again (model loading); served meanwhile",
        normal_seconds=normal,
        **outcome,
    )


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

    ``mode`` "raw": each thread POSTs the 15.4 MB of keys again and again, whatever it is told;
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
    "raw": "raw HTTP clients that upload the 15.4 MB keys every time",
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


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def answers_500(cluster: Cluster) -> int:
    """How many answers nginx logged with status 500."""
    log = (cluster.workdir / "access.log").read_text(encoding="utf-8", errors="replace")
    return sum(1 for line in log.splitlines() if '" 500 ' in line)


def run_all(flood_seconds: float, workdir: Path) -> dict[str, Any]:
    """Start the cluster, run every fault, return the rows and totals."""
    env = {
        "FHE_KEY_CACHE_SIZE": "3",
        "FHE_STORE_DIR": str(workdir / "unused"),
        "FHE_SESSION_QUOTA": str(QUOTA),
        "FHE_SESSION_QUOTA_EXEMPT": "",
    }
    with Cluster(replicas=2, env=env, workdir=workdir / "cluster") as cluster:
        run = Run(cluster, workdir)
        dead_master = str(free_port())
        pause_ms = str(int(FAULT_SECONDS * 1000))
        rows = [
            # First: on idle replicas, before any was restarted.
            flood(run, flood_seconds, "library"),
            flood(run, flood_seconds, "library-nice"),
            flood(run, flood_seconds, "raw"),
            full_redis(run),
            redis_fault(
                run,
                "Redis read-only 5 s (a replica of a missing master)",
                lambda: run.admin.execute_command("REPLICAOF", "127.0.0.1", dead_master),
                lambda: run.admin.execute_command("REPLICAOF", "NO", "ONE"),
            ),
            redis_fault(
                run,
                "Redis paused 5 s (`CLIENT PAUSE`)",
                lambda: run.admin.execute_command("CLIENT", "PAUSE", pause_ms, "ALL"),
                lambda: None,
            ),
            redis_restarted_empty(run),
            replica_killed_mid_predict(run),
        ]
        nginx_log = (cluster.workdir / "nginx.log").read_text(encoding="utf-8", errors="replace")
        return {
            "date": datetime.date.today().isoformat(),
            "cores": psutil.cpu_count(),
            "fault_seconds": FAULT_SECONDS,
            "rows": rows,
            "answers_500": answers_500(cluster),
            "wrong_verdicts": run.wrong_verdicts,
            "replica_taken_out_by_nginx": nginx_log.count("temporarily disabled"),
        }


def table(results: dict[str, Any]) -> str:
    """The README's Faults table."""
    lines = [
        "| fault | what a client sees | what is lost | recovery time |",
        "| --- | --- | --- | --- |",
    ]
    for item in results["rows"]:
        lines.append(f"| {item['fault']} | {item['sees']} | {item['lost']} | {item['recovery']} |")
    lines.append(
        f"\nAnswers 500 in nginx's log: {results['answers_500']}; wrong verdicts: "
        f"{results['wrong_verdicts']}; times nginx took a replica out: "
        f"{results['replica_taken_out_by_nginx']} ({results['date']}, {results['cores']} cores)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the faults and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=settings.REPO_DIR / "development")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fhe-faults-") as tmp:
        results = run_all(args.flood_seconds, Path(tmp))
    (args.out / "faults_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0 if results["answers_500"] == 0 and results["wrong_verdicts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
