"""The three-party server's settings: ``ThreePartySettings``, one THREEPARTY_* variable a field."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from settings import CommaList
from threeparty.layout import LAYOUT_PATH

MiB = 1024 * 1024


class ThreePartySettings(BaseSettings):
    """Limits of the three-party server; each field can be set by a THREEPARTY_* variable."""

    model_config = SettingsConfigDict(env_prefix="THREEPARTY_")

    max_sessions: int = 8
    session_ttl_seconds: float = 1800.0
    # A session's whole life, however active (status calls cannot keep one alive for ever).
    session_lifetime_seconds: float = 3600.0
    max_round1_bytes: int = 96 * MiB
    max_round2_bytes: int = 24 * MiB
    max_ciphertexts_bytes: int = 24 * MiB
    max_partial_bytes: int = 4 * MiB
    max_statement_bytes: int = 64 * 1024
    max_concurrent_evaluations: int = 1
    max_waiting_evaluations: int = 4
    max_status_wait_seconds: float = 20.0
    # Uploads read at once; more get 503 before their body is read.
    max_concurrent_uploads: int = 4
    # OpenFHE work on what clients send runs in worker processes (threeparty.sandbox), each with
    # an address-space limit; a call past its time limit kills its worker.
    sandbox_workers: int = 2
    sandbox_memory_mib: int = 3072
    parse_seconds: float = 10.0
    evaluate_seconds: float = 120.0
    # A blob's size may differ from this parameter set's by this fraction before it is parsed.
    blob_size_tolerance: float = 0.02
    # Sessions one client (IP address) may create per window; 0 turns the quota off. Addresses in
    # session_quota_exempt have none: by default the loopback (the page's own process).
    session_quota: int = 8
    session_quota_window_seconds: float = 600.0
    session_quota_exempt: CommaList = ["127.0.0.1", "::1"]
    # Host names the server answers (any port), comma-separated: loopback only by default.
    allowed_hosts: CommaList = ["localhost", "127.0.0.1", "[::1]"]
    # Where sessions are kept so that they survive a restart ("" keeps them in memory only).
    store_dir: str = str(LAYOUT_PATH.parent.parent / ".fhe_store" / "threeparty")
    # redis://host:port/db keeps them in Redis instead (threeparty.server.redis_storage); "" on
    # the filesystem (store_dir).
    store_url: str = ""
    # The public slot layout the server evaluates and checks its known answer on.
    layout_path: Path = LAYOUT_PATH
