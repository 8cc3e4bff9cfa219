"""What leaves the client, and what the server keeps (issue 7, part 5).

A full flow and an explain go through ``CreditScoringClient`` with a transport that records every
HTTP request (method, URL, headers and body bytes). None of them may contain

- the client's private key material: the LWE secret keys that ``client.keys.save`` wrote in the
  client's ``key_dir`` (read back from that file), as raw bytes, hex or base64, in several
  encodings of the key bits (as saved: one 64-bit word per bit; one byte per bit; packed bits);
- the application in clear (the example application): field values as text (income "90000",
  occupation "Managers", income type "Commercial associate", ...), field names, or the quantized
  integer vectors the client encrypts.

The server's storage directory (every file of the session) is searched for the same things.
Only the evaluation keys (public material the server needs to compute) and ciphertexts travel.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from concrete import fhe

import settings
from backend import KEYS_FILE_NAME, CreditScoringClient, party_preprocessor
from development.instrumentation import RecordedRequest, RecordingTransport
from development.reference import clear_explain
from tests.support.applications import EXAMPLE_PROFILE
from tests.support.kit import WIRE
from tests.support.servers import running_server

pytestmark = pytest.mark.slow

WINDOWS_PER_KEY = 8
# A 64-byte window of the key as saved (8 words of 0/1) carries only 8 bits, so windows are
# taken where the bits are mixed, and longer forms (64 and 512 key bits) are searched too.
RAW_WINDOW_BYTES = 64
LONG_WINDOW_BYTES = 512


@dataclass
class Recorded:
    """One recorded flow: the requests, the client's key file and the server's store."""

    requests: list[RecordedRequest]
    key_file_bytes: bytes
    secret_keys: list[bytes]  # each LWE secret key's bits, one little-endian uint64 word a bit
    store_files: dict[str, bytes]
    verdict: bool
    explanation: str | None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    root = tmp_path_factory.mktemp("privacy")
    store_dir, key_dir = root / "store", root / "keys"
    recorder = RecordingTransport(httpx.HTTPTransport())
    with running_server(store_dir=store_dir) as base_url:
        client = CreditScoringClient(server_url=base_url, key_dir=key_dir, transport=recorder)
        try:
            client.generate_keys()
            client.send_applicant(**EXAMPLE_PROFILE.applicant)
            client.send_bank(**EXAMPLE_PROFILE.bank)
            client.send_credit_bureau(**EXAMPLE_PROFILE.credit_bureau)
            client.predict()
            verdict = client.decrypt_verdict()
            explanation = client.explain()
            key_file = key_dir / KEYS_FILE_NAME
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            key_file_bytes = key_file.read_bytes()
            store_files = {
                str(path.relative_to(store_dir)): path.read_bytes()
                for path in store_dir.rglob("*")
                if path.is_file()
            }
        finally:
            client.close()
        assert not key_dir.exists(), "close() must remove the private keys"
    yield Recorded(
        requests=recorder.requests,
        key_file_bytes=key_file_bytes,
        secret_keys=secret_key_words(key_file_bytes),
        store_files=store_files,
        verdict=verdict,
        explanation=explanation,
    )


def secret_key_words(key_file_bytes: bytes) -> list[bytes]:
    """The LWE secret keys stored in a saved key file, as their words (one 0/1 uint64 a bit)."""
    keys = fhe.Keys.deserialize(key_file_bytes)
    # Keys has no public accessor for its secret keys: read them from its key set.
    secret_keys = keys._keyset.get_client_keys().get_secret_keys()
    words = []
    for secret_key in secret_keys:
        serialized = secret_key.serialize()
        # The serialization ends with the key's words; walk back while they are bits.
        array = np.frombuffer(serialized[len(serialized) % 8 :], dtype="<u8")
        count = 0
        while count < len(array) and array[len(array) - 1 - count] in (0, 1):
            count += 1
        words.append(array[len(array) - count :].tobytes())
    return words


def windows(data: bytes, size: int, count: int, bit_bytes: int) -> list[bytes]:
    """``count`` windows of ``size`` bytes spread over ``data`` whose key bits are well mixed.

    Args:
        data: an encoding of the key bits.
        size: window size in bytes.
        count: how many windows.
        bit_bytes: bytes per key bit in ``data`` (0 for packed bits).
    """

    def mixed(window: bytes) -> bool:
        if bit_bytes == 0:
            bits = np.unpackbits(np.frombuffer(window, dtype=np.uint8))
        else:
            bits = np.frombuffer(window, dtype=np.uint8)[::bit_bytes]
        return 0.25 <= float(bits.mean()) <= 0.75

    starts = np.unique(np.linspace(0, len(data) - size, count * 64).astype(int))
    found = [data[start : start + size] for start in starts if mixed(data[start : start + size])]
    assert len(found) >= count
    return found[:: len(found) // count][:count]


def encodings(window: bytes) -> list[bytes]:
    """The window as raw bytes, hex and base64 (standard and URL-safe, every 3-byte alignment)."""
    forms = [window, window.hex().encode(), window.hex().upper().encode()]
    for shift in range(3):
        aligned = window[shift : shift + (len(window) - shift) // 3 * 3]
        forms += [base64.b64encode(aligned), base64.urlsafe_b64encode(aligned)]
    return forms


def secret_needles(secret_keys: list[bytes]) -> dict[str, bytes]:
    """Byte strings whose presence would mean secret key material leaked."""
    needles: dict[str, bytes] = {}
    for index, words in enumerate(secret_keys):
        bits = np.frombuffer(words, dtype="<u8").astype(np.uint8)
        forms = {
            "as saved (uint64 a bit)": (words, RAW_WINDOW_BYTES, 8),
            "as saved, 64 bits": (words, LONG_WINDOW_BYTES, 8),
            "one byte a bit": (bits.tobytes(), 64, 1),
            "packed bits": (np.packbits(bits).tobytes(), 16, 0),
        }
        for form, (data, size, bit_bytes) in forms.items():
            for number, window in enumerate(windows(data, size, WINDOWS_PER_KEY, bit_bytes)):
                for encoding, needle in enumerate(encodings(window)):
                    needles[f"key {index} {form} window {number} encoding {encoding}"] = needle
    return needles


def clear_needles() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(needles searched everywhere, short needles searched in URLs and headers only).

    Text of three bytes or less would appear by chance in megabytes of random key material, so
    it is only searched where the client writes text.
    """
    applicant = EXAMPLE_PROFILE.applicant
    texts = {
        "income": str(int(applicant["total_income"])),
        "income as a float": str(float(applicant["total_income"])),
        "occupation": applicant["occupation_type"],
        "income type": applicant["income_type"],
        "education": applicant["education_type"],
        "family status": applicant["family_status"],
        "housing": applicant["housing_type"],
        "years employed": EXAMPLE_PROFILE.credit_bureau["years_employed"],
        "account age": f"account_age={EXAMPLE_PROFILE.bank['account_age']}",
    }
    for party, fields in settings.PARTY_FIELDS.items():
        texts.update({f"field name {party}.{name}": name for name in fields})
    everywhere, short = {}, {}
    for label, text in texts.items():
        (everywhere if len(text) > 3 else short)[label] = text.encode()
    for party, fields in EXAMPLE_PROFILE.parts().items():
        quantized = party_preprocessor(party).transform(fields)
        if len(quantized) > 2:  # the bank's single small integer would match anywhere
            everywhere[f"quantized {party} (int64)"] = quantized.astype("<i8").tobytes()
    return everywhere, short


def leaks(haystack: bytes, needles: dict[str, bytes]) -> list[str]:
    return [label for label, needle in needles.items() if needle in haystack]


def test_the_flow_sent_only_keys_and_ciphertexts(recorded: Recorded) -> None:
    routes = [(r.method, httpx.URL(r.url).path.split("/")[-1]) for r in recorded.requests]
    session_id = httpx.URL(recorded.requests[2].url).path.split("/")[2]
    assert routes == [
        ("GET", "admission"),  # would a new session be admitted? (no body)
        ("POST", "sessions"),
        *(("PUT", party) for party in settings.PARTIES),
        ("POST", "predict"),
        ("GET", "output"),
        ("POST", "explain"),
        ("DELETE", session_id),  # close()
    ]
    assert recorded.verdict is False and EXAMPLE_PROFILE.verdict() is False  # refused: explain ran
    assert recorded.explanation == clear_explain(*EXAMPLE_PROFILE.parts().values())
    sizes = [len(r.body) for r in recorded.requests]
    assert sizes[:2] == [0, WIRE["evaluation_keys"]["bytes"]]
    assert sizes[2:5] == [WIRE[party]["bytes"] for party in settings.PARTIES]
    assert sizes[5:] == [0, 0, WIRE["candidates"]["bytes"], 0]


def test_the_search_finds_material_that_did_leak(recorded: Recorded) -> None:
    """Controls: the same search over fake requests that do leak finds every needle form."""
    words = recorded.secret_keys[0]
    needles = secret_needles([words])
    for fake in (words, words.hex().encode(), base64.b64encode(words)):
        assert leaks(b"prefix" + fake + b"suffix", needles)
    saved = {k: v for k, v in secret_needles(recorded.secret_keys).items() if "encoding 0" in k}
    n_keys = len(recorded.secret_keys)
    assert len(leaks(recorded.key_file_bytes, saved)) == n_keys * 2 * WINDOWS_PER_KEY  # as saved
    everywhere, short = clear_needles()
    fake_json = json.dumps(EXAMPLE_PROFILE.parts()).encode()
    assert {"income", "occupation", "income type", "field name applicant.total_income"} <= set(
        leaks(fake_json, everywhere)
    )


def test_no_request_carries_the_secret_key(recorded: Recorded) -> None:
    # Every secret key of the circuit's key set, at its dimension (one uint64 word a key bit).
    specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
    dimensions = [key.dimension() for key in specs.program_info.get_keyset_info().secret_keys()]
    assert [len(words) // 8 for words in recorded.secret_keys] == dimensions
    for words in recorded.secret_keys:
        assert words in recorded.key_file_bytes  # read back from what the client saved
    needles = secret_needles(recorded.secret_keys)
    assert len(needles) == len(dimensions) * 4 * WINDOWS_PER_KEY * 9
    for request in recorded.requests:
        found = leaks(request.wire_bytes(), needles)
        assert not found, f"{request.method} {request.url} carries secret key material: {found[:5]}"


def test_no_request_carries_clear_values(recorded: Recorded) -> None:
    everywhere, short = clear_needles()
    assert len(everywhere) >= 20 and "occupation" in everywhere and "income" in everywhere
    for request in recorded.requests:
        found = leaks(request.wire_bytes(), everywhere)
        head = request.wire_bytes()[: -len(request.body) or None]
        found += leaks(head, short)
        assert not found, f"{request.method} {request.url} carries clear values: {found}"


def test_the_server_store_holds_no_secret_key_and_no_clear_value(recorded: Recorded) -> None:
    names = sorted(Path(name).name for name in recorded.store_files)
    assert names == sorted(
        ["meta.json", "evaluation_keys.bin", "output.bin"]
        + [f"input_{party}.bin" for party in settings.PARTIES]
    )
    secret = secret_needles(recorded.secret_keys)
    everywhere, short = clear_needles()
    for name, content in recorded.store_files.items():
        found = leaks(content, secret) + leaks(content, everywhere)
        if name.endswith(".json"):
            found += leaks(content, short)
        assert not found, f"{name} holds private material: {found[:5]}"
    assert os.sep not in "".join(names)
