"""Faults of the cluster, one at a time: what a client sees, what is lost, how long recovery takes.

Run from the repository root (needs redis-server and nginx; about 12 minutes)::

    python -m development.faults                      # a 40 s flood phase, as in issue 22
    python -m development.faults --flood-seconds 10   # a quick look
    python -m development.faults --floods raw,raw,raw # one flood three times, printed only

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
  ``GET /admission`` and upload nothing when refused) and by raw clients that upload the keys
  every time, each from one client address (which nginx's per-address limit on requests for a
  session slows down) and spread over 200 loopback addresses (each under that limit, as many
  machines would be).

Prints the README's "Faults" table and writes ``<out>/faults_results.json`` with the details,
among them the answers 500 nginx logged (must be 0) and the wrong verdicts (must be 0). The flood
is ``development.flood``; the cluster all scenarios share is ``development.fault_run.Run``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

import settings
from backend import ServerBusyError, wait_while_busy
from development.bench_cluster import decide, open_session
from development.fault_run import FAULT_SECONDS, MB, QUOTA, TIMEOUT, Run, later, row, wait_for
from development.flood import FLOOD_MODES, flood
from fhe_server.cluster import Cluster, free_port


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


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def answers_500(cluster: Cluster) -> int:
    """How many answers nginx logged with status 500."""
    log = (cluster.workdir / "access.log").read_text(encoding="utf-8", errors="replace")
    return sum(1 for line in log.splitlines() if '" 500 ' in line)


def cluster_env(workdir: Path) -> dict[str, str]:
    """The replicas' settings: the quota on for loopback clients too, which only floods fill."""
    return {
        "FHE_KEY_CACHE_SIZE": "3",
        "FHE_STORE_DIR": str(workdir / "unused"),
        "FHE_SESSION_QUOTA": str(QUOTA),
        "FHE_SESSION_QUOTA_EXEMPT": "",
    }


def run_floods(flood_seconds: float, workdir: Path, modes: list[str]) -> list[dict[str, Any]]:
    """Start the cluster and run only the floods ``modes`` (one may come several times)."""
    with Cluster(replicas=2, env=cluster_env(workdir), workdir=workdir / "cluster") as cluster:
        run = Run(cluster, workdir)
        return [flood(run, flood_seconds, mode) for mode in modes]


def run_all(flood_seconds: float, workdir: Path) -> dict[str, Any]:
    """Start the cluster, run every fault, return the rows and totals."""
    with Cluster(replicas=2, env=cluster_env(workdir), workdir=workdir / "cluster") as cluster:
        run = Run(cluster, workdir)
        dead_master = str(free_port())
        pause_ms = str(int(FAULT_SECONDS * 1000))
        rows = [
            # First: on idle replicas, before any was restarted.
            *(flood(run, flood_seconds, mode) for mode in FLOOD_MODES),
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
    parser.add_argument(
        "--floods",
        help="only these floods, comma-separated, repeats allowed (e.g. raw,raw,raw), printed "
        f"and not saved; one of {', '.join(FLOOD_MODES)}",
    )
    args = parser.parse_args(argv)
    if args.floods:
        modes = [mode.strip() for mode in args.floods.split(",") if mode.strip()]
        unknown = sorted(set(modes) - set(FLOOD_MODES))
        if unknown:
            parser.error(f"unknown floods: {', '.join(unknown)}")
        with tempfile.TemporaryDirectory(prefix="fhe-faults-") as tmp:
            rows = run_floods(args.flood_seconds, Path(tmp), modes)
        for item in rows:
            print(f"| {item['fault']} | {item['sees']} |")
        return 0
    with tempfile.TemporaryDirectory(prefix="fhe-faults-") as tmp:
        results = run_all(args.flood_seconds, Path(tmp))
    (args.out / "faults_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0 if results["answers_500"] == 0 and results["wrong_verdicts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
