"""A portfolio's step: ``POST /sessions/{id}/batch`` decides 16 applications in one FHE run.

Through TestClient with real keys and ciphertexts (the module's ``predict_batch``), and the
client library's ``decide_batch`` against a real uvicorn server: every verdict must be the clear
tree's on the same application, and every bad request a 4xx with a JSON reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import backend
import settings
from contracts.single_key import BATCH_PATH, BATCH_ROWS, EXECUTION_TIME_HEADER, OUTPUT_PATH
from tests.support.applications import varied_profiles
from tests.support.http import OCTET, assert_client_error, open_session
from tests.support.inprocess import app_client
from tests.support.kit import Kit
from tests.support.servers import running_server


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(store_dir=tmp_path / "store") as client:
        yield client


def _batch_body(kit: Kit, profiles: list) -> bytes:
    """The three parties' batch ciphertexts of ``BATCH_ROWS`` profiles, one after the other."""
    rows = [
        np.stack([kit.preprocessors[party].transform(p.parts()[party]) for p in profiles])
        for party in settings.PARTIES
    ]
    values = kit.client.encrypt(*rows, function_name="predict_batch")
    return b"".join(value.serialize() for value in values)


@pytest.mark.slow
def test_a_batch_gives_the_clear_verdict_of_every_application(http: TestClient, kit: Kit) -> None:
    profiles = varied_profiles(BATCH_ROWS, seed=3)
    expected = [int(p.verdict()) for p in profiles]
    assert 0 < sum(expected) < BATCH_ROWS  # both verdicts are in the batch
    session_id, auth = open_session(http, kit.evaluation_keys)
    response = http.post(
        BATCH_PATH.format(session_id=session_id),
        content=_batch_body(kit, profiles),
        headers={**auth, **OCTET},
    )
    assert response.status_code == 200, response.text
    assert float(response.headers[EXECUTION_TIME_HEADER]) > 0
    verdicts = np.asarray(kit.decrypt(response.content, function_name="predict_batch"))
    assert verdicts.reshape(-1).tolist() == expected
    # The session's one-application state is not touched: no verdict to fetch.
    output = http.get(OUTPUT_PATH.format(session_id=session_id), headers=auth)
    assert_client_error(output, 409)


@pytest.mark.slow
def test_bad_batch_requests_are_4xx_with_a_reason(http: TestClient, kit: Kit) -> None:
    session_id, auth = open_session(http, kit.evaluation_keys)
    path = BATCH_PATH.format(session_id=session_id)
    body = _batch_body(kit, varied_profiles(BATCH_ROWS, seed=3))

    assert_client_error(http.post(path, content=body, headers=OCTET), 401)
    detail = assert_client_error(http.post(path, content=body[:-1], headers={**auth, **OCTET}), 422)
    assert f"exactly {len(body)} bytes" in detail
    assert_client_error(http.post(path, content=body + b"\0", headers={**auth, **OCTET}), 422)
    # The parties' ciphertexts in the wrong order: the same length, not this model's inputs.
    swapped = body[-100:] + body[:-100]
    assert_client_error(http.post(path, content=swapped, headers={**auth, **OCTET}), 422)
    # A one-application ciphertext where a batch belongs.
    single = kit.encrypt(varied_profiles(1)[0])
    one = single["applicant"] + single["bank"] + single["credit_bureau"]
    assert_client_error(http.post(path, content=one, headers={**auth, **OCTET}), 422)
    text = {**auth, "Content-Type": "text/plain"}
    assert_client_error(http.post(path, content=body, headers=text), 415)
    big = b"\0" * (2 * 1024 * 1024)
    assert_client_error(http.post(path, content=big, headers={**auth, **OCTET}), 413)
    other = "0" * 32
    assert_client_error(
        http.post(BATCH_PATH.format(session_id=other), content=body, headers={**auth, **OCTET}),
        {401, 404},
    )
    # After all that the session still decides a batch.
    response = http.post(path, content=body, headers={**auth, **OCTET})
    assert response.status_code == 200, response.text


def test_decide_batch_takes_1_to_16_applications() -> None:
    client = backend.CreditScoringClient("http://127.0.0.1:9", Path("/nonexistent"))
    for count in (0, BATCH_ROWS + 1):
        with pytest.raises(ValueError, match=f"1 to {BATCH_ROWS} applications"):
            client.decide_batch([varied_profiles(1)[0].parts()] * count)


@pytest.mark.slow
def test_the_client_library_decides_a_short_batch_over_http(tmp_path: Path) -> None:
    profiles = varied_profiles(5, seed=3)
    with running_server(store_dir=tmp_path / "store") as url:
        client = backend.CreditScoringClient(url, tmp_path / "keys")
        try:
            client.generate_keys()
            verdicts = client.decide_batch([p.parts() for p in profiles])
            assert client.batch_fhe_execution_time is not None
        finally:
            client.close()
    assert verdicts == [p.verdict() for p in profiles]  # the padding rows dropped
