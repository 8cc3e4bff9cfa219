"""Client side of the encrypted credit-card approval service: the front of ``fhe_client``.

The client library lives in the ``fhe_client`` package, one concern a module, and takes every
path and setting as an argument:

- ``fhe_client.errors``: the errors it raises (``ClientError`` and the server's refusals, mapped
  from the contract's table ``contracts.single_key.ERRORS``);
- ``fhe_client.transport``: ``ServerSession``, the HTTP session (retries of transient failures,
  resuming a session the server lost);
- ``fhe_client.retry``: bounded retries, ``wait_while_busy`` / ``retry_while_busy``;
- ``fhe_client.keys``: generating and loading the key set;
- ``fhe_client.preprocessing``: each party's fields -> the circuit's quantized inputs;
- ``fhe_client.client``: ``CreditScoringClient``, the steps of one application;
- ``fhe_client.explanation``: the explain step's answer (``Explanation``).

This module re-exports those names, fills in the repository's paths from ``settings`` (the
client specs and the preprocessing of ``deployment_files/``) and holds the thin functions the
Gradio page calls (``keygen_send``, ``pre_process_encrypt_send_applicant``, ...). A batch job can
use the class directly::

    client = new_client(settings.ClientSettings())  # FHE_SERVER_URL, FHE_CLIENT_KEYS_DIR
    try:
        client.generate_keys()
        client.send_applicant(**applicant_fields)
        client.send_bank(account_age=30)
        client.send_credit_bureau(employed=True, years_employed="2-5")
        client.predict()
        approved = client.decrypt_verdict()
        years = None if approved else client.explain()
    finally:
        client.close()
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from concrete import fhe

import settings
from fhe_client import client as _client
from fhe_client import keys as _keys
from fhe_client import preprocessing as _preprocessing
from fhe_client.client import EVALUATION_KEY_PREVIEW_BYTES
from fhe_client.errors import (
    ERROR_CODES,
    AuthenticationError,
    ClientError,
    InvalidFieldError,
    InvalidPayloadError,
    PayloadTooLargeError,
    ServerBusyError,
    ServerError,
    ServerUnreachableError,
    SessionNotFoundError,
    StepOrderError,
    TooManySessionsError,
)
from fhe_client.errors import parse_seconds as _parse_seconds
from fhe_client.explanation import Explanation, explain_application
from fhe_client.keys import KEYS_FILE_NAME, KeyGenerator
from fhe_client.preprocessing import FeatureSpec
from fhe_client.retry import Waited, retry_while_busy, wait_while_busy
from fhe_client.transport import (
    CLOSE_RETRY_SECONDS,
    CLOSE_TIMEOUT,
    DEFAULT_RETRY_SECONDS,
    DEFAULT_TIMEOUT,
)

__all__ = [
    "CLOSE_RETRY_SECONDS",
    "CLOSE_TIMEOUT",
    "DEFAULT_RETRY_SECONDS",
    "DEFAULT_TIMEOUT",
    "ERROR_CODES",
    "EVALUATION_KEY_PREVIEW_BYTES",
    "KEYS_FILE_NAME",
    "AuthenticationError",
    "ClientError",
    "CreditScoringClient",
    "Explanation",
    "FeatureSpec",
    "InvalidFieldError",
    "InvalidPayloadError",
    "KeyGenerator",
    "PartyPreprocessor",
    "PayloadTooLargeError",
    "ServerBusyError",
    "ServerError",
    "ServerUnreachableError",
    "SessionNotFoundError",
    "StepOrderError",
    "TooManySessionsError",
    "Waited",
    "_parse_seconds",
    "client_specs",
    "explain_encrypt_run_decrypt",
    "fhe",
    "generate_key_file",
    "get_output_and_decrypt",
    "keygen_send",
    "new_client",
    "party_preprocessor",
    "pre_process_encrypt_send_applicant",
    "pre_process_encrypt_send_bank",
    "pre_process_encrypt_send_credit_bureau",
    "retry_while_busy",
    "run_fhe",
    "shorten_hex",
    "wait_while_busy",
]


# ---------------------------------------------------------------------------------------------
# The client library with the repository's paths
# ---------------------------------------------------------------------------------------------
def client_specs() -> fhe.ClientSpecs:
    """The FHE module's client specs (read once from deployment_files/client_specs.json)."""
    return _keys.load_client_specs(settings.CLIENT_SPECS_PATH)


def party_preprocessor(party: str) -> PartyPreprocessor:
    """Return one party's preprocessor (cached), built only from that party's part of the spec."""
    return _preprocessing.load_party_preprocessor(settings.PREPROCESSING_PATH, party)


def generate_key_file(key_dir: Path) -> bytes:
    """Generate a new key set in ``key_dir`` from the repository's client specs.

    A module-level ``KeyGenerator``, so that a worker process can run it (the page does); see
    ``fhe_client.keys.generate_key_file``.

    Returns:
        The serialized evaluation keys (what the server needs; no secret key in them).
    """
    return _keys.generate_key_file(key_dir, settings.CLIENT_SPECS_PATH)


class PartyPreprocessor(_preprocessing.PartyPreprocessor):
    """``fhe_client.preprocessing.PartyPreprocessor``, reading the repository's file by default."""

    @classmethod
    def load_all(cls, path: Path = settings.PREPROCESSING_PATH) -> dict[str, PartyPreprocessor]:
        """Read every party's preprocessing (default: ``deployment_files/preprocessing.json``)."""
        return super().load_all(path)  # type: ignore[return-value]


class CreditScoringClient(_client.CreditScoringClient):
    """``fhe_client.client.CreditScoringClient`` with the repository's deployment files.

    The client specs and the preprocessing default to ``settings.CLIENT_SPECS_PATH`` and
    ``settings.PREPROCESSING_PATH``, the key generator to ``generate_key_file`` above.
    """

    def __init__(self, server_url: str, key_dir: Path, **options: Any) -> None:
        """Build a client (no key, no request yet).

        Args:
            server_url: the server's base URL.
            key_dir: folder for this client's key set (created by generate_keys).
            **options: as ``fhe_client.client.CreditScoringClient`` (transport, timeout,
                resume_lost_sessions, key_generator, retry_seconds, and the two paths).
        """
        options.setdefault("client_specs_path", settings.CLIENT_SPECS_PATH)
        options.setdefault("preprocessing_path", settings.PREPROCESSING_PATH)
        if options.get("key_generator") is None:
            options["key_generator"] = generate_key_file
        super().__init__(server_url, key_dir, **options)


def new_client(
    client_settings: settings.ClientSettings,
    key_dir: Path | None = None,
    key_generator: KeyGenerator | None = None,
) -> CreditScoringClient:
    """Return a client of the configured server, with a fresh key folder.

    Args:
        client_settings: the client side's settings (server URL, keys directory).
        key_dir: the key folder (default: a new random one under ``client_keys_dir``).
        key_generator: see CreditScoringClient (default: key generation in this process).
    """
    return CreditScoringClient(
        server_url=client_settings.resolved_server_url(),
        key_dir=key_dir or client_settings.client_keys_dir / secrets.token_hex(16),
        key_generator=key_generator,
    )


# ---------------------------------------------------------------------------------------------
# Thin functions the Gradio page calls (the product's names)
# ---------------------------------------------------------------------------------------------
SHORT_HEX_BYTES = 32


def shorten_hex(data: bytes, total_size: int | None = None, limit: int = SHORT_HEX_BYTES) -> str:
    """Return a short hex view of (possibly a prefix of) serialized bytes, with the full size.

    Serialized ciphertexts and keys start with fixed headers; the view shows the ``limit``-byte
    window (on an 8-byte grid) with the most distinct byte values, i.e. random-looking key or
    ciphertext material rather than a header.

    Args:
        data: the bytes (or their first bytes).
        total_size: the full size when ``data`` is only a prefix.
        limit: how many bytes to show.
    """
    size = len(data) if total_size is None else total_size
    starts = range(0, max(len(data) - limit, 0) + 1, 8)
    start = max(starts, key=lambda offset: len(set(data[offset : offset + limit])))
    before = "…" if start > 0 else ""
    after = "…" if start + limit < size else ""
    return f"{before}{data[start : start + limit].hex()}{after} [{size:,} B]"


def keygen_send(client: CreditScoringClient) -> str:
    """Generate keys, upload the evaluation keys; return the shortened evaluation key."""
    client.generate_keys()
    return shorten_hex(client.evaluation_key_preview or b"", total_size=client.evaluation_key_size)


def pre_process_encrypt_send_applicant(client: CreditScoringClient, **fields: Any) -> str:
    """Preprocess, encrypt and send the applicant's fields; return the shortened ciphertext."""
    client.send_applicant(**fields)
    return shorten_hex(client.ciphertexts["applicant"])


def pre_process_encrypt_send_bank(client: CreditScoringClient, account_age: float) -> str:
    """Preprocess, encrypt and send the bank's field; return the shortened ciphertext."""
    client.send_bank(account_age=account_age)
    return shorten_hex(client.ciphertexts["bank"])


def pre_process_encrypt_send_credit_bureau(
    client: CreditScoringClient, employed: bool, years_employed: str
) -> str:
    """Preprocess, encrypt and send the credit bureau's fields; return the shortened ciphertext."""
    client.send_credit_bureau(employed=employed, years_employed=years_employed)
    return shorten_hex(client.ciphertexts["credit_bureau"])


def run_fhe(client: CreditScoringClient) -> float:
    """Run the decision tree on the server in FHE; return its execution time in seconds."""
    return client.predict()


def get_output_and_decrypt(client: CreditScoringClient) -> tuple[str, bool]:
    """Fetch and decrypt the verdict; return (shortened encrypted output, likely approved)."""
    verdict = client.decrypt_verdict()
    return shorten_hex(client.encrypted_output or b""), verdict


def explain_encrypt_run_decrypt(client: CreditScoringClient) -> Explanation:
    """Encrypt the six candidate rows, score them in one FHE run and decrypt the answer."""
    return explain_application(client)
