"""Load on a real server process (issue 7, part 3).

The server runs with one FHE worker and no waiting room (``FHE_MAX_CONCURRENT_FHE=1``,
``FHE_MAX_WAITING_FHE=0``): whatever finds the worker busy is refused at once with 503 and a
Retry-After header instead of piling up, and the client library's callers retry after that delay.

- 20 applications at once, each through its own ``CreditScoringClient`` (own keys, own session,
  own profile, every field varied): each gets its own correct verdict, compared with the clear
  model; /health stays fast meanwhile; the server's peak memory stays under ``RSS_BOUND_BYTES``.
- With the worker busy on explain, /health answers within a second and every extra predict gets
  503 + Retry-After within a second.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from backend import CreditScoringClient, ServerBusyError
from development.instrumentation import HealthProbe
from tests.support.applications import EXAMPLE_PROFILE, Profile, varied_profiles
from tests.support.http import OCTET, open_session, upload
from tests.support.kit import Kit
from tests.support.processes import PeakSampler, server_process
from tests.support.servers import one_fhe_slot_server

pytestmark = pytest.mark.slow

SESSIONS = 20
HEALTH_SECONDS = 1.0
# Peak resident memory of the server process during the 20-session run. Measured on this 2-core
# machine: ~0.7 GB right after start (the loaded FHE module and libraries). With the 15.6 MB
# evaluation keys of the earlier circuit: 1.32-1.45 GB peak (uploads read and prepared in memory,
# ~60-90 MB each while in flight; the key cache keeps 2 prepared key sets). With the 24.9 MB keys
# of the two-lookup circuit (2026-12-07): 2.27 GB peak on an otherwise idle machine, where more
# uploads overlap, and under 2.0 GB in two runs beside CPU hogs. The bound keeps ~30 % of margin.
RSS_BOUND_BYTES = 3_000_000_000
RETRY_DEADLINE_SECONDS = 300.0
BATCHES = 3  # of extra predicts (one per other session) sent while the worker explains


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with one_fhe_slot_server(tmp_path_factory.mktemp("load") / "store") as base_url:
        yield base_url


@dataclass
class Outcome:
    """What one simulated applicant got."""

    verdict: bool | None = None
    busy_answers: int = 0
    retry_afters: list[float] = field(default_factory=list)
    error: str | None = None


def predict_with_retry(client: CreditScoringClient, outcome: Outcome) -> None:
    """Call predict; on 503 wait the Retry-After the server gave (plus jitter) and try again."""
    deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
    while True:
        try:
            client.predict()
            return
        except ServerBusyError as busy:
            outcome.busy_answers += 1
            assert busy.retry_after is not None and busy.retry_after >= 1, busy
            outcome.retry_afters.append(busy.retry_after)
            if time.monotonic() > deadline:
                raise
            time.sleep(busy.retry_after + random.uniform(0, 0.5))


def applicant_flow(
    base_url: str, key_dir: Path, profile: Profile, start: threading.Barrier, outcome: Outcome
) -> None:
    client = CreditScoringClient(server_url=base_url, key_dir=key_dir)
    try:
        client.generate_keys()
        start.wait(timeout=300)  # every session exists: now all send and predict at once
        client.send_applicant(**profile.applicant)
        client.send_bank(**profile.bank)
        client.send_credit_bureau(**profile.credit_bureau)
        predict_with_retry(client, outcome)
        outcome.verdict = client.decrypt_verdict()
    except Exception as error:  # reported by the test with the profile's index
        outcome.error = repr(error)
        start.abort()
    finally:
        client.close()


def test_twenty_sessions_at_once_each_get_their_own_verdict(server: str, tmp_path: Path) -> None:
    profiles = varied_profiles(SESSIONS)
    expected = [profile.verdict() for profile in profiles]
    assert set(expected) == {True, False}, "a mix-up must be visible"
    outcomes = [Outcome() for _ in profiles]
    start = threading.Barrier(SESSIONS)
    process = server_process(server)
    rss_at_start = process.memory_info().rss
    threads = [
        threading.Thread(
            target=applicant_flow,
            args=(server, tmp_path / f"keys-{index}", profile, start, outcome),
        )
        for index, (profile, outcome) in enumerate(zip(profiles, outcomes, strict=True))
    ]
    began = time.perf_counter()
    with PeakSampler(lambda: process.memory_info().rss) as rss, HealthProbe(server) as health:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=RETRY_DEADLINE_SECONDS + 120)
    elapsed = time.perf_counter() - began

    errors = {index: o.error for index, o in enumerate(outcomes) if o.error}
    assert not errors, errors
    assert [o.verdict for o in outcomes] == expected
    busy = sum(o.busy_answers for o in outcomes)
    print(
        f"\n{SESSIONS} sessions in {elapsed:.1f} s; {busy} answers 503 (retry after "
        f"{sorted({a for o in outcomes for a in o.retry_afters})} s); /health max "
        f"{max(health.latencies):.3f} s over {len(health.latencies)} calls; RSS "
        f"{rss_at_start / 1e9:.2f} GB at start, peak {rss.peak / 1e9:.2f} GB "
        f"({rss.samples} samples)"
    )
    assert busy > 0, "20 predicts at once on one worker without a waiting room must meet 503"
    assert not health.failures, health.failures
    assert len(health.latencies) > 10 and max(health.latencies) < HEALTH_SECONDS
    assert rss.samples > 10 and rss.peak < RSS_BOUND_BYTES
    with httpx.Client(base_url=server, timeout=10) as http:
        assert http.get("/health").status_code == 200


def test_busy_fhe_keeps_health_fast_and_refuses_extra_predicts(server: str) -> None:
    kit = Kit.generate()
    with httpx.Client(base_url=server, timeout=120) as http:
        # The explaining session, and five others ready to predict.
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, kit.encrypt(EXAMPLE_PROFILE))
        candidates = kit.encrypt_candidates()
        others = []
        for profile in varied_profiles(5):
            other_id, other_auth = open_session(http, kit.evaluation_keys)
            upload(http, other_id, other_auth, kit.encrypt(profile))
            others.append((other_id, other_auth, profile))

    explained: list[int] = []
    stop = threading.Event()

    def explain_loop() -> None:  # keeps the only FHE worker busy (~1.3 s an explain)
        with httpx.Client(base_url=server, timeout=120) as http:
            while not stop.is_set():
                response = http.post(
                    f"/sessions/{session_id}/explain",
                    content=candidates,
                    headers={**auth, **OCTET},
                )
                explained.append(response.status_code)
                if response.status_code == 503:  # an extra predict slipped in between two
                    time.sleep(0.02)  # explains and holds the worker: take it back after it

    refused: list[tuple[float, httpx.Response]] = []
    lock = threading.Lock()

    def extra_predict(other_id: str, other_auth: dict) -> None:
        with httpx.Client(base_url=server, timeout=120) as http:
            start = time.perf_counter()
            response = http.post(f"/sessions/{other_id}/predict", headers=other_auth)
            with lock:
                refused.append((time.perf_counter() - start, response))

    worker = threading.Thread(target=explain_loop)
    with HealthProbe(server) as health:
        worker.start()
        time.sleep(0.5)  # the first explain holds the worker
        for _ in range(BATCHES):
            batch = [threading.Thread(target=extra_predict, args=o[:2]) for o in others]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join(timeout=60)
            time.sleep(0.3)
        stop.set()
        worker.join(timeout=60)

    assert explained.count(200) >= 1 and set(explained) <= {200, 503}, explained
    assert not health.failures and max(health.latencies) < HEALTH_SECONDS, health.latencies
    statuses = [response.status_code for _, response in refused]
    # One extra predict of a batch may slip into the few milliseconds between two explains; the
    # others are refused at once: no request waits for the worker.
    busy = [(seconds, response) for seconds, response in refused if response.status_code == 503]
    assert len(busy) >= len(refused) - BATCHES and set(statuses) <= {200, 503}, statuses
    for seconds, response in busy:
        assert "queue" in response.json()["detail"]
        assert int(response.headers["Retry-After"]) >= 1
        assert seconds < HEALTH_SECONDS
    print(
        f"\n{len(refused)} extra predicts while explaining: {statuses}; slowest 503 "
        f"{max(s for s, _ in busy):.3f} s; /health max {max(health.latencies):.3f} s"
    )
    # Once the worker is free, every one of them goes through and gets its own verdict.
    with httpx.Client(base_url=server, timeout=120) as http:
        for other_id, other_auth, profile in others:
            assert http.post(f"/sessions/{other_id}/predict", headers=other_auth).status_code == 200
            output = http.get(f"/sessions/{other_id}/output", headers=other_auth)
            assert int(kit.decrypt(output.content)) == int(profile.verdict())
