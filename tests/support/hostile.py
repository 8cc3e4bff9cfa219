"""What the hostile-request tests share: the live server, the bystander, the cases, the checks.

``Live`` is the server process every hostile test attacks (with its store and a client),
``Bystander`` a session opened before the attacks whose verdict must stay right
(``assert_still_serving``). ``CASE_COUNTS`` is how many cases each category tries (asserted by
each test, reported in the README). The fixtures that build them are in
``tests/server/hostile/conftest.py``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

import settings
from tests.support.applications import Profile
from tests.support.http import OCTET, open_session, upload
from tests.support.kit import Kit

# Cases tried per category (asserted at the end of each test; reported in the README).
CASE_COUNTS = {
    "random_or_empty_bodies": 40,
    "truncated_or_extended": 32,
    "header_bit_flips": 21,
    "ciphertext_body_bit_flips": 16,
    "evaluation_key_body_bit_flips": 10,
    "wrong_party_or_shape": 20,
    "other_key_set": 5,
    "other_circuit_keys": 3,
    "over_limit_streaming": 12,
    "unknown_party": 12,
    "bad_session_id": 84,
    "bad_token": 60,
    "after_delete": 7,
    "out_of_order": 9,
}
SESSION_ROUTES = [
    ("PUT", "/sessions/{id}/inputs/applicant"),
    ("POST", "/sessions/{id}/predict"),
    ("GET", "/sessions/{id}/output"),
    ("POST", "/sessions/{id}/explain"),
    ("DELETE", "/sessions/{id}"),
    ("PUT", "/sessions/{id}/inputs/bank"),
]
CIPHERTEXT_NAMES = [*settings.PARTIES, "candidates"]
HEALTH_SECONDS = 1.0
# A streamed body is "not read whole" if the client could push at most this much of it before
# the answer (socket buffers on both sides hold a few MB).
STREAM_READ_BOUND_BYTES = 64 * 1024 * 1024


@dataclass
class Live:
    """A running server, its store and a client."""

    base_url: str
    store_dir: Path
    http: httpx.Client


@dataclass
class Bystander:
    """A session opened before the attacks, with its inputs uploaded."""

    session_id: str
    auth: dict[str, str]
    kit: Kit
    profile: Profile


def assert_still_serving(live: Live, bystander: Bystander) -> None:
    """/health answers fast and the bystander session still gets its own correct verdict."""
    start = time.perf_counter()
    health = live.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert time.perf_counter() - start < HEALTH_SECONDS
    url = f"/sessions/{bystander.session_id}"
    assert live.http.post(f"{url}/predict", headers=bystander.auth).status_code == 200
    output = live.http.get(f"{url}/output", headers=bystander.auth)
    assert output.status_code == 200
    assert int(bystander.kit.decrypt(output.content)) == int(bystander.profile.verdict())


def attack_session(live: Live, kit: Kit, encrypted: dict[str, bytes]) -> tuple[str, dict]:
    """A session of ``kit`` holding the applicant's and the bank's ciphertexts."""
    session_id, auth = open_session(live.http, kit.evaluation_keys)
    upload(live.http, session_id, auth, {p: encrypted[p] for p in ("applicant", "bank")})
    return session_id, auth


def send(live: Live, name: str, session_id: str, auth: dict, body: bytes) -> httpx.Response:
    """Send ``body`` where the ciphertext ``name`` (or "evaluation_keys") goes."""
    if name == "evaluation_keys":
        return live.http.post("/sessions", content=body, headers=OCTET)
    if name == "candidates":
        return live.http.post(
            f"/sessions/{session_id}/explain", content=body, headers={**auth, **OCTET}
        )
    return live.http.put(
        f"/sessions/{session_id}/inputs/{name}", content=body, headers={**auth, **OCTET}
    )


def genuine(kit: Kit, encrypted: dict[str, bytes], name: str) -> bytes:
    return kit.evaluation_keys if name == "evaluation_keys" else encrypted[name]


def flip(data: bytes, byte: int, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[byte] ^= 1 << bit
    return bytes(flipped)


def session_files(store_dir: Path) -> dict[str, str]:
    """Every file below a directory with the SHA-256 of its content.

    ``meta.json`` files are left out: every authenticated call updates their last-use time.
    """
    return {
        str(path.relative_to(store_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(store_dir.rglob("*"))
        if path.is_file() and path.name != "meta.json"
    }
