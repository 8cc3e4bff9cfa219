"""Hostile bodies against a real server process: bytes that are not what the route expects.

Random and empty bodies, truncated, extended and bit-flipped ciphertexts and keys (bit flips past
the evaluation keys' header too), ciphertexts of the wrong party or of another key set,
evaluation keys of another circuit, and bodies over the limits sent streaming. Each gets a 4xx
with a JSON ``{"detail": str}`` (or, for what no one can tell from a valid request without the
secret key, a 2xx), never a 5xx nor a crash; the fixtures and the checks after each test are in
this folder's conftest and ``tests.support.hostile``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from concrete import fhe

import settings
from contracts.wire import bearer
from tests.support.applications import EXAMPLE_PROFILE, varied_profiles
from tests.support.hostile import (
    CASE_COUNTS,
    CIPHERTEXT_NAMES,
    STREAM_READ_BOUND_BYTES,
    Bystander,
    Live,
    assert_still_serving,
    attack_session,
    flip,
    genuine,
    send,
    session_files,
)
from tests.support.http import OCTET, assert_client_error, full_flow_verdict, open_session, upload
from tests.support.kit import WIRE, Kit
from tests.support.processes import server_process
from tests.support.servers import running_server

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# Bytes that are not what the route expects
# ---------------------------------------------------------------------------------------------
def test_random_and_empty_bodies_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    before = session_files(live.store_dir / session_id)
    sessions_before = sorted(p.name for p in live.store_dir.iterdir())
    rng = np.random.default_rng(11)
    tried = []
    for name in ["evaluation_keys", *CIPHERTEXT_NAMES]:
        spec = WIRE[name]
        prefix = bytes.fromhex(spec["prefix_hex"])
        length = spec["bytes"]
        bodies = {
            "empty": b"",
            "one random byte": rng.bytes(1),
            "100 random bytes": rng.bytes(100),
            "text": b"hello, server",
            "JSON fields": b'{"total_income": 1, "occupation_type": "Laborers"}',
            "zeros of the exact length": bytes(length),
            "random bytes of the exact length": rng.bytes(length),
            "header then random bytes": prefix + rng.bytes(length - len(prefix)),
        }
        for label, body in bodies.items():
            response = send(live, name, session_id, auth, body)
            assert_client_error(response, 422)
            tried.append((name, label))
    # Nothing was stored: no new session, the attacked session's files are unchanged.
    assert sorted(p.name for p in live.store_dir.iterdir()) == sessions_before
    assert session_files(live.store_dir / session_id) == before
    assert len(tried) == CASE_COUNTS["random_or_empty_bodies"]
    assert_still_serving(live, bystander)


def test_truncated_or_extended_keys_and_ciphertexts_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    tried = []
    keys = kit_a.evaluation_keys
    for body in (keys[:1], keys[:32], keys[:64], keys[:65], keys[: len(keys) // 2], keys[:-1]):
        assert "exactly" in assert_client_error(send(live, "evaluation_keys", "", {}, body), 422)
        tried.append(("evaluation_keys", len(body)))
    for body in (keys + b"\0", keys + bytes(4096)):
        assert_client_error(send(live, "evaluation_keys", "", {}, body), 422)
        tried.append(("evaluation_keys", len(body)))
    for name in CIPHERTEXT_NAMES:
        data = encrypted_a[name]
        prefix_length = len(bytes.fromhex(WIRE[name]["prefix_hex"]))
        cuts = (1, prefix_length - 1, prefix_length, len(data) // 2, len(data) - 1)
        for body in [data[:cut] for cut in cuts] + [data + b"\0"]:
            assert_client_error(send(live, name, session_id, auth, body), 422)
            tried.append((name, len(body)))
    assert len(tried) == CASE_COUNTS["truncated_or_extended"]
    assert_still_serving(live, bystander)


def test_bit_flips_in_a_header_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    tried = []
    for name in ["evaluation_keys", *CIPHERTEXT_NAMES]:
        data = genuine(kit_a, encrypted_a, name)
        prefix_length = len(bytes.fromhex(WIRE[name]["prefix_hex"]))
        if name == "evaluation_keys":
            positions = [0, 8, 20, 40, prefix_length - 1]
        else:
            positions = [0, prefix_length // 3, 2 * prefix_length // 3, prefix_length - 1]
        for position in positions:
            body = flip(data, position, bit=position % 8)
            detail = assert_client_error(send(live, name, session_id, auth, body), 422)
            assert "header" in detail
            tried.append((name, position))
    assert len(tried) == CASE_COUNTS["header_bit_flips"]
    assert_still_serving(live, bystander)


def test_bit_flips_in_a_ciphertext_body_never_break_the_server(
    live: Live, kit_a: Kit, kit_b: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    """A flipped bit past the header may go unnoticed (no one can check it without the secret
    key): the server then computes on it. Whatever it does, it answers 2xx or 4xx."""
    encrypted_b = {**kit_b.encrypt(EXAMPLE_PROFILE), "candidates": kit_b.encrypt_candidates()}
    rng = np.random.default_rng(5)
    outcomes: Counter[str] = Counter()
    tried = []
    for name in CIPHERTEXT_NAMES:
        data = encrypted_a[name]
        prefix_length = len(bytes.fromhex(WIRE[name]["prefix_hex"]))
        beyond = np.arange(prefix_length, len(data))
        other = np.frombuffer(encrypted_b[name], dtype=np.uint8)[beyond]
        same = beyond[np.frombuffer(data, dtype=np.uint8)[beyond] == other]  # structure
        differ = beyond[np.frombuffer(data, dtype=np.uint8)[beyond] != other]  # payload
        positions = [*rng.choice(same, 2, replace=False), *rng.choice(differ, 2, replace=False)]
        session_id, auth = attack_session(live, kit_a, encrypted_a)
        if name != "candidates":
            upload(live.http, session_id, auth, {"credit_bureau": encrypted_a["credit_bureau"]})
        for position in positions:
            body = flip(data, int(position), bit=int(position) % 8)
            response = send(live, name, session_id, auth, body)
            tried.append((name, int(position)))
            if name == "candidates":
                outcome = "explain ran" if response.status_code == 200 else "refused"
                if response.status_code == 200:
                    kit_a.decrypt(response.content, "explain")  # garbage or valid, but decrypts
                else:
                    assert_client_error(response, 422)
                outcomes[outcome] += 1
                continue
            if response.status_code != 204:
                assert_client_error(response, 422)
                outcomes["refused at upload"] += 1
                continue
            predicted = live.http.post(f"/sessions/{session_id}/predict", headers=auth)
            if predicted.status_code != 200:
                assert_client_error(predicted, 422)
                outcomes["refused at predict"] += 1
                continue
            output = live.http.get(f"/sessions/{session_id}/output", headers=auth)
            assert output.status_code == 200
            kit_a.decrypt(output.content)  # garbage or valid: the secret key holder's business
            outcomes["computed"] += 1
            # Put the genuine ciphertext back for the next flip of this party.
            upload(live.http, session_id, auth, {name: data})
    print(f"\nbit flips past the header: {dict(outcomes)}")
    assert sum(outcomes.values()) == len(tried) == CASE_COUNTS["ciphertext_body_bit_flips"]
    assert_still_serving(live, bystander)


def test_ciphertexts_of_the_wrong_party_or_shape_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    upload(live.http, session_id, auth, {"credit_bureau": encrypted_a["credit_bureau"]})
    assert live.http.post(f"/sessions/{session_id}/predict", headers=auth).status_code == 200
    sources = {
        **encrypted_a,
        "predict output": live.http.get(f"/sessions/{session_id}/output", headers=auth).content,
        "explain output": live.http.post(
            f"/sessions/{session_id}/explain",
            content=encrypted_a["candidates"],
            headers={**auth, **OCTET},
        ).content,
    }
    before = session_files(live.store_dir / session_id)
    tried = []
    for target in CIPHERTEXT_NAMES:
        for source, body in sources.items():
            if source == target:
                continue
            detail = assert_client_error(send(live, target, session_id, auth, body), 422)
            assert target in detail
            tried.append((source, target))
    assert session_files(live.store_dir / session_id) == before
    assert len(tried) == CASE_COUNTS["wrong_party_or_shape"]
    assert_still_serving(live, bystander)


def test_ciphertexts_and_keys_of_another_key_set_leave_the_server_healthy(
    live: Live, kit_a: Kit, kit_b: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    """Ciphertexts under another key set look exactly like genuine ones: the server computes,
    the result decrypts to noise (or by chance to a valid verdict), nothing else is affected."""
    profile = EXAMPLE_PROFILE
    encrypted_b = kit_b.encrypt(profile)
    mixes = {
        "all three of key set B in a session of A": (kit_a, encrypted_b),
        "the credit bureau's of B, the others of A": (
            kit_a,
            {**encrypted_a, "credit_bureau": encrypted_b["credit_bureau"]},
        ),
        "all three of A in a session of B": (kit_b, encrypted_a),
        "the bystander's session keys, another session's applicant": (
            kit_b,
            {**kit_b.encrypt(varied_profiles(6)[0]), "applicant": encrypted_a["applicant"]},
        ),
    }
    decrypted = {}
    for label, (session_kit, encrypted) in mixes.items():
        session_id, auth = open_session(live.http, session_kit.evaluation_keys)
        upload(live.http, session_id, auth, {p: encrypted[p] for p in settings.PARTIES})
        response = live.http.post(f"/sessions/{session_id}/predict", headers=auth)
        if response.status_code == 200:
            output = live.http.get(f"/sessions/{session_id}/output", headers=auth)
            decrypted[label] = int(session_kit.decrypt(output.content))
        else:
            assert_client_error(response, 422)
            decrypted[label] = None
    # Candidates of key set B scored against A's applicant and bank.
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    response = live.http.post(
        f"/sessions/{session_id}/explain",
        content=kit_b.encrypt_candidates(),
        headers={**auth, **OCTET},
    )
    if response.status_code == 200:
        verdicts = kit_a.decrypt(response.content, "explain")
        assert np.asarray(verdicts).shape == (len(settings.YEARS_EMPLOYED_BINS),)
    else:
        assert_client_error(response, 422)
    decrypted["candidates of B against A"] = response.status_code
    print(f"\nanother key set (decrypted verdict, None if refused): {decrypted}")
    assert len(decrypted) == CASE_COUNTS["other_key_set"]
    assert_still_serving(live, bystander)


def test_evaluation_keys_of_another_circuit_are_refused(
    live: Live, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    @fhe.compiler({"x": "encrypted"})
    def other(x):  # traced by concrete: no annotations
        return (x * 3) % 7

    circuit = other.compile(range(4), compress_evaluation_keys=True)
    circuit.keygen()
    foreign_keys = circuit.client.evaluation_keys.serialize()
    spec = WIRE["evaluation_keys"]
    prefix = bytes.fromhex(spec["prefix_hex"])
    # The same keys forced into this model's size, behind this model's header.
    grafted = (prefix + foreign_keys[len(prefix) :] + bytes(spec["bytes"]))[: spec["bytes"]]
    tried = []
    for label, body in (("as generated", foreign_keys), ("grafted", grafted)):
        assert_client_error(send(live, "evaluation_keys", "", {}, body), 422)
        tried.append(label)
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    foreign_input = circuit.client.encrypt(5).serialize()
    assert_client_error(send(live, "bank", session_id, auth, foreign_input), 422)
    tried.append("its ciphertext as the bank's input")
    assert len(tried) == CASE_COUNTS["other_circuit_keys"]
    assert_still_serving(live, bystander)


# ---------------------------------------------------------------------------------------------
# Bit flips past the evaluation keys' 64-byte header
# ---------------------------------------------------------------------------------------------
# (byte, bit) of single-bit flips in the serialized evaluation keys. The model card's wire format
# fixes their first 64 bytes; the key set's structure (parameters, sizes, compression types) goes
# on to byte 311 and is the same for every key set of this model. A sweep in child processes
# (every bit of bytes 64..311: 2,048 flips; then predict with one deserializable flip per byte)
# found: 852 flips refused by fhe.EvaluationKeys.deserialize (RuntimeError), 30 that abort the
# process inside it (bytes 84-85 and 212-213, the bootstrap keys' compression type), and among
# 161 that deserialize, 34 that kill or break server.run (23 SIGSEGV, 5 SIGABRT, 6 MemoryError).
EVALUATION_KEY_FLIPS = [
    (1_000_003, 2),  # inside a key's random-looking payload: deserializes and computes
    (15_000_001, 6),  # idem, near the end
    (70, 4),  # structure: fhe.EvaluationKeys.deserialize raises RuntimeError
    (100, 1),  # structure: deserializes, server.run completes (on broken keys)
    (98, 0),  # structure: deserializes; server.run raises MemoryError (std::bad_alloc)
    (64, 3),  # structure: deserializes; server.run dies with SIGSEGV
    (92, 0),  # structure: deserializes; server.run aborts (SIGABRT)
    (84, 0),  # structure: deserializes; server.run dies with SIGSEGV
    (84, 4),  # bootstrap key compression type: deserialize aborts the process (SIGABRT)
    (213, 0),  # idem, second bootstrap key
]


def test_bit_flips_in_the_evaluation_keys_never_crash_the_server(
    tmp_path: Path, kit_a: Kit, encrypted_a: dict
) -> None:
    """Flipped keys must be refused (422) or computed on (2xx); the process must survive.

    Each case gets a server that answers; when a case kills the process, it is recorded and a new
    process is started on the same store for the next case, so one run reports every case.
    """
    outcomes: dict[tuple[int, int], str] = {}
    with contextlib.ExitStack() as stack:

        def start() -> tuple[str, httpx.Client]:
            base_url = stack.enter_context(running_server(store_dir=tmp_path / "store"))
            return base_url, stack.enter_context(httpx.Client(base_url=base_url, timeout=120))

        base_url, http = start()
        for byte, bit in EVALUATION_KEY_FLIPS:
            process = server_process(base_url)
            body = flip(kit_a.evaluation_keys, byte, bit)
            try:
                outcomes[(byte, bit)] = _flipped_key_outcome(http, body, encrypted_a)
            except httpx.TransportError as error:
                try:
                    status = f"died with exit status {process.wait(timeout=15)}"
                except psutil.TimeoutExpired:
                    status = "still running"
                outcomes[(byte, bit)] = f"no answer ({error.__class__.__name__}); server {status}"
                base_url, http = start()
        # After all of it, a fresh flow on the (last) server is still correct.
        profile = varied_profiles(6)[1]
        assert full_flow_verdict(http, kit_a, profile) == int(profile.verdict())
    assert len(outcomes) == CASE_COUNTS["evaluation_key_body_bit_flips"]
    bad = {flip_: outcome for flip_, outcome in outcomes.items() if "ok" not in outcome}
    assert not bad, f"flipped evaluation keys broke the server: {bad}"


def _flipped_key_outcome(http: httpx.Client, body: bytes, encrypted: dict[str, bytes]) -> str:
    """Open a session with flipped keys and run predict; describe what happened."""
    created = http.post("/sessions", content=body, headers=OCTET)
    if created.status_code != 201:
        if created.status_code >= 500:
            return f"POST /sessions answered {created.status_code}"
        assert_client_error(created, 422)
        return "ok: refused at POST /sessions"
    session_id, auth = created.json()["session_id"], bearer(created.json()["token"])
    upload(http, session_id, auth, {p: encrypted[p] for p in settings.PARTIES})
    predicted = http.post(f"/sessions/{session_id}/predict", headers=auth)
    if predicted.status_code >= 500:
        return f"predict answered {predicted.status_code} {predicted.text[:100]}"
    if predicted.status_code != 200:
        assert_client_error(predicted, 422)
        return "ok: refused at predict"
    assert http.get("/health", timeout=5).status_code == 200
    return "ok: computed"


# ---------------------------------------------------------------------------------------------
# Bodies over the limits, streamed
# ---------------------------------------------------------------------------------------------
class CountingBody:
    """A request body generator far larger than any limit, counting what the client sent."""

    def __init__(self, total_bytes: int, chunk_bytes: int = 64 * 1024):
        self.total_bytes = total_bytes
        self.chunk_bytes = chunk_bytes
        self.sent_bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"\x5a" * self.chunk_bytes
        while self.sent_bytes < self.total_bytes:
            self.sent_bytes += self.chunk_bytes
            yield chunk


def stream_over_limit(
    http: httpx.Client, method: str, path: str, auth: dict, total: int, declare_length: bool
) -> tuple[httpx.Response, CountingBody]:
    body = CountingBody(total)
    headers = {**auth, **OCTET}
    if declare_length:
        headers["Content-Length"] = str(total)
    response = http.request(method, path, content=body, headers=headers)
    return response, body


def test_bodies_over_the_limits_are_refused_while_streaming(
    live: Live, tmp_path: Path, kit_a: Kit, encrypted_a: dict, bystander: Bystander
) -> None:
    session_id, auth = attack_session(live, kit_a, encrypted_a)
    gib, mib = 1 << 30, 1 << 20
    routes = [
        ("POST", "/sessions", {}, gib),  # limit 64 MiB
        ("PUT", f"/sessions/{session_id}/inputs/applicant", auth, 256 * mib),  # limit 1 MiB
        ("POST", f"/sessions/{session_id}/explain", auth, 256 * mib),
    ]
    tried = []
    for method, path, headers, total in routes:
        for declare_length in (True, False):
            response, body = stream_over_limit(
                live.http, method, path, headers, total, declare_length
            )
            # A declared length over the limit is refused at once (413). Streamed without a
            # length, the body is refused as soon as it exceeds the exact size of what the route
            # takes, which is below the limit here (422), or the limit (413).
            detail = assert_client_error(response, 413 if declare_length else {413, 422})
            assert "limit" in detail or "exactly" in detail
            assert response.headers.get("connection") == "close"  # the rest is never read
            tried.append((path, declare_length, body.sent_bytes))
    # A server whose limits are below the model's sizes, on a copy of the store holding the
    # attack session: the limit (413) is what stops the stream now.
    copy_dir = tmp_path / "store-copy"
    shutil.copytree(live.store_dir / session_id, copy_dir / session_id)
    limits = {"FHE_MAX_EVALUATION_KEY_BYTES": "1000000", "FHE_MAX_CIPHERTEXT_BYTES": "300"}
    with running_server(store_dir=copy_dir, env=limits) as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as small:
            for method, path, headers, total in routes:
                for declare_length in (True, False):
                    response, body = stream_over_limit(
                        small, method, path, headers, total, declare_length
                    )
                    assert "limit" in assert_client_error(response, 413)
                    tried.append((f"small limits {path}", declare_length, body.sent_bytes))
            # The session itself is intact there: the bank's ciphertext (272 B) fits.
            upload(small, session_id, auth, {"bank": encrypted_a["bank"]})
    assert len(tried) == CASE_COUNTS["over_limit_streaming"]
    read_whole = [case for case in tried if case[2] > STREAM_READ_BOUND_BYTES]
    assert not read_whole, (
        "the server kept reading bodies it had already refused (path, Content-Length declared, "
        f"bytes the client could send): {read_whole}"
    )
    assert_still_serving(live, bystander)
