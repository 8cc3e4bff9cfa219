"""Scale-out (issue 11): replicas of the real server over a real redis-server, behind real nginx.

One cluster for the module (``fhe_server.cluster.Cluster``: Redis on a free loopback port with
persistence off, three single-worker ``uvicorn server:app`` replicas with ``FHE_STORE_URL`` set,
nginx hashing on the session id) and one client key set. Each test deletes its sessions, so the
replicas' key caches are empty between tests. The tests that stop parts of the cluster come last:
one kills two of the three replicas, the next restarts Redis, the last kills the third.

Without redis-server or nginx the module is skipped; with ``REQUIRE_CLUSTER=1`` (set by
``.ci/run``, which installs both) a missing binary is an error instead, so CI never skips it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import settings
from backend import CreditScoringClient
from backend import SessionNotFoundError as ClientSessionNotFoundError
from contracts.wire import bearer
from development.reference import clear_explain, clear_verdict
from fhe_server.cluster import Cluster
from fhe_server.errors import (
    ServerBusyError,
    SessionNotFoundError,
    StepOutOfOrderError,
    TooManySessionsError,
)
from fhe_server.nginx_config import MAX_BODY_BYTES
from fhe_server.redis_store import RedisSessionStore, blob_key, meta_key
from tests.support.applications import CANDIDATE_ROWS, Profile, refused_profile, varied_profiles
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

KEY_CACHE_SIZE = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    env = {"FHE_KEY_CACHE_SIZE": str(KEY_CACHE_SIZE), "FHE_STORE_DIR": str(workdir / "unused")}
    with Cluster(replicas=3, env=env, workdir=workdir) as running:
        yield running


@pytest.fixture(scope="module")
def store(cluster: Cluster) -> Iterator[RedisSessionStore]:
    """The replicas' Redis, seen through the store (no listener), to read versions and TTLs."""
    inspector = RedisSessionStore(cluster.redis_url, ttl_seconds=3600, max_sessions=100)
    yield inspector
    inspector.close()


def two_replicas(cluster: Cluster) -> tuple[httpx.Client, httpx.Client]:
    """Clients of the first two replicas, without nginx."""
    first, second = cluster.replica_urls[:2]
    return (
        httpx.Client(base_url=first, timeout=TIMEOUT),
        httpx.Client(base_url=second, timeout=TIMEOUT),
    )


def predict_verdict(http: httpx.Client, session_id: str, auth: dict[str, str], kit: Kit) -> int:
    response = http.post(f"/sessions/{session_id}/predict", headers=auth)
    assert response.status_code == 200, response.text
    output = http.get(f"/sessions/{session_id}/output", headers=auth)
    assert output.status_code == 200, output.text
    return int(kit.decrypt(output.content))


def explain_verdicts(
    http: httpx.Client, session_id: str, auth: dict[str, str], kit: Kit
) -> list[int]:
    """POST explain with the six candidate rows; return their decrypted verdicts."""
    candidates = kit.encrypt_candidates()
    response = http.post(
        f"/sessions/{session_id}/explain", content=candidates, headers={**auth, **OCTET}
    )
    assert response.status_code == 200, response.text
    verdicts = kit.decrypt(response.content, function_name="explain").reshape(-1).tolist()
    assert len(verdicts) == len(CANDIDATE_ROWS)
    return verdicts


def flip_profile() -> tuple[Profile, Profile]:
    """Two applications that differ only in the credit bureau's input, with opposite verdicts."""
    for profile in varied_profiles(20):
        for years in settings.YEARS_EMPLOYED_BINS:
            other = {"employed": True, "years_employed": years}
            if clear_verdict(profile.applicant, profile.bank, other) != profile.verdict():
                return profile, Profile(profile.applicant, profile.bank, other)
    raise AssertionError("no profile whose verdict depends on the credit bureau's input")


# ---------------------------------------------------------------------------------------------
# Replicas share the sessions
# ---------------------------------------------------------------------------------------------
def test_a_flow_whose_requests_alternate_between_replicas(cluster: Cluster, kit: Kit) -> None:
    profile = refused_profile()
    first, second = two_replicas(cluster)
    with first, second:
        session_id, auth = open_session(first, kit.evaluation_keys)
        encrypted = kit.encrypt(profile)
        for index, party in enumerate(settings.PARTIES):
            upload((second, first)[index % 2], session_id, auth, {party: encrypted[party]})
        assert second.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
        output = first.get(f"/sessions/{session_id}/output", headers=auth)
        assert output.status_code == 200, output.text
        assert int(kit.decrypt(output.content)) == int(profile.verdict()) == 0
        verdicts = explain_verdicts(second, session_id, auth, kit)
        expected = [
            int(clear_verdict(profile.applicant, profile.bank, row)) for row in CANDIDATE_ROWS
        ]
        assert verdicts == expected
        assert first.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
        assert second.get(f"/sessions/{session_id}/output", headers=auth).status_code == 404
    names = {health(url)["replica"] for url in cluster.replica_urls}
    assert names == {"replica-1", "replica-2", "replica-3"}


def test_hashing_prepares_each_sessions_keys_at_most_once(cluster: Cluster, kit: Kit) -> None:
    before = [health(url)["key_cache"] for url in cluster.replica_urls]
    profiles = varied_profiles(2, seed=11)
    sessions = []
    with httpx.Client(base_url=cluster.url, timeout=TIMEOUT) as http:
        for profile in profiles:
            session_id, auth = open_session(http, kit.evaluation_keys)
            sessions.append((session_id, auth))
            upload(http, session_id, auth, kit.encrypt(profile))
            for _ in range(3):  # three FHE runs on the session's keys
                assert predict_verdict(http, session_id, auth, kit) == int(profile.verdict())
        after = [health(url)["key_cache"] for url in cluster.replica_urls]
        for session_id, auth in sessions:
            assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    misses = sum(a["misses"] - b["misses"] for a, b in zip(after, before, strict=True))
    hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before, strict=True))
    assert misses <= len(sessions), (before, after)  # at most one preparation per session
    assert hits >= 3 * len(sessions) - misses
    # nginx sent every request of a session to one replica (its access log names the upstream).
    log = (cluster.workdir / "access.log").read_text(encoding="utf-8").splitlines()
    for session_id, _ in sessions:
        upstreams = {line.split("upstream=")[1].split()[0] for line in log if session_id in line}
        assert len(upstreams) == 1, upstreams


def test_three_parties_times_40_concurrent_uploads_leave_version_120(
    cluster: Cluster, kit: Kit, store: RedisSessionStore
) -> None:
    encrypted = kit.encrypt(varied_profiles(1)[0])
    clients = [httpx.Client(base_url=url, timeout=TIMEOUT) for url in cluster.replica_urls]
    try:
        session_id, auth = open_session(clients[0], kit.evaluation_keys)
        jobs = [(party, n) for n in range(40) for party in settings.PARTIES]

        def put(job: tuple[str, int]) -> int:
            party, n = job
            response = clients[n % len(clients)].put(
                f"/sessions/{session_id}/inputs/{party}",
                content=encrypted[party],
                headers={**auth, **OCTET},
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(put, jobs))
        assert statuses == [204] * 120
        _, version = store.read_inputs(session_id, settings.PARTIES)
        assert version == 120
        assert clients[1].delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    finally:
        for client in clients:
            client.close()


def test_a_verdict_is_stored_only_for_the_current_inputs(
    cluster: Cluster, store: RedisSessionStore
) -> None:
    """The compare-and-set itself: a verdict of an older inputs version is refused."""
    session_id, _ = store.create(b"keys")
    try:
        for party in settings.PARTIES:
            store.put_input(session_id, party, party.encode())
        _, version = store.read_inputs(session_id, settings.PARTIES)
        store.put_input(session_id, "bank", b"newer")  # lands while "predict" runs
        with pytest.raises(StepOutOfOrderError):
            store.store_output(session_id, b"verdict of old inputs", version)
        with pytest.raises(StepOutOfOrderError):
            store.read_output(session_id)
        store.store_output(session_id, b"verdict", version + 1)
        assert store.read_output(session_id) == b"verdict"
    finally:
        store.delete(session_id)


def test_a_predict_racing_an_upload_never_yields_a_verdict_for_old_inputs(
    cluster: Cluster, kit: Kit
) -> None:
    old, new = flip_profile()
    encrypted = {id(profile): kit.encrypt(profile) for profile in (old, new)}
    first, second = two_replicas(cluster)
    rng = random.Random(5)
    outcomes = []
    with first, second:
        session_id, auth = open_session(first, kit.evaluation_keys)
        upload(first, session_id, auth, encrypted[id(old)])
        assert predict_verdict(first, session_id, auth, kit) == int(old.verdict())  # warm keys
        current = old
        for _ in range(4):
            replacement = new if current is old else old
            answers: dict[str, int] = {}

            def run_predict(answers: dict[str, int] = answers) -> None:
                answers["predict"] = first.post(
                    f"/sessions/{session_id}/predict", headers=auth
                ).status_code

            racer = threading.Thread(target=run_predict)
            racer.start()
            time.sleep(rng.uniform(0.0, 0.3))
            replaced = {"credit_bureau": encrypted[id(replacement)]["credit_bureau"]}
            upload(second, session_id, auth, replaced)
            current = replacement
            racer.join()
            assert answers["predict"] in (200, 409)
            output = second.get(f"/sessions/{session_id}/output", headers=auth)
            if output.status_code == 200:
                assert int(kit.decrypt(output.content)) == int(current.verdict())
            else:
                assert output.status_code == 409, output.text
            outcomes.append((answers["predict"], output.status_code))
        # And once more without a race: the verdict of the current inputs.
        assert predict_verdict(second, session_id, auth, kit) == int(current.verdict())
        assert first.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    assert outcomes


# ---------------------------------------------------------------------------------------------
# Removal reaches every replica
# ---------------------------------------------------------------------------------------------
def test_a_delete_through_one_replica_is_a_404_through_the_other_which_drops_the_keys(
    cluster: Cluster, kit: Kit
) -> None:
    profile = varied_profiles(1, seed=3)[0]
    first, second = two_replicas(cluster)
    with first, second:
        session_id, auth = open_session(first, kit.evaluation_keys)
        upload(first, session_id, auth, kit.encrypt(profile))
        held = cached_keys(cluster.replica_urls[1])
        assert predict_verdict(second, session_id, auth, kit) == int(profile.verdict())
        assert cached_keys(cluster.replica_urls[1]) == held + 1
        assert first.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
        for client in (first, second):
            assert client.get(f"/sessions/{session_id}/output", headers=auth).status_code == 404
        wait_until(
            lambda: cached_keys(cluster.replica_urls[1]) == held,
            "the other replica drops the deleted session's keys",
        )


def test_an_expired_session_is_a_404_on_every_replica_which_drop_the_keys(
    cluster: Cluster, kit: Kit, store: RedisSessionStore
) -> None:
    profile = varied_profiles(1, seed=4)[0]
    clients = [httpx.Client(base_url=url, timeout=TIMEOUT) for url in cluster.replica_urls]
    try:
        held = [cached_keys(url) for url in cluster.replica_urls]
        session_id, auth = open_session(clients[0], kit.evaluation_keys)
        upload(clients[0], session_id, auth, kit.encrypt(profile))
        for client in clients:  # both replicas prepare the keys
            assert predict_verdict(client, session_id, auth, kit) == int(profile.verdict())
        assert [cached_keys(url) for url in cluster.replica_urls] == [n + 1 for n in held]
        # The end of the session's TTL, as Redis applies it (the replicas renew it on every call).
        assert store.redis.pttl(meta_key(session_id)) > 3_000_000
        store.redis.pexpire(meta_key(session_id), 1)
        store.redis.pexpire(blob_key(session_id), 1)
        time.sleep(0.05)
        for client in clients:
            assert client.get(f"/sessions/{session_id}/output", headers=auth).status_code == 404
            assert client.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 404
        wait_until(
            lambda: [cached_keys(url) for url in cluster.replica_urls] == held,
            "every replica drops the expired session's keys",
        )
    finally:
        for client in clients:
            client.close()


def test_redis_ttl_expires_idle_sessions_and_every_call_renews_it(cluster: Cluster) -> None:
    ttl = 2.0
    short = RedisSessionStore(cluster.redis_url, ttl_seconds=ttl, max_sessions=100)
    try:
        session_id, token = short.create(b"keys")
        for _ in range(4):  # used every quarter TTL, one TTL in all: stays
            time.sleep(ttl / 4)
            short.authenticate(session_id, token)
            assert short.redis.pttl(blob_key(session_id)) > ttl * 1000 / 2  # renewed
        assert short.read_evaluation_keys(session_id) == b"keys"
        time.sleep(ttl * 1.5)  # idle longer than the TTL: gone
        with pytest.raises(SessionNotFoundError):
            short.authenticate(session_id, token)
        assert short.redis.exists(meta_key(session_id), blob_key(session_id)) == 0
    finally:
        short.close()


def test_max_sessions_refuses_new_sessions_and_never_evicts_live_ones(cluster: Cluster) -> None:
    ttl = 2.0
    small = RedisSessionStore(cluster.redis_url, ttl_seconds=ttl, max_sessions=1)
    try:
        # The module's other sessions were deleted; the last test's expired one may still wait
        # for a replica's periodic purge (every 5 s), done here at once.
        small.purge_expired()
        assert small.session_ids() == []
        first, token = small.create(b"first")
        with pytest.raises(ServerBusyError) as full:
            small.create(b"second")
        assert full.value.status_code == 503
        assert 1 <= full.value.retry_after <= math.ceil(ttl)  # when the live one would expire
        small.authenticate(first, token)  # still there
        time.sleep(ttl * 1.5)  # the live one expires: its place is free again
        second, _ = small.create(b"second")
        assert small.session_ids() == [second]
        small.delete(second)
    finally:
        small.close()


def test_the_session_quota_is_shared_by_every_replica(cluster: Cluster) -> None:
    window = 60.0
    inspector = RedisSessionStore(cluster.redis_url, ttl_seconds=3600, max_sessions=100)
    try:
        # Two replicas' quotas over the same Redis, two sessions per client and window.
        first, second = (
            inspector.session_quota(limit=2, window_seconds=window, exempt=["127.0.0.1"])
            for _ in range(2)
        )
        with first.admit("203.0.113.7"):
            pass
        with pytest.raises(RuntimeError), second.admit("203.0.113.7"):
            raise RuntimeError("the creation failed")  # gives its slot back
        with second.admit("203.0.113.7"):
            pass
        for quota in (first, second):
            with pytest.raises(TooManySessionsError) as refused, quota.admit("203.0.113.7"):
                pass
            assert refused.value.status_code == 429
            assert 1 <= refused.value.retry_after <= window
        with first.admit("198.51.100.2"), second.admit("127.0.0.1"):
            pass  # another client, and an exempt one
        inspector.redis.delete("fhe:quota:203.0.113.7", "fhe:quota:198.51.100.2")
    finally:
        inspector.close()


# ---------------------------------------------------------------------------------------------
# Parts of the cluster stop
# ---------------------------------------------------------------------------------------------
def test_the_flow_finishes_when_the_replica_holding_the_session_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    profile = refused_profile()
    client = CreditScoringClient(cluster.url, key_dir=tmp_path / "keys", timeout=TIMEOUT)
    try:
        client.generate_keys()
        session_id = client.session_id
        assert session_id is not None
        client.send_applicant(**profile.applicant)
        client.send_bank(**profile.bank)
        first = routed_to(cluster, session_id)
        kill(cluster, first)  # after send_bank
        client.send_credit_bureau(**profile.credit_bureau)
        client.predict()
        second = routed_to(cluster, session_id)
        assert second != first
        kill(cluster, second)  # before decrypt and explain
        assert client.decrypt_verdict() is profile.verdict() is False
        assert client.explain() == clear_explain(
            profile.applicant, profile.bank, profile.credit_bureau
        )
        assert routed_to(cluster, session_id) not in (first, second)
    finally:
        client.close()


def test_redis_restarted_empty_is_a_404_and_the_client_starts_a_new_session(
    cluster: Cluster, tmp_path: Path
) -> None:
    profile = varied_profiles(1, seed=9)[0]
    plain = CreditScoringClient(cluster.url, key_dir=tmp_path / "plain", timeout=TIMEOUT)
    resuming = CreditScoringClient(
        cluster.url, key_dir=tmp_path / "resuming", timeout=TIMEOUT, resume_lost_sessions=True
    )
    try:
        for client in (plain, resuming):
            client.generate_keys()
            client.send_applicant(**profile.applicant)
        resuming.send_bank(**profile.bank)
        resuming.send_credit_bureau(**profile.credit_bureau)
        resuming.predict()
        lost = plain.session_id
        cluster.redis.stop()
        # Redis down: 503 with Retry-After (not a 500), through nginx and each live replica.
        live = [
            url for url, r in zip(cluster.replica_urls, cluster.replicas, strict=True) if r.alive()
        ]
        for url in (cluster.url, *live):
            response = httpx.post(f"{url}/sessions/{lost}/predict", headers=bearer("t"))
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
        cluster.start_redis()  # persistence off: every session is gone
        # By default the client raises and forgets the session (the page then asks for new keys).
        with pytest.raises(ClientSessionNotFoundError):
            plain.send_bank(**profile.bank)
        assert not plain.has_keys and plain.session_id is None
        # With resume_lost_sessions it opens a new session itself (same keys), sends the three
        # ciphertexts again, predicts again and finishes.
        before = resuming.session_id
        assert resuming.decrypt_verdict() is profile.verdict()
        assert resuming.session_id not in (before, None)
    finally:
        plain.close()
        resuming.close()


def test_nginx_answers_json_for_oversize_bodies_and_when_no_replica_answers(
    cluster: Cluster,
) -> None:
    too_large = httpx.post(
        f"{cluster.url}/sessions", content=bytes(MAX_BODY_BYTES + 1), headers=OCTET, timeout=TIMEOUT
    )
    assert too_large.status_code == 413
    assert str(MAX_BODY_BYTES) in too_large.json()["detail"]
    for index, replica in enumerate(cluster.replicas):  # the last use of the module's cluster
        if replica.alive():
            kill(cluster, index)
    response = httpx.get(f"{cluster.url}/health", timeout=TIMEOUT)
    assert response.status_code == 503
    assert response.json()["detail"] and int(response.headers["Retry-After"]) >= 1
