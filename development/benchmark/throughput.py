"""Stage 4, throughput: decisions per minute with 4 clients at once, /health latency meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from development.benchmark.dataset import Dataset
from development.benchmark.http_flows import full_flow
from development.benchmark.options import Options
from development.benchmark.report import Report
from development.benchmark.timing import timed
from development.instrumentation import HealthProbe
from fhe_server.launcher import ServerProcess

THROUGHPUT_CLIENTS = 4
HEALTH_POLL_SECONDS = 0.1
IDLE_HEALTH_REQUESTS = 10


def measure_throughput(
    report: Report, options: Options, data: Dataset, server: ServerProcess, work_dir: Path
) -> None:
    """Decisions per minute with 4 concurrent clients, and /health latency meanwhile.

    A decision is one application's full five-step flow with new keys (each applicant has its
    own key set). Each thread has its own CreditScoringClient; the threads share a fixed number
    of decisions. /health is polled from another process meanwhile.
    """
    from backend import CreditScoringClient

    report.stage("throughput")
    measure_idle_health(report, server)

    total = options.throughput_decisions
    lock = threading.Lock()
    issued = [0]
    done: list[tuple[float, bool]] = []
    errors: list[BaseException] = []
    bar = tqdm(total=total, desc=f"decisions ({THROUGHPUT_CLIENTS} clients)", leave=False)

    def worker(number: int) -> None:
        client = CreditScoringClient(server.url, key_dir=work_dir / "tp_keys" / str(number))
        try:
            while True:
                with lock:
                    if issued[0] >= total:
                        return
                    ticket = issued[0]
                    issued[0] += 1
                position = ticket % len(data.y_quant)
                _, verdict = full_flow(client, data.raw_parties(position))
                with lock:
                    done.append((time.perf_counter(), verdict == bool(data.y_quant[position])))
                    bar.update(1)
        except BaseException as error:  # reported after the threads join
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THROUGHPUT_CLIENTS)]
    # /health is polled from another process, so that the latencies are the server's, not
    # stalls of this process's threads (concrete's key generation holds the GIL throughout).
    with HealthProbe(server.url, period_seconds=HEALTH_POLL_SECONDS) as health:
        start = time.perf_counter()
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            bar.close()
    latencies = health.latencies
    if errors:
        raise RuntimeError(f"a throughput client failed: {errors[0]!r}") from errors[0]
    record_throughput(report, done, start, latencies)


def measure_idle_health(report: Report, server: ServerProcess) -> None:
    """/health latency of the idle server, before the clients start."""
    with httpx.Client(base_url=server.url, timeout=10.0) as health_client:
        idle = []
        for _ in range(IDLE_HEALTH_REQUESTS):
            seconds, response = timed(lambda: health_client.get("/health"))
            response.raise_for_status()
            idle.append(seconds)
    report.median("health_latency_idle_median_s", idle)


def record_throughput(
    report: Report, done: list[tuple[float, bool]], start: float, latencies: list[float]
) -> None:
    """Record the decisions made since ``start`` and the /health latencies meanwhile.

    Args:
        report: the benchmark's report.
        done: (finish time, verdict agreed with the clear model) of each decision.
        start: when the clients started (``time.perf_counter``).
        latencies: the /health latencies measured while they ran.
    """
    elapsed = max(t for t, _ in done) - start
    report.record("throughput_decisions", len(done))
    report.record("throughput_elapsed_s", round(elapsed, 3))
    report.record("decisions_per_minute_4_clients", round(len(done) / elapsed * 60, 2))
    report.record("throughput_agreement", round(float(np.mean([ok for _, ok in done])), 4))
    if latencies:
        report.record("health_latency_median_s", round(float(np.median(latencies)), 6))
        report.record("health_latency_max_s", round(float(max(latencies)), 6))
        report.record("health_requests", len(latencies))
