"""The three-party server against hostile bytes and hosts, with a real server and real OpenFHE.

OpenFHE's deserializers trust their input, so every blob a client sends is parsed in a worker
process (``threeparty.sandbox``): a blob that kills its parser is a 422 and the server, and every
other session, goes on. Mutated blobs of every kind, signed by the uploading party so that the
server has to parse them, get 204 (bytes that are still a well-formed blob of their kind: a
different key or ciphertext, which the other parties' checks catch) or 422, never a 5xx. The
protections shared with the single-key server (``fhe_server.hosts``, ``fhe_server.body``,
``fhe_server.runtime.SessionQuota``) hold here too.
"""

from __future__ import annotations

import random

import httpx
import pytest

from development.threeparty_fuzz import KINDS, mutate, stage
from tests.support.servers import running_server
from tests.threeparty.support import Kit, create, raw_parties
from threeparty import protocol

APP = "threeparty.server:app"
MUTATIONS_PER_KIND = 3


@pytest.fixture(scope="module")
def url():
    env = {"OMP_NUM_THREADS": "1", "THREEPARTY_MAX_SESSIONS": "16"}
    with running_server(None, env=env, app=APP) as base:
        yield base


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(tmp_path_factory.mktemp("identities"))


def _alive(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_a_blob_that_kills_its_parser_is_a_422_and_the_server_lives(url, kit):
    bystander = raw_parties(url, kit)
    current = stage(url, kit.identities, "public_key")
    real = current.blobs["public_key"]
    # Eight zero bytes over a length field of OpenFHE's serialization: SIGSEGV when parsed.
    killer = real[:28] + bytes(8) + real[36:]
    answer = current.upload(killer)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_blob"
    assert "killed the parser" in answer.json()["detail"]
    _alive(url)
    # The same session takes the real blob; another session was not touched.
    assert current.upload(real).status_code == 204
    assert bystander["bank"].status()["steps"]["round1"] == []
    current.party.delete()
    bystander["bank"].call("DELETE", protocol.SESSION)


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_blobs_are_refused_or_taken_never_a_5xx(url, kit, kind):
    rng = random.Random(kind)
    current = stage(url, kit.identities, kind)
    real = current.blobs[current.name]
    for _ in range(MUTATIONS_PER_KIND):
        answer = current.upload(mutate(real, rng))
        assert answer.status_code in (204, 422), answer.text
        if answer.status_code == 204:  # still a well-formed blob: the step is in
            current.party.delete()
            current = stage(url, kit.identities, kind)
            real = current.blobs[current.name]
    _alive(url)
    answer = current.upload(real)
    assert answer.status_code == 204, answer.text
    current.party.delete()


def test_a_blob_of_another_size_is_refused_before_parsing(url, kit):
    current = stage(url, kit.identities, "rotation")
    real = current.blobs["rotation"]
    answer = current.upload(real + bytes(len(real) // 10))
    assert answer.status_code == 422 and "bytes; a rotation_keys" in answer.json()["detail"]
    current.party.delete()


def test_another_media_type_is_415_and_another_host_400(url, kit):
    parties = raw_parties(url, kit)
    applicant = parties["applicant"]
    answer = applicant.call(
        "PUT", protocol.STEP, b"x", media_type="application/x-www-form-urlencoded", step="round1"
    )
    assert answer.status_code == 415 and answer.json()["code"] == "unsupported_media_type"
    rebound = httpx.get(f"{url}/health", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and "evil.example" in rebound.json()["detail"]
    applicant.call("DELETE", protocol.SESSION)


def test_a_client_over_its_session_quota_gets_429_with_retry_after(kit):
    env = {
        "OMP_NUM_THREADS": "1",
        "THREEPARTY_SESSION_QUOTA": "2",
        "THREEPARTY_SESSION_QUOTA_EXEMPT": "",
        "THREEPARTY_SANDBOX_WORKERS": "1",
    }
    with running_server(None, env=env, app=APP) as base:
        for _ in range(2):
            create(base, kit)
        refused = httpx.post(f"{base}{protocol.SESSIONS}", json={"roster": kit.roster})
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_sessions"
        assert int(refused.headers["retry-after"]) >= 1
