"""Each error status of the FHE server's REST contract, produced by a real request (in process).

401, 404, 409, 413, 422 and 503 through TestClient with real keys and ciphertexts, an unexpected
error as a JSON 500 without a trace, the Host allow-list, and the refusal to start with
artifacts of other versions or without them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import settings
from contracts.wire import bearer
from fhe_server.api import create_app
from settings import ServerSettings
from tests.support.http import OCTET, assert_error, open_session, upload
from tests.support.inprocess import app_client, service_of
from tests.support.kit import WIRE, Kit

pytestmark = pytest.mark.slow


SESSION_ROUTES: list[tuple[str, str]] = [
    ("put", "/sessions/{id}/inputs/applicant"),
    ("post", "/sessions/{id}/predict"),
    ("get", "/sessions/{id}/output"),
    ("post", "/sessions/{id}/explain"),
    ("delete", "/sessions/{id}"),
]


def call(http: Any, method: str, path: str, headers: dict, content: bytes | None = None) -> Any:
    if method in ("put", "post"):
        return http.request(method, path, headers=headers, content=content or b"")
    return http.request(method, path, headers=headers)


def test_401_missing_or_wrong_token_on_every_session_route(client: TestClient, kit: Kit) -> None:
    session_id, _ = open_session(client, kit.evaluation_keys)
    _, other_auth = open_session(client, kit.evaluation_keys)
    for method, template in SESSION_ROUTES:
        path = template.format(id=session_id)
        for headers in (
            {},
            {"Authorization": ""},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            bearer("not-the-token"),
            other_auth,  # a real token, of another session
        ):
            response = call(client, method, path, headers)
            assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    assert (service_of(client).store.root / session_id).is_dir()  # DELETE refused


def test_404_unknown_expired_or_path_like_session(client: TestClient, kit: Kit) -> None:
    _, auth = open_session(client, kit.evaluation_keys)
    store_root = service_of(client).store.root
    before = sorted(p.name for p in store_root.parent.rglob("*"))
    unknown_ids = [
        "0" * 32,
        "A" * 32,  # upper case is not an id we issue
        "0" * 31,
        "..",
        "%2e%2e",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "meta.json",
        "0" * 32 + "%00",
    ]
    for session_id in unknown_ids:
        for method, template in SESSION_ROUTES:
            response = call(client, method, template.format(id=session_id), auth)
            assert response.status_code == 404, (session_id, method, response.text)
            assert "Traceback" not in response.text
    assert sorted(p.name for p in store_root.parent.rglob("*")) == before


def test_404_after_idle_expiry_and_expired_sessions_are_purged(tmp_path: Path, kit: Kit) -> None:
    with app_client(store_dir=tmp_path / "store", session_ttl_seconds=1.0) as test_client:
        service = service_of(test_client)
        session_id, auth = open_session(test_client, kit.evaluation_keys)
        assert_error(test_client.get(f"/sessions/{session_id}/output", headers=auth), 409)

        # Nobody touches the session: the periodic purge (every second here) removes it.
        def gone() -> bool:
            on_disk = (service.store.root / session_id).exists()
            return not on_disk and session_id not in service.key_cache

        deadline = time.monotonic() + 5
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(), "the periodic purge did not remove the session and its cached keys"
        assert_error(test_client.get(f"/sessions/{session_id}/output", headers=auth), 404)


@pytest.mark.parametrize("limit", ["max_sessions", "disk_budget_bytes"])
def test_503_beyond_a_limit_and_the_live_session_stays(
    tmp_path: Path, kit: Kit, limit: str
) -> None:
    one_session = WIRE["evaluation_keys"]["bytes"] + sum(WIRE[p]["bytes"] for p in settings.PARTIES)
    overrides: dict[str, Any] = {"max_sessions": 1} if limit == "max_sessions" else {}
    if limit == "disk_budget_bytes":
        overrides["disk_budget_bytes"] = int(1.5 * one_session) + 64 * 1024
    ttl = 3600.0
    with app_client(
        store_dir=tmp_path / "store", session_ttl_seconds=ttl, **overrides
    ) as test_client:
        oldest, oldest_auth = open_session(test_client, kit.evaluation_keys)
        refused = test_client.post("/sessions", content=kit.evaluation_keys, headers=OCTET)
        assert_error(refused, 503, "sessions")
        assert 0 < int(refused.headers["Retry-After"]) <= ttl  # when the live one would expire
        assert_error(test_client.get(f"/sessions/{oldest}/output", headers=oldest_auth), 409)
        service = service_of(test_client)
        assert oldest in service.key_cache
        assert service.store.session_ids() == [oldest]
        # Once the live session is deleted, there is room again.
        assert test_client.delete(f"/sessions/{oldest}", headers=oldest_auth).status_code == 204
        newest, _ = open_session(test_client, kit.evaluation_keys)
        assert service.store.session_ids() == [newest]


def test_409_steps_out_of_order(client: TestClient, kit: Kit, ciphertexts: dict) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    url = f"/sessions/{session_id}"

    def put(party: str) -> None:
        response = client.put(
            f"{url}/inputs/{party}", content=ciphertexts[party], headers={**auth, **OCTET}
        )
        assert response.status_code == 204

    assert_error(client.post(f"{url}/predict", headers=auth), 409, "applicant")
    assert_error(client.get(f"{url}/output", headers=auth), 409, "predict")
    explain = {"content": ciphertexts["candidates"], "headers": {**auth, **OCTET}}
    assert_error(client.post(f"{url}/explain", **explain), 409, "applicant")
    put("credit_bureau")
    assert_error(client.post(f"{url}/explain", **explain), 409, "applicant, bank")
    put("applicant")
    assert_error(client.post(f"{url}/predict", headers=auth), 409, "bank")
    assert_error(client.post(f"{url}/explain", **explain), 409, "bank")
    put("bank")
    assert_error(client.get(f"{url}/output", headers=auth), 409)
    assert client.post(f"{url}/predict", headers=auth).status_code == 200
    assert client.get(f"{url}/output", headers=auth).status_code == 200
    put("bank")  # same bytes again: still a new input, the verdict must be recomputed
    assert_error(client.get(f"{url}/output", headers=auth), 409, "predict")


def test_413_evaluation_keys_over_a_lowered_limit(tmp_path: Path, kit: Kit) -> None:
    with app_client(store_dir=tmp_path / "store", max_evaluation_key_bytes=1_000_000) as http:
        assert_error(http.post("/sessions", content=kit.evaluation_keys), 413, "limit")
        assert service_of(http).store.session_ids() == []


def test_413_ciphertexts_over_a_lowered_limit(tmp_path: Path, kit: Kit, ciphertexts: dict) -> None:
    with app_client(store_dir=tmp_path / "store", max_ciphertext_bytes=100) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)
        for party in settings.PARTIES:
            response = http.put(
                f"/sessions/{session_id}/inputs/{party}",
                content=ciphertexts[party],
                headers={**auth, **OCTET},
            )
            assert_error(response, 413, "limit")
        response = http.post(
            f"/sessions/{session_id}/explain",
            content=ciphertexts["candidates"],
            headers={**auth, **OCTET},
        )
        assert_error(response, 413, "limit")


def garbage(length: int, prefix_hex: str = "", seed: int = 0) -> bytes:
    prefix = bytes.fromhex(prefix_hex)
    body = np.random.default_rng(seed).integers(0, 256, length - len(prefix), dtype=np.uint8)
    return prefix + body.tobytes()


def test_422_evaluation_keys_that_are_not_this_models(client: TestClient, kit: Kit) -> None:
    spec = WIRE["evaluation_keys"]
    bad_keys = [
        b"",
        b"hello",
        kit.evaluation_keys[:-1],  # truncated
        kit.evaluation_keys + b"\0",  # one byte too many
        garbage(spec["bytes"]),  # right length, wrong header
        garbage(spec["bytes"], spec["prefix_hex"], seed=1),  # right header, garbage body
    ]
    for body in bad_keys:
        assert_error(client.post("/sessions", content=body, headers=OCTET), 422, "evaluation keys")
    assert service_of(client).store.session_ids() == []


def test_422_ciphertexts_of_the_wrong_party_shape_or_garbage(
    client: TestClient, kit: Kit, ciphertexts: dict
) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    url = f"/sessions/{session_id}"
    wrong = {  # each party gets another input's ciphertext
        "applicant": ciphertexts["bank"],
        "bank": ciphertexts["credit_bureau"],
        "credit_bureau": ciphertexts["candidates"],
    }
    for party in settings.PARTIES:
        spec = WIRE[party]
        for body in (
            wrong[party],
            b"",
            ciphertexts[party] + b"\0",
            garbage(spec["bytes"], seed=2),
            garbage(spec["bytes"], spec["prefix_hex"], seed=3),
        ):
            response = client.put(f"{url}/inputs/{party}", content=body, headers={**auth, **OCTET})
            assert_error(response, 422, party)
    upload(client, session_id, auth, ciphertexts)
    for body in (
        ciphertexts["credit_bureau"],  # one row instead of the candidates
        garbage(WIRE["candidates"]["bytes"], WIRE["candidates"]["prefix_hex"], seed=4),
    ):
        assert_error(
            client.post(f"{url}/explain", content=body, headers={**auth, **OCTET}),
            422,
            "candidates",
        )


def test_422_unknown_party(client: TestClient, kit: Kit, ciphertexts: dict) -> None:
    session_id, auth = open_session(client, kit.evaluation_keys)
    for party in ("insurer", "APPLICANT", "applicant.bin", "%2e%2e"):
        response = client.put(
            f"/sessions/{session_id}/inputs/{party}",
            content=ciphertexts["applicant"],
            headers={**auth, **OCTET},
        )
        assert_error(response, 422, "party")
    assert sorted(p.name for p in (service_of(client).store.root / session_id).iterdir()) == [
        "evaluation_keys.bin",
        "meta.json",
    ]


def test_unexpected_errors_answer_500_without_a_trace(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(ServerSettings(store_dir=tmp_path / "store", allowed_hosts=["testserver"]))
    with TestClient(app, raise_server_exceptions=False) as http:
        session_id, auth = open_session(http, kit.evaluation_keys)

        def broken(*_: Any) -> bytes:
            raise ValueError("secret internal state")

        monkeypatch.setattr(service_of(http).store, "read_output", broken)
        response = http.get(f"/sessions/{session_id}/output", headers=auth)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}


def test_only_accepted_host_names_are_answered(tmp_path: Path) -> None:
    # Default settings: loopback names only, any port; TestClient's own "testserver" is refused.
    with TestClient(create_app(ServerSettings(store_dir=tmp_path / "store"))) as http:
        assert_error(http.get("/health"), 400, "host")
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "127.0.0.1.evil.example", "[::2]", "localhost.evil"):
            assert_error(http.get("/health", headers={"Host": host}), 400, "host")
    # A deployment's names, with a wildcard for subdomains.
    config = ServerSettings(store_dir=tmp_path / "store", allowed_hosts=["*.example.org", "a.b"])
    with TestClient(create_app(config)) as http:
        for host in ("fhe.example.org:443", "a.b"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("example.org.evil", "evilexample.org", "localhost"):
            assert_error(http.get("/health", headers={"Host": host}), 400, "host")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda card: card["versions"].update({"concrete-python": "2.9.0"}), "concrete-python"),
        (lambda card: card["versions"].update({"concrete-ml": "1.8.0"}), "concrete-ml"),
        (lambda card: card["versions"].update({"python": "3.10.14"}), "python"),
    ],
)
def test_refuses_to_start_with_artifacts_of_other_versions(
    tmp_path: Path, edit: Callable[[dict], None], message: str
) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    edit(card)
    (deployment / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(RuntimeError, match=f"refusing to start.*{message}"):
        with app_client(store_dir=tmp_path / "store", deployment_dir=deployment):
            pass


def test_refuses_to_start_without_artifacts(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    (deployment / "server.zip").unlink()
    with pytest.raises(RuntimeError, match="missing.*server.zip"):
        with app_client(store_dir=tmp_path / "store", deployment_dir=deployment):
            pass


def test_python_patch_version_does_not_matter(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment"
    shutil.copytree(settings.DEPLOYMENT_DIR, deployment)
    card = json.loads((deployment / "model_card.json").read_text())
    major, minor, *_ = card["versions"]["python"].split(".")
    card["versions"]["python"] = f"{major}.{minor}.999"
    (deployment / "model_card.json").write_text(json.dumps(card))
    with app_client(store_dir=tmp_path / "store", deployment_dir=deployment) as http:
        assert http.get("/health").status_code == 200
