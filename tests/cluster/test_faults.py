"""The cluster under faults (issue 22): real Redis, two real replicas, real nginx, real FHE.

One fault at a time, injected for real: Redis at its ``maxmemory`` (noeviction), Redis made a
read-only replica, Redis paused (``CLIENT PAUSE``), Redis stopped and started again empty, a
replica SIGKILLed in the middle of a predict. Each test asserts what a client sees: never a 500,
a JSON reason with a Retry-After on every 503, the right verdicts, and, for the client library,
a delay instead of an error where the request is safe to repeat.

The cluster's quota is on for loopback clients (nginx's own address), so the refusal of a
creation before its body is read can be seen through nginx. An autouse fixture puts Redis and
the replicas back after every test. Without redis-server or nginx the module is skipped; under
``REQUIRE_CLUSTER=1`` (CI) that is an error.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backend import CreditScoringClient, wait_while_busy
from fhe_client import errors as client_errors
from fhe_client.transport import refusal_from_admission
from fhe_server.cluster import Cluster, free_port
from fhe_server.errors import ServerBusyError, StoreUnavailableError, TooManySessionsError
from fhe_server.protocol import TRANSIENT_HEADER
from fhe_server.redis_store import FULL_RETRY_SECONDS, RedisSessionStore
from tests.support.applications import varied_profiles
from tests.support.cluster import (
    TIMEOUT,
    cached_keys,
    health,
    kill,
    require_cluster_binaries,
    routed_to,
    wait_until,
)
from tests.support.http import OCTET, open_session, upload
from tests.support.kit import Kit

require_cluster_binaries()

QUOTA = 40  # sessions per client and window: enough for the module's flows
FAULT_SECONDS = 3.0  # how long a fault the client library must ride through lasts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("faults")
    env = {
        "FHE_KEY_CACHE_SIZE": "3",
        "FHE_STORE_DIR": str(workdir / "unused"),
        "FHE_SESSION_QUOTA": str(QUOTA),
        "FHE_SESSION_QUOTA_EXEMPT": "",
    }
    with Cluster(replicas=2, env=env, workdir=workdir) as running:
        yield running


@pytest.fixture
def admin(cluster: Cluster) -> Iterator[redis.Redis]:
    """A plain connection to the cluster's Redis; every fault is undone after the test."""
    connection = redis.Redis.from_url(cluster.redis_url, socket_timeout=30)
    yield connection
    heal(cluster, connection)
    connection.close()


def heal(cluster: Cluster, connection: redis.Redis) -> None:
    """Undo every fault: Redis running, writable, unpaused, unbounded; both replicas up."""
    if not cluster.redis.alive():
        cluster.start_redis()
    connection.execute_command("CLIENT", "UNPAUSE")
    connection.execute_command("REPLICAOF", "NO", "ONE")
    connection.config_set("maxmemory", 0)
    for index, replica in enumerate(cluster.replicas):
        if not replica.alive():
            cluster.start_replica(index)


def fill(connection: redis.Redis) -> None:
    """Redis at its memory limit: every command that may grow memory is refused (OOM)."""
    connection.config_set("maxmemory-policy", "noeviction")
    connection.config_set("maxmemory", 1)


def make_read_only(connection: redis.Redis) -> None:
    """Redis a replica of a master that does not exist: its data stays, writes are refused."""
    connection.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


def assert_503(response: httpx.Response, transient: bool) -> int:
    """A 503 with a JSON reason and a Retry-After; return the Retry-After."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]
    assert (TRANSIENT_HEADER in response.headers) is transient, response.headers
    return int(response.headers["Retry-After"])


def decrypt(kit: Kit, response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(kit.decrypt(response.content))


def new_client(cluster: Cluster, key_dir: Path, **options: Any) -> CreditScoringClient:
    return CreditScoringClient(cluster.url, key_dir=key_dir, timeout=TIMEOUT, **options)


def predicted_session(
    http: httpx.Client, kit: Kit, seed: int
) -> tuple[str, dict[str, str], dict[str, bytes], bool]:
    """Open a session, upload a profile, predict; return id, auth, ciphertexts, verdict."""
    profile = varied_profiles(1, seed=seed)[0]
    session_id, auth = open_session(http, kit.evaluation_keys)
    encrypted = kit.encrypt(profile)
    upload(http, session_id, auth, encrypted)
    assert http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
    return session_id, auth, encrypted, profile.verdict()


def send_profile(client: CreditScoringClient, seed: int) -> bool:
    """Generate keys, send the three parties' inputs; return the expected verdict."""
    profile = varied_profiles(1, seed=seed)[0]
    client.generate_keys()
    client.send_applicant(**profile.applicant)
    client.send_bank(**profile.bank)
    client.send_credit_bureau(**profile.credit_bureau)
    return profile.verdict()


# ---------------------------------------------------------------------------------------------
# The store maps Redis's failures by type
# ---------------------------------------------------------------------------------------------
def test_a_full_redis_refuses_writes_with_503_and_still_reads_renews_and_deletes(
    cluster: Cluster, admin: redis.Redis
) -> None:
    store = RedisSessionStore(cluster.redis_url, ttl_seconds=3600, max_sessions=100)
    try:
        session_id, token = store.create(b"keys")
        store.put_input(session_id, "applicant", b"a")
        store.store_output(session_id, b"verdict", 1)
        fill(admin)
        store.authenticate(session_id, token)  # the TTL renewal needs no memory
        assert store.read_output(session_id) == b"verdict"
        assert store.read_inputs(session_id, ["applicant"])[0] == {"applicant": b"a"}
        for write in (
            lambda: store.put_input(session_id, "bank", b"b"),
            lambda: store.create(b"more keys"),
            lambda: store.check_room(1),
        ):
            with pytest.raises(ServerBusyError) as full:
                write()
            assert type(full.value) is ServerBusyError and full.value.status_code == 503
            assert 1 <= full.value.retry_after <= FULL_RETRY_SECONDS
        store.delete(session_id)  # a delete never needs memory
        assert store.session_ids() == []
    finally:
        admin.config_set("maxmemory", 0)
        store.close()


def test_a_read_only_or_unreachable_redis_is_a_transient_503(
    cluster: Cluster, admin: redis.Redis
) -> None:
    store = RedisSessionStore(cluster.redis_url, ttl_seconds=3600, max_sessions=100)
    gone = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", 3600, max_sessions=100)
    try:
        session_id, token = store.create(b"keys")
        make_read_only(admin)
        store.authenticate(session_id, token)  # a renewal Redis refuses is only logged
        with pytest.raises(StoreUnavailableError) as read_only:
            store.put_input(session_id, "bank", b"b")
        assert read_only.value.headers()[TRANSIENT_HEADER] == "1"
        admin.execute_command("REPLICAOF", "NO", "ONE")
        store.delete(session_id)
        with pytest.raises(StoreUnavailableError) as unreachable:
            gone.authenticate("0" * 32, "token")
        assert unreachable.value.status_code == 503 and unreachable.value.retry_after >= 1
    finally:
        store.close()
        gone.close()


def test_a_full_session_cap_and_a_used_up_quota_say_when_to_come_back(
    cluster: Cluster, admin: redis.Redis
) -> None:
    """Retry-After is the next expiry or a short poll, not a whole idle TTL (an hour)."""
    store = RedisSessionStore(cluster.redis_url, ttl_seconds=3600, max_sessions=1)
    try:
        first, token = store.create(b"first")
        store.authenticate(first, token)  # just used: its expiry is an hour away
        for refused in (lambda: store.create(b"second"), store.check_room):
            with pytest.raises(ServerBusyError) as full:
                refused()
            assert 1 <= full.value.retry_after <= FULL_RETRY_SECONDS
        store.delete(first)  # room comes back at once, well before the hour
        store.check_room()
        quota = store.session_quota(limit=1, window_seconds=600, exempt=())
        with quota.admit("203.0.113.9"):
            pass
        with pytest.raises(TooManySessionsError) as over:
            quota.check("203.0.113.9")
        assert 1 <= over.value.retry_after <= 600
        quota.check("198.51.100.4")  # another client: not refused
    finally:
        admin.delete("fhe:quota:203.0.113.9")
        store.close()


# ---------------------------------------------------------------------------------------------
# What a client of the cluster sees
# ---------------------------------------------------------------------------------------------
def test_a_full_redis_through_nginx_reads_deletes_and_answers_503_never_500(
    cluster: Cluster, kit: Kit, admin: redis.Redis
) -> None:
    with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
        session_id, auth, encrypted, verdict = predicted_session(http, kit, seed=21)
        fill(admin)
        output = http.get(f"/sessions/{session_id}/output", headers=auth)
        assert decrypt(kit, output) == int(verdict)
        put = http.put(
            f"/sessions/{session_id}/inputs/bank",
            content=encrypted["bank"],
            headers={**auth, **OCTET},
        )
        assert 1 <= assert_503(put, transient=False) <= FULL_RETRY_SECONDS
        created = http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        # Refused before its body is read, and answered by the replica (not nginx's own 503).
        assert 1 <= assert_503(created, transient=False) <= FULL_RETRY_SECONDS
        for url in cluster.replica_urls:
            assert health(url)["status"] == "ok"  # full is not down
        assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
        assert http.get(f"/sessions/{session_id}/output", headers=auth).status_code == 404
        admin.config_set("maxmemory", 0)
        # Both replicas are still in nginx's rotation.
        names = {http.get("/health").json()["replica"] for _ in range(20)}
    assert names == {"replica-1", "replica-2"}
    log = (cluster.workdir / "nginx.log").read_text(encoding="utf-8", errors="replace")
    assert "no live upstreams" not in log
    assert "buffered to a temporary file" not in log  # the refused creation never hit the disk


def test_a_creation_over_the_quota_is_refused_before_its_body_is_read(
    cluster: Cluster, kit: Kit, admin: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    key = "fhe:quota:127.0.0.1"
    admin.zadd(key, {f"slot-{n}": now_ms for n in range(QUOTA)})
    try:
        response = httpx.post(
            f"{cluster.url}/sessions", content=kit.evaluation_keys, headers=OCTET, timeout=TIMEOUT
        )
        assert response.status_code == 429, response.text
        assert response.json()["detail"] and int(response.headers["Retry-After"]) >= 1
    finally:
        admin.delete(key)
    # nginx asked a replica (GET /admission, no body) and answered the refusal itself: no
    # replica received the body, and nginx wrote none of it to disk.
    replica_logs = "".join(
        (cluster.workdir / f"{replica.name}.log").read_text(encoding="utf-8", errors="replace")
        for replica in cluster.replicas
    )
    assert '"GET /admission HTTP/1.1" 403' in replica_logs
    assert '"POST /sessions HTTP/1.1" 429' not in replica_logs
    body_files = list((cluster.workdir / "client_body").glob("**/*"))
    assert [path for path in body_files if path.is_file()] == []
    log = (cluster.workdir / "nginx.log").read_text(encoding="utf-8", errors="replace")
    assert "buffered to a temporary file" not in log


def test_one_address_asking_too_fast_waits_in_nginx_and_a_full_queue_is_refused_at_once(
    cluster: Cluster, kit: Kit
) -> None:
    """nginx's limit on requests for a session: over the rate they wait; a full queue is refused.

    40 questions (GET /admission) at once from one address: 1 + 10 are answered at once, 10 wait
    their turn at 2 per second (up to 5 s), the others are refused at once in the question's own
    form (403 with the refusal in headers, which the library raises as the 429 it stands for). A
    creation sent while the queue is full is refused by nginx alone: no replica receives it.
    """
    address = "127.0.0.31"  # its own bucket: other tests' requests are not delayed
    transport = httpx.HTTPTransport(local_address=address)
    with (
        httpx.Client(base_url=cluster.url, timeout=TIMEOUT, transport=transport) as http,
        ThreadPoolExecutor(max_workers=40) as pool,
    ):

        def ask() -> tuple[httpx.Response, float]:
            start = time.monotonic()
            response = http.get("/admission")
            return response, time.monotonic() - start

        questions = [pool.submit(ask) for _ in range(40)]
        for future in as_completed(questions):  # until the queue is full: the first refusal
            if future.result()[0].status_code == 403:
                break
        created = http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        answers = [future.result() for future in questions]
    statuses = [response.status_code for response, _ in answers]
    assert set(statuses) == {204, 403}, statuses
    assert statuses.count(204) >= 21 and statuses.count(403) >= 10, statuses
    waited = max(seconds for response, seconds in answers if response.status_code == 204)
    assert waited >= 2.0  # the last of the queue waited its turn
    for response, seconds in answers:
        if response.status_code == 403:
            assert seconds < waited  # refused at once, not after waiting in the queue
            assert response.headers["Retry-After"] == "10"  # the queue's 20 at 2 per second
            refusal = refusal_from_admission(response)
            assert isinstance(refusal, client_errors.TooManySessionsError)
            assert refusal.retry_after == 10 and "per second" in str(refusal)
    assert created.status_code == 429, created.text
    assert created.json()["detail"] and created.headers["Retry-After"] == "10"
    log = (cluster.workdir / "access.log").read_text(encoding="utf-8", errors="replace")
    posts = [line for line in log.splitlines() if line.startswith(f'{address} "POST /sessions')]
    assert len(posts) == 1 and " 429 " in posts[0] and "upstream=-" in posts[0], posts


def test_many_addresses_asking_at_once_wait_in_nginx_and_a_full_queue_is_refused_at_once(
    cluster: Cluster,
) -> None:
    """nginx's limit for all clients together: a flood from many addresses cannot take the CPU.

    320 questions (GET /admission) at once, each from its own address (each under its own
    limit): the two replicas take 20 a second. Of 10 s of them (200 after the first), 20 pass at
    once and 180 wait their turn, up to 9 s; the others are refused at once, told to come back
    in 10 s, when the queue has drained.
    """
    port = int(cluster.url.rsplit(":", 1)[1])
    addresses = [f"127.0.{1 + n // 200}.{1 + n % 200}" for n in range(320)]

    def ask(address: str) -> tuple[int, dict[str, str], float]:
        start = time.monotonic()
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=120, source_address=(address, 0)
        )
        try:
            connection.request("GET", "/admission")
            response = connection.getresponse()
            response.read()
            return response.status, dict(response.getheaders()), time.monotonic() - start
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        answers = list(pool.map(ask, addresses))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {204, 403}, statuses
    assert statuses.count(204) >= 201 and statuses.count(403) >= 10, statuses
    assert max(seconds for status, _, seconds in answers if status == 204) >= 3.0
    for status, headers, _ in answers:
        if status == 403:
            assert headers["X-FHE-Refusal-Status"] == "429" and headers["Retry-After"] == "10"
            assert "per second from all clients" in headers["X-FHE-Refusal-Detail"]


def test_a_replica_answers_a_store_failure_as_json_and_keeps_the_connection(
    cluster: Cluster, kit: Kit, admin: redis.Redis
) -> None:
    with httpx.Client(base_url=cluster.replica_urls[0], timeout=TIMEOUT) as direct:
        session_id, auth = open_session(direct, kit.evaluation_keys)
    host, port = cluster.replica_urls[0].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        make_read_only(admin)
        connection.request(
            "PUT",
            f"/sessions/{session_id}/inputs/applicant",
            body=bytes(16),
            headers={**auth, **OCTET},
        )
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 422, body  # the ciphertext is checked before the store
        socket_before = connection.sock
        connection.request("POST", f"/sessions/{session_id}/predict", headers=auth)
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status in (409, 503), body  # no input yet: 409 (read-only reads work)
        connection.request("DELETE", f"/sessions/{session_id}", headers=auth)
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 503 and answer.getheader(TRANSIENT_HEADER) == "1", body
        assert not answer.will_close and connection.sock is socket_before
        connection.request("GET", "/health")
        answer = connection.getresponse()
        status = answer.read()
        assert answer.status == 200 and connection.sock is socket_before, status
    finally:
        connection.close()
        admin.execute_command("REPLICAOF", "NO", "ONE")
        with httpx.Client(base_url=cluster.replica_urls[0], timeout=TIMEOUT) as direct:
            assert direct.delete(f"/sessions/{session_id}", headers=auth).status_code == 204


def test_the_client_library_rides_through_a_read_only_and_a_paused_redis(
    cluster: Cluster, admin: redis.Redis, tmp_path: Path
) -> None:
    client = new_client(cluster, tmp_path / "keys")
    try:
        expected = send_profile(client, seed=22)
        make_read_only(admin)
        healer = threading.Timer(
            FAULT_SECONDS, lambda: admin.execute_command("REPLICAOF", "NO", "ONE")
        )
        healer.start()
        client.send_bank(account_age=30)  # 503 transient while read-only: retried, then 204
        healer.join()
        profile = varied_profiles(1, seed=22)[0]
        client.send_bank(**profile.bank)
        admin.execute_command("CLIENT", "PAUSE", str(int(FAULT_SECONDS * 1000)), "ALL")
        during = httpx.get(f"{cluster.url}/health", timeout=TIMEOUT)  # never waits on Redis
        assert during.status_code == 200, during.text
        client.predict()  # waits for the pause to end
        assert client.decrypt_verdict() is expected
    finally:
        client.close()


def test_wait_while_busy_rides_through_a_full_store_and_says_how_long_it_waited(
    cluster: Cluster, admin: redis.Redis, tmp_path: Path
) -> None:
    client = new_client(cluster, tmp_path / "keys")
    try:
        expected = send_profile(client, seed=23)
        fill(admin)
        healer = threading.Timer(FAULT_SECONDS, lambda: admin.config_set("maxmemory", 0))
        healer.start()
        result = wait_while_busy(client.predict, max_wait=120)
        healer.join()
        assert result.attempts >= 2 and 1 <= result.waited <= 120
        assert client.decrypt_verdict() is expected
    finally:
        client.close()


def test_redis_stopped_then_back_empty_health_degrades_and_replicas_drop_their_keys(
    cluster: Cluster, kit: Kit, admin: redis.Redis
) -> None:
    with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
        session_id, auth, _, _ = predicted_session(http, kit, seed=24)
        assert sum(cached_keys(url) for url in cluster.replica_urls) >= 1
        cluster.redis.stop()
        for url in cluster.replica_urls:
            wait_until(lambda url=url: health(url)["status"] == "degraded", "degraded", 30)
        for route in ("output", "predict"):
            method = "GET" if route == "output" else "POST"
            answer = http.request(method, f"/sessions/{session_id}/{route}", headers=auth)
            assert assert_503(answer, transient=True) >= 1
        created = http.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        assert assert_503(created, transient=True) >= 1
        cluster.start_redis()  # persistence off: empty
        for url in cluster.replica_urls:
            wait_until(
                lambda url=url: health(url)["status"] == "ok" and cached_keys(url) == 0,
                "the replica is back and dropped the keys of the lost sessions",
                30,
            )
        lost = http.get(f"/sessions/{session_id}/output", headers=auth)
        assert lost.status_code == 404 and lost.json()["detail"]


def test_a_replica_killed_mid_predict_is_only_a_delay_for_the_client(
    cluster: Cluster, admin: redis.Redis, tmp_path: Path
) -> None:
    client = new_client(cluster, tmp_path / "keys")
    try:
        expected = send_profile(client, seed=25)
        session_id = client.session_id
        assert session_id is not None
        target = routed_to(cluster, session_id)
        killed = False
        for _ in range(5):  # a predict is short: try until the kill lands in the middle of one
            outcome: dict[str, Any] = {}
            worker = threading.Thread(target=lambda o=outcome: o.update(time=client.predict()))
            worker.start()
            deadline = time.monotonic() + 30
            while worker.is_alive() and time.monotonic() < deadline:
                if health(cluster.replica_urls[target])["fhe_queue"]["admitted"] > 0:
                    kill(cluster, target)
                    killed = True
                    break
                time.sleep(0.01)
            worker.join(timeout=300)
            assert outcome.get("time", -1) >= 0, outcome  # predict returned, no error
            if killed:
                break
        assert killed, "no predict was caught running"
        assert client.decrypt_verdict() is expected
        assert routed_to(cluster, session_id) != target
    finally:
        client.close()
