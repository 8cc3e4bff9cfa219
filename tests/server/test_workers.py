"""The filesystem store shared by several worker processes: ``uvicorn server:app --workers 2``.

Both workers serve one store directory; the store's cross-process locks (``flock``) must make
every upload count and never keep a verdict computed from inputs that were replaced meanwhile.

- Three parties send 40 uploads each, concurrently, each upload on a new connection (so the
  kernel spreads them over both workers, which the test checks): the session's inputs version
  ends at exactly 120, and the verdict then computed is the clear model's.
- A predict racing an upload: whenever an upload lands while predict runs, predict is refused
  (409) and nothing is stored; the stored verdict, if any, is always that of the current inputs.
- The per-client session quota is one count for both workers (kept in the store).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

import settings
from contracts.wire import bearer
from development.reference import clear_verdict
from tests.support.applications import Profile, varied_profiles
from tests.support.http import OCTET, open_session, upload
from tests.support.kit import Kit
from tests.support.processes import server_process
from tests.support.servers import running_server

pytestmark = pytest.mark.slow

UPLOADS_PER_PARTY = 40
QUOTA = 3


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store_dir = tmp_path_factory.mktemp("workers") / "store"
    env = {"FHE_SESSION_QUOTA": str(QUOTA)}
    with running_server(store_dir=store_dir, env=env, extra_args=("--workers", "2")) as base_url:
        yield base_url, store_dir


def worker_processes(base_url: str) -> list[psutil.Process]:
    """The worker processes of the uvicorn master serving ``base_url``."""
    master = server_process(base_url)
    return [c for c in master.children() if "resource_tracker" not in " ".join(c.cmdline())]


def inputs_version(store_dir: Path, session_id: str) -> int:
    return json.loads((store_dir / session_id / "meta.json").read_text())["inputs_version"]


def test_three_parties_uploading_at_once_through_two_workers_lose_no_update(
    two_workers: tuple[str, Path], kit: Kit
) -> None:
    base_url, store_dir = two_workers
    workers = worker_processes(base_url)
    assert len(workers) == 2, [w.cmdline() for w in workers]
    profile = varied_profiles(1)[0]
    encrypted = kit.encrypt(profile)
    with httpx.Client(base_url=base_url, timeout=60) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
    written_before = [w.io_counters().write_chars for w in workers]
    start = threading.Barrier(len(settings.PARTIES))
    statuses: dict[str, list[int]] = {party: [] for party in settings.PARTIES}

    def send(party: str) -> None:
        url = f"{base_url}/sessions/{session_id}/inputs/{party}"
        start.wait()
        for _ in range(UPLOADS_PER_PARTY):
            # A new connection each time: the workers take turns accepting them.
            response = httpx.put(
                url, content=encrypted[party], headers={**auth, **OCTET}, timeout=60
            )
            statuses[party].append(response.status_code)

    threads = [threading.Thread(target=send, args=(party,)) for party in settings.PARTIES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(codes == [204] * UPLOADS_PER_PARTY for codes in statuses.values()), statuses
    written = [
        w.io_counters().write_chars - before
        for w, before in zip(workers, written_before, strict=True)
    ]
    # Each upload writes its ciphertext (and the session's metadata) to a file: a worker that
    # served uploads wrote at least a couple of ciphertexts' worth.
    two_uploads = 2 * max(len(data) for data in encrypted.values())
    assert all(amount > two_uploads for amount in written), (
        f"one worker served no upload (bytes written per worker: {written})"
    )
    assert inputs_version(store_dir, session_id) == len(settings.PARTIES) * UPLOADS_PER_PARTY
    with httpx.Client(base_url=base_url, timeout=120) as http:
        assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
        output = http.get(f"/sessions/{session_id}/output", headers=auth)
        assert int(kit.decrypt(output.content)) == int(profile.verdict())
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204


def mixed_pair(profiles: list[Profile]) -> tuple[Profile, Profile]:
    """Two profiles A, B such that B's credit-bureau fields change A's verdict."""
    for a in profiles:
        for b in profiles:
            if clear_verdict(a.applicant, a.bank, b.credit_bureau) != a.verdict():
                return a, b
    raise AssertionError("no pair of profiles whose credit-bureau fields change the verdict")


def test_a_predict_racing_an_upload_never_keeps_a_verdict_for_old_inputs(
    two_workers: tuple[str, Path], kit: Kit
) -> None:
    base_url, _ = two_workers
    a, b = mixed_pair(varied_profiles(20))
    bureau = {"a": kit.encrypt(a)["credit_bureau"], "b": kit.encrypt(b)["credit_bureau"]}
    verdicts = {
        "a": int(a.verdict()),
        "b": int(clear_verdict(a.applicant, a.bank, b.credit_bureau)),
    }
    with httpx.Client(base_url=base_url, timeout=120) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
        upload(http, session_id, auth, kit.encrypt(a))
        # Warm both workers' key caches and measure a predict, to upload in the middle of one.
        durations = []
        for _ in range(4):
            began = time.perf_counter()
            assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
            durations.append(time.perf_counter() - began)
        midway = min(durations) / 2
        current, races, outcomes = "a", 0, []
        for _ in range(12):
            result: dict[str, httpx.Response] = {}

            def predict(into: dict[str, httpx.Response] = result) -> None:
                with httpx.Client(base_url=base_url, timeout=120) as other:
                    into["predict"] = other.post(f"/sessions/{session_id}/predict", headers=auth)

            worker = threading.Thread(target=predict)
            worker.start()
            time.sleep(midway)
            current = "b" if current == "a" else "a"
            upload(http, session_id, auth, {"credit_bureau": bureau[current]})
            worker.join(timeout=120)
            status = result["predict"].status_code
            assert status in (200, 409), result["predict"].text
            output = http.get(f"/sessions/{session_id}/output", headers=auth)
            if output.status_code == 200:
                assert int(kit.decrypt(output.content)) == verdicts[current]
            else:
                assert output.status_code == 409, output.text
            outcomes.append((status, output.status_code))
            if status == 409:
                assert "changed during predict" in result["predict"].json()["detail"]
                races += 1
                if races >= 2:
                    break
        assert races >= 1, f"no upload landed during a predict (predict, output): {outcomes}"
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204


def test_both_workers_share_one_session_quota(two_workers: tuple[str, Path], kit: Kit) -> None:
    base_url, _ = two_workers
    headers = {**OCTET, "X-Forwarded-For": "10.5.5.5"}
    answers = [
        # A new connection each time, so both workers take some.
        httpx.post(f"{base_url}/sessions", content=kit.evaluation_keys, headers=headers, timeout=60)
        for _ in range(QUOTA + 3)
    ]
    assert [r.status_code for r in answers] == [201] * QUOTA + [429] * 3, [r.text for r in answers]
    for response in answers[:QUOTA]:
        body = response.json()
        url = f"{base_url}/sessions/{body['session_id']}"
        assert httpx.delete(url, headers=bearer(body["token"]), timeout=60).status_code == 204
