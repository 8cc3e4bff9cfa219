"""Shared helpers of the hostile-input, fuzzing, load, restart and privacy tests (issue 7).

- ``Kit``: one real client key set (``fhe.Client``) that encrypts profiles and decrypts outputs,
  for tests that talk raw HTTP to the server.
- ``varied_profiles(n)``: ``n`` different applications (every field varies) whose clear verdicts
  cover both outcomes.
- ``assert_client_error``: a 4xx answer whose body is ``{"detail": <non-empty str>}``.
- ``server_process(base_url)``: the ``psutil.Process`` of a server started by ``running_server``.
- ``ForwardingTransport``: an httpx transport for ``CreditScoringClient`` that sends every
  request to the server's current address (the recording one is ``fhe_server.launcher``'s).
- ``tree_size(path)``: bytes of every file below a directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from concrete import fhe

import settings
from backend import PartyPreprocessor
from development.reference import clear_verdict
from fhe_server.protocol import CONTENT_TYPE_HEADER, OCTET_STREAM, bearer

OCTET = {CONTENT_TYPE_HEADER: OCTET_STREAM}
CARD: dict[str, Any] = json.loads(settings.MODEL_CARD_PATH.read_text(encoding="utf-8"))
WIRE: dict[str, dict[str, Any]] = CARD["wire_format"]
CANDIDATE_ROWS: list[dict[str, Any]] = [
    {"employed": True, "years_employed": years} for years in settings.YEARS_EMPLOYED_BINS
]

BASE_APPLICANT: dict[str, Any] = {
    "own_car": True,
    "own_property": False,
    "mobile_phone": True,
    "num_children": 0,
    "household_size": 2,
    "total_income": 57000.0,
    "age": 44,
    "income_type": "Working",
    "education_type": "Secondary",
    "family_status": "Married",
    "occupation_type": "Laborers",
    "housing_type": "House / apartment",
}
BASE_BANK: dict[str, Any] = {"account_age": 30}
BASE_CREDIT_BUREAU: dict[str, Any] = {"employed": True, "years_employed": "2-5"}


@dataclass(frozen=True)
class Profile:
    """One application: each party's raw fields."""

    applicant: dict[str, Any]
    bank: dict[str, Any]
    credit_bureau: dict[str, Any]

    def parts(self) -> dict[str, dict[str, Any]]:
        """The fields by party name."""
        return {"applicant": self.applicant, "bank": self.bank, "credit_bureau": self.credit_bureau}

    def verdict(self) -> bool:
        """The clear model's verdict (development.reference)."""
        return clear_verdict(self.applicant, self.bank, self.credit_bureau)


BASE_PROFILE = Profile(BASE_APPLICANT, BASE_BANK, BASE_CREDIT_BUREAU)


def varied_profiles(count: int, seed: int = 7) -> list[Profile]:
    """Return ``count`` distinct applications (the same list for the same seed).

    Every field varies from one profile to the next. With seed 7, the first 20 profiles have 16
    approvals and 4 refusals (the first refusal is at index 11).
    """
    rng = np.random.default_rng(seed)
    choices = settings.CATEGORY_VALUES
    profiles: list[Profile] = []
    seen: set[str] = set()
    while len(profiles) < count:
        applicant = {
            "own_car": bool(rng.integers(2)),
            "own_property": bool(rng.integers(2)),
            "mobile_phone": bool(rng.integers(2)),
            "num_children": int(rng.integers(0, 4)),
            "household_size": int(rng.integers(1, 6)),
            "total_income": float(rng.integers(12, 300) * 1000),
            "age": int(rng.integers(21, 68)),
            "income_type": str(rng.choice(choices["income_type"])),
            "education_type": str(rng.choice(choices["education_type"])),
            "family_status": str(rng.choice(choices["family_status"])),
            "occupation_type": str(rng.choice(choices["occupation_type"])),
            "housing_type": str(rng.choice(choices["housing_type"])),
        }
        applicant["household_size"] = max(applicant["household_size"], applicant["num_children"])
        profile = Profile(
            applicant=applicant,
            bank={"account_age": int(rng.integers(0, 61))},
            credit_bureau={
                "employed": bool(rng.random() < 0.85),
                "years_employed": str(rng.choice(settings.YEARS_EMPLOYED_BINS)),
            },
        )
        key = json.dumps(profile.parts(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            profiles.append(profile)
    return profiles


def refused_profile() -> Profile:
    """A varied profile whose clear verdict is a refusal (explain then runs on the server)."""
    return next(profile for profile in varied_profiles(20) if not profile.verdict())


# ---------------------------------------------------------------------------------------------
# Raw FHE client side
# ---------------------------------------------------------------------------------------------
@dataclass
class Kit:
    """One client key set (secret key in memory) and helpers to encrypt and decrypt with it."""

    client: Any
    evaluation_keys: bytes
    preprocessors: dict[str, PartyPreprocessor] = field(default_factory=PartyPreprocessor.load_all)

    @classmethod
    def generate(cls) -> Kit:
        """Generate a new key set from the committed client specs."""
        specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
        client = fhe.Client(specs)
        client.keygen(force=True)
        return cls(client=client, evaluation_keys=client.evaluation_keys.serialize())

    def encrypt(self, profile: Profile) -> dict[str, bytes]:
        """The three parties' serialized ciphertexts of a profile."""
        parts = profile.parts()
        quantized = [self.preprocessors[p].transform(parts[p]) for p in settings.PARTIES]
        values = self.client.encrypt(*quantized, function_name="predict")
        return {p: v.serialize() for p, v in zip(settings.PARTIES, values, strict=True)}

    def encrypt_candidates(self, rows: list[dict[str, Any]] = CANDIDATE_ROWS) -> bytes:
        """The serialized ciphertext of explain's candidate credit-bureau rows."""
        quantized = np.stack([self.preprocessors["credit_bureau"].transform(r) for r in rows])
        _, _, candidates = self.client.encrypt(None, None, quantized, function_name="explain")
        return candidates.serialize()

    def decrypt(self, data: bytes, function_name: str = "predict") -> Any:
        """Decrypt a serialized output of ``function_name``."""
        return self.client.decrypt(fhe.Value.deserialize(data), function_name=function_name)


# ---------------------------------------------------------------------------------------------
# Talking to the server
# ---------------------------------------------------------------------------------------------
def assert_client_error(response: httpx.Response, expected: int | set[int] | None = None) -> str:
    """Assert a 4xx answer with a JSON ``{"detail": str}`` body; return the detail.

    Args:
        response: the answer.
        expected: the status (or statuses) required; any 4xx when None.
    """
    allowed = {expected} if isinstance(expected, int) else expected
    status = response.status_code
    assert 400 <= status < 500, f"{status}: {response.text[:300]}"
    if allowed is not None:
        assert status in allowed, f"{status} not in {allowed}: {response.text[:300]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text
    assert "Traceback" not in response.text
    return detail


def open_session(http: httpx.Client, evaluation_keys: bytes) -> tuple[str, dict[str, str]]:
    """POST /sessions; return the session id and its Authorization header."""
    response = http.post("/sessions", content=evaluation_keys, headers=OCTET)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["session_id"], bearer(body["token"])


def upload(
    http: httpx.Client, session_id: str, auth: dict[str, str], encrypted: dict[str, bytes]
) -> None:
    """PUT each party's ciphertext found in ``encrypted``; each must answer 204."""
    for party in settings.PARTIES:
        if party in encrypted:
            response = http.put(
                f"/sessions/{session_id}/inputs/{party}",
                content=encrypted[party],
                headers={**auth, **OCTET},
            )
            assert response.status_code == 204, response.text


def full_flow_verdict(http: httpx.Client, kit: Kit, profile: Profile) -> int:
    """Open a session, upload, predict, fetch, decrypt and delete it; return the verdict."""
    session_id, auth = open_session(http, kit.evaluation_keys)
    upload(http, session_id, auth, kit.encrypt(profile))
    response = http.post(f"/sessions/{session_id}/predict", headers=auth)
    assert response.status_code == 200, response.text
    output = http.get(f"/sessions/{session_id}/output", headers=auth)
    assert output.status_code == 200, output.text
    assert http.delete(f"/sessions/{session_id}", headers=auth).status_code == 204
    return int(kit.decrypt(output.content))


def server_process(base_url: str) -> psutil.Process:
    """The child process of this test process that serves ``base_url`` (from running_server)."""
    port = base_url.rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "uvicorn" in command and port in command:
            return child
    raise LookupError(f"no uvicorn child process serves {base_url}")


def tree_size(path: Path) -> int:
    """Bytes of every regular file below ``path`` (temporary files included)."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


class PeakSampler:
    """Samples a value in a background thread and keeps the maximum (e.g. a process's RSS)."""

    def __init__(self, read: Callable[[], float], period_seconds: float = 0.05):
        self.read = read
        self.period_seconds = period_seconds
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, float(self.read()))
                self.samples += 1
            except (psutil.Error, OSError):
                pass
            self._stop.wait(self.period_seconds)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# httpx transports for CreditScoringClient
# ---------------------------------------------------------------------------------------------
class ForwardingTransport(httpx.BaseTransport):
    """Sends every request to the address ``target()`` returns now (a restarted server's port).

    The client keeps one fixed ``server_url``; the scheme, host and port of each request are
    replaced by those of the current server.
    """

    def __init__(self, target: Callable[[], str]):
        self.target = target
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        current = httpx.URL(self.target())
        request.url = request.url.copy_with(
            scheme=current.scheme, host=current.host, port=current.port
        )
        request.headers["Host"] = current.netloc.decode("ascii")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
