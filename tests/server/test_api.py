"""The FHE server's REST contract (fhe_server.api) in this process, with real keys and ciphertexts.

The app runs through TestClient (``tests.support.inprocess``); every verdict the server computes
is decrypted here and compared with the clear quantized model: health, predict with inputs
replaced, explain and the key cache, a restart on the same store, the token kept as a hash, and
the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import settings
from development.reference import clear_verdict
from settings import ServerSettings
from tests.support.applications import CANDIDATE_ROWS, VERDICT_PROFILES
from tests.support.http import OCTET, assert_error, open_session, upload
from tests.support.inprocess import app_client, service_of
from tests.support.kit import CARD, Kit

pytestmark = pytest.mark.slow


def test_health_reports_model_versions_and_parameters(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"]["versions"] == CARD["versions"]
    assert body["model"]["parameters"] == CARD["parameters"]
    assert body["model"]["input_shapes"] == CARD["input_shapes"]


def test_predict_matches_clear_model_and_new_input_replaces_old(
    client: TestClient, kit: Kit
) -> None:
    expected = [profile.verdict() for profile in VERDICT_PROFILES]
    assert set(expected) == {True, False}, "profiles must cover both verdicts"
    session_id, auth = open_session(client, kit.evaluation_keys)
    previous_output = None
    for profile, verdict in zip(VERDICT_PROFILES, expected, strict=True):
        upload(client, session_id, auth, kit.encrypt(profile))
        if previous_output is not None:
            # A replaced input makes the stored verdict stale: predict must run again.
            assert_error(client.get(f"/sessions/{session_id}/output", headers=auth), 409)
        response = client.post(f"/sessions/{session_id}/predict", headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["fhe_execution_time"] > 0
        output = client.get(f"/sessions/{session_id}/output", headers=auth)
        assert output.status_code == 200
        assert output.headers["content-type"] == "application/octet-stream"
        assert int(kit.decrypt(output.content, "predict")) == int(verdict)
        previous_output = output.content

    # Replacing only the credit bureau's input changes the verdict (not employed -> 11-18 years).
    upload(client, session_id, auth, kit.encrypt(VERDICT_PROFILES[0]))
    client.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
    first = kit.decrypt(
        client.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
    )
    replacement = kit.encrypt(VERDICT_PROFILES[2])["credit_bureau"]
    response = client.put(
        f"/sessions/{session_id}/inputs/credit_bureau",
        content=replacement,
        headers={**auth, **OCTET},
    )
    assert response.status_code == 204
    client.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
    second = kit.decrypt(
        client.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
    )
    assert (int(first), int(second)) == (int(expected[0]), int(expected[2]))


def test_explain_matches_clear_model_and_reuses_prepared_keys(
    client: TestClient, kit: Kit, ciphertexts: dict[str, bytes]
) -> None:
    service = service_of(client)
    session_id, auth = open_session(client, kit.evaluation_keys)
    assert session_id in service.key_cache  # prepared at creation
    upload(client, session_id, auth, ciphertexts)
    misses, hits = service.key_cache.misses, service.key_cache.hits

    assert client.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
    response = client.post(
        f"/sessions/{session_id}/explain",
        content=ciphertexts["candidates"],
        headers={**auth, **OCTET},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert float(response.headers["X-FHE-Execution-Time"]) > 0
    verdicts = [int(v) for v in kit.decrypt(response.content, "explain")]
    applicant, bank = VERDICT_PROFILES[0].applicant, VERDICT_PROFILES[0].bank
    expected = [int(clear_verdict(applicant, bank, row)) for row in CANDIDATE_ROWS]
    assert len(expected) == CARD["input_shapes"]["candidates"][0]
    assert set(expected) == {0, 1}, "the explained profile must have both outcomes"
    assert verdicts == expected
    # predict then explain: keys prepared once (at creation), found in the cache twice.
    assert (service.key_cache.misses, service.key_cache.hits) == (misses, hits + 2)

    assert client.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    assert session_id not in service.key_cache
    assert not (service.store.root / session_id).exists()
    assert_error(client.get(f"/sessions/{session_id}/output", headers=auth), 404)


def test_explain_needs_only_applicant_and_bank(
    client: TestClient, kit: Kit, ciphertexts: dict[str, bytes]
) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    for party in ("applicant", "bank"):
        client.put(
            f"/sessions/{session_id}/inputs/{party}",
            content=ciphertexts[party],
            headers={**auth, **OCTET},
        ).raise_for_status()
    response = client.post(
        f"/sessions/{session_id}/explain",
        content=ciphertexts["candidates"],
        headers={**auth, **OCTET},
    )
    assert response.status_code == 200, response.text
    assert len(kit.decrypt(response.content, "explain")) == len(settings.YEARS_EMPLOYED_BINS)


def test_sessions_survive_a_restart(tmp_path: Path, kit: Kit, ciphertexts: dict) -> None:
    store_dir = tmp_path / "store"
    with app_client(store_dir=store_dir) as first:
        session_id, auth = open_session(first, kit.evaluation_keys)
        upload(first, session_id, auth, ciphertexts)
        first.post(f"/sessions/{session_id}/predict", headers=auth).raise_for_status()
        output = first.get(f"/sessions/{session_id}/output", headers=auth).content
    with app_client(store_dir=store_dir) as second:
        assert session_id not in service_of(second).key_cache
        again = second.get(f"/sessions/{session_id}/output", headers=auth)
        assert again.status_code == 200 and again.content == output
        # The keys are prepared again from disk after the restart.
        assert second.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
        verdict = kit.decrypt(
            second.get(f"/sessions/{session_id}/output", headers=auth).content, "predict"
        )
        assert int(verdict) == int(VERDICT_PROFILES[0].verdict())


def test_token_is_stored_only_as_a_hash(client: TestClient, kit: Kit) -> None:
    response = client.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
    body = response.json()
    assert body["expires_in"] == ServerSettings().session_ttl_seconds
    assert len(body["token"]) >= 40  # secrets.token_urlsafe(32): 256 bits
    session_dir = service_of(client).store.root / body["session_id"]
    meta = json.loads((session_dir / "meta.json").read_text())
    assert meta["token_sha256"] == hashlib.sha256(body["token"].encode()).hexdigest()
    for file in session_dir.iterdir():
        assert body["token"].encode() not in file.read_bytes()


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    binary_routes = [
        ("/sessions", "post"),
        ("/sessions/{session_id}/inputs/{party}", "put"),
        ("/sessions/{session_id}/explain", "post"),
    ]
    for path, method in binary_routes:
        assert "application/octet-stream" in paths[path][method]["requestBody"]["content"]
    expected_codes = {
        ("/sessions", "post"): {"201", "413", "422"},
        ("/sessions/{session_id}/inputs/{party}", "put"): {"204", "401", "404", "413", "422"},
        ("/sessions/{session_id}/predict", "post"): {"200", "401", "404", "409", "503"},
        ("/sessions/{session_id}/output", "get"): {"200", "401", "404", "409"},
        ("/sessions/{session_id}/explain", "post"): {"200", "401", "409", "413", "422", "503"},
        ("/sessions/{session_id}", "delete"): {"204", "401", "404"},
    }
    for (path, method), codes in expected_codes.items():
        assert codes <= set(paths[path][method]["responses"]), (path, method)
        assert paths[path][method].get("description") or paths[path][method].get("summary")
    assert (
        "application/octet-stream"
        in (paths["/sessions/{session_id}/output"]["get"]["responses"]["200"]["content"])
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200
