"""Paths, limits and choices of the encrypted credit-card approval service, in one place.

Nothing here does work at import time: the field ranges the page shows are read from
``deployment_files/field_ranges.json`` (written by ``python -m development.train`` from the data)
the first time one of them is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.parties import (  # noqa: F401  (named here for the app and development/)
    APPLICANT_FIELDS,
    BANK_FIELDS,
    BOOLEAN_FIELDS,
    CREDIT_BUREAU_FIELDS,
    PARTIES,
    PARTY_FIELDS,
)

# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
REPO_DIR = Path(__file__).resolve().parent
DEPLOYMENT_DIR = REPO_DIR / "deployment_files"
DATA_DIR = REPO_DIR / "data"
DEVELOPMENT_DIR = REPO_DIR / "development"
STATIC_DIR = REPO_DIR / "static"

DATA_PATH = DATA_DIR / "applications.csv"
SERVER_ARTIFACT_PATH = DEPLOYMENT_DIR / "server.zip"
CLIENT_SPECS_PATH = DEPLOYMENT_DIR / "client_specs.json"
PREPROCESSING_PATH = DEPLOYMENT_DIR / "preprocessing.json"
FIELD_RANGES_PATH = DEPLOYMENT_DIR / "field_ranges.json"
MODEL_CARD_PATH = DEPLOYMENT_DIR / "model_card.json"
# Development-only artifact (the quantized tree in clear): never loaded by the server or client.
REFERENCE_TREE_PATH = DEVELOPMENT_DIR / "artifacts" / "reference_tree.json"

# ---------------------------------------------------------------------------------------------
# Parties and fields
# ---------------------------------------------------------------------------------------------
# The parties and their fields are part of the wire contract: defined in contracts.parties and
# imported above (settings.PARTIES, settings.PARTY_FIELDS, ... keep working).

# Canonical category values: what the data, the preprocessing and the client library use. The page
# shows each one under a display name of its language (page/locales/<lang>.json, "cat_..." keys).
CATEGORY_VALUES: dict[str, list[str]] = {
    "income_type": ["Working", "Commercial associate", "Pensioner", "State servant", "Student"],
    "education_type": [
        "Secondary",
        "Incomplete higher",
        "Higher education",
        "Lower secondary",
        "Academic degree",
    ],
    "family_status": ["Married", "Single", "Civil marriage", "Separated", "Widow"],
    "occupation_type": [
        "Laborers",
        "Core staff",
        "Sales staff",
        "Managers",
        "Drivers",
        "High skill tech staff",
        "Accountants",
        "Medicine staff",
        "Cooking staff",
        "Security staff",
        "Cleaning staff",
        "Private service staff",
        "Low-skill Laborers",
        "Waiters/barmen staff",
        "Secretaries",
        "Realty agents",
        "HR staff",
        "IT staff",
    ],
    "housing_type": [
        "House / apartment",
        "With parents",
        "Municipal apartment",
        "Rented apartment",
        "Office apartment",
        "Co-op apartment",
    ],
    "years_employed": ["0-2", "2-5", "5-8", "8-11", "11-18", "18+"],
}
INCOME_TYPES = CATEGORY_VALUES["income_type"]
EDUCATION_TYPES = CATEGORY_VALUES["education_type"]
FAMILY_STATUS = CATEGORY_VALUES["family_status"]
OCCUPATION_TYPES = CATEGORY_VALUES["occupation_type"]
HOUSING_TYPES = CATEGORY_VALUES["housing_type"]
YEARS_EMPLOYED_BINS = CATEGORY_VALUES["years_employed"]


@lru_cache(maxsize=1)
def field_ranges() -> dict[str, dict[str, float]]:
    """Return {field: {"minimum", "maximum", "value"}} as measured on the training data."""
    return json.loads(FIELD_RANGES_PATH.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Model building (development/ only)
# ---------------------------------------------------------------------------------------------
SEED = 42
N_ROWS = 30_000
TEST_FRACTION = 0.2
CHOSEN_N_BITS = 3
CHOSEN_MAX_DEPTH = 5


# ---------------------------------------------------------------------------------------------
# Server limits, overridable by environment variables (prefix FHE_, e.g. FHE_MAX_SESSIONS=50)
# ---------------------------------------------------------------------------------------------


def split_list(value: Any) -> Any:
    """Read a list from its environment variable as comma-separated items."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
"""A list setting given as comma-separated items in its environment variable (both servers)."""


class ServerSettings(BaseSettings):
    """Limits and paths of the FHE server; every field can be set by an FHE_* variable."""

    model_config = SettingsConfigDict(env_prefix="FHE_")

    store_dir: Path = Field(default=REPO_DIR / ".fhe_store")
    deployment_dir: Path = Field(default=DEPLOYMENT_DIR)
    max_evaluation_key_bytes: int = 64 * 1024 * 1024
    max_ciphertext_bytes: int = 1024 * 1024
    session_ttl_seconds: float = 3600.0
    max_sessions: int = 100
    disk_budget_bytes: int = 5 * 1024 * 1024 * 1024
    max_concurrent_fhe: int = 1
    max_waiting_fhe: int = 4
    key_cache_size: int = 2
    error_drain_seconds: float = 2.0
    # "" keeps sessions on the filesystem (store_dir); redis://host:port/db shares them in Redis
    # between replicas (fhe_server.redis_store).
    store_url: str = ""
    # The name /health reports, to tell replicas apart ("" = host name and process id).
    replica_name: str = ""
    # Sessions one client (IP address) may open per window; 0 turns the quota off. Addresses in
    # session_quota_exempt (FHE_SESSION_QUOTA_EXEMPT, comma-separated) have none: by default the
    # loopback, where the page's process (which limits its own users) is the client.
    session_quota: int = 30
    session_quota_window_seconds: float = 600.0
    session_quota_exempt: CommaList = ["127.0.0.1", "::1"]
    # Requests for a new session (GET /admission and POST /sessions) through the cluster's nginx
    # (fhe_server.cluster): one client address may make creation_requests_per_second, all clients
    # together replica_creation_requests_per_second times the replicas (a creation costs a replica
    # about 0.1 CPU-s, so a replica creates at most about 10 a second). More wait in nginx's
    # queues, so a flood of refused requests costs the replicas little and the sessions already
    # open keep their CPU. 0 turns a limit off; the addresses of session_quota_exempt have neither.
    creation_requests_per_second: float = Field(default=2.0, ge=0)
    replica_creation_requests_per_second: float = Field(default=10.0, ge=0)
    # Host names the server answers (any port), comma-separated in FHE_ALLOWED_HOSTS:
    # "*.example.org" matches its subdomains, "*" any host. Loopback only by default.
    allowed_hosts: CommaList = ["localhost", "127.0.0.1", "[::1]"]


def server_settings_from(env: Mapping[str, str]) -> ServerSettings:
    """The server settings a process started with the environment ``env`` reads.

    Args:
        env: a whole environment (its FHE_* variables are read, any case, as the server would).

    Returns:
        The settings (validated like the server's own).
    """
    fields = {f"FHE_{name}".upper(): name for name in ServerSettings.model_fields}
    return ServerSettings(
        **{fields[key.upper()]: value for key, value in env.items() if key.upper() in fields}
    )


@lru_cache(maxsize=1)
def get_settings() -> ServerSettings:
    """Return the server settings from the FHE_* environment variables (read once)."""
    return ServerSettings()


# ---------------------------------------------------------------------------------------------
# The page and the client library: one settings object, built once by ``python app.py`` (or a
# program using the client library) and passed in. Environment variables FHE_* as named below.
# ---------------------------------------------------------------------------------------------
class ClientSettings(BaseSettings):
    """Where the client side finds its server and keeps its keys, and the page's limits.

    Every field can be set by an environment variable: ``FHE_`` + the field's name in capitals
    (``FHE_PAGE_MAX_SESSIONS=10``), except ``page_host`` / ``page_port``, which are Gradio's own
    ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``.

    Attributes:
        server_url: the FHE server to use; empty: the page starts its own on ``server_port``.
        server_port: port of the FHE server the page starts (127.0.0.1).
        server_start_timeout: seconds to wait for that server's /health at start and restart.
        server_restart_limit: restarts of a dead FHE server allowed per 10 minutes.
        client_keys_dir: where the page keeps each session's secret key (one folder a session).
        page_host: address the page listens on.
        page_port: port the page listens on.
        page_max_sessions: sessions holding keys at once; key generation beyond is refused.
        page_keygen_workers: worker processes generating keys (one key generation each at once).
        page_keygen_per_client: key generations one client (IP) may start per rate window.
        page_steps_per_client: steps 2-5 one client (IP) may run per rate window.
        page_rate_window_seconds: the window of both rate limits.
        page_trusted_proxies: proxies in front of the page that append to X-Forwarded-For
            (0: the header is ignored and the connection's address is the client's).
        page_queue_size: events waiting in the page's queue; beyond, Gradio refuses new ones.
        page_step_concurrency: FHE steps (2-5) of the page running at once.
        page_session_ttl_seconds: a session's keys are deleted this long after its last step.
        page_no_heartbeat_ttl_seconds: keys of a session with no open page (no heartbeat
            connection) are deleted this long after they were generated.
        page_limits: "public" applies the per-client rate limits; "local" turns them off (a
            person alone on their own computer); "auto" (default) is "local" when the page
            listens on a loopback address and trusts no proxy, else "public".
    """

    model_config = SettingsConfigDict(env_prefix="FHE_", populate_by_name=True, extra="ignore")

    server_url: str = ""
    server_port: int = 8000
    server_start_timeout: float = 60.0
    server_restart_limit: int = 3
    client_keys_dir: Path = REPO_DIR / ".keys"
    page_host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("GRADIO_SERVER_NAME", "page_host")
    )
    page_port: int = Field(
        default=7860, validation_alias=AliasChoices("GRADIO_SERVER_PORT", "page_port")
    )
    page_max_sessions: int = Field(default=20, ge=1)
    page_keygen_workers: int = Field(default=1, ge=1)
    page_keygen_per_client: int = Field(default=5, ge=1)
    page_steps_per_client: int = Field(default=120, ge=1)
    page_rate_window_seconds: float = Field(default=600.0, gt=0)
    page_trusted_proxies: int = Field(default=0, ge=0)
    page_queue_size: int = Field(default=32, ge=1)
    page_step_concurrency: int = Field(default=2, ge=1)
    page_session_ttl_seconds: float = Field(default=3600.0, gt=0)
    page_no_heartbeat_ttl_seconds: float = Field(default=120.0, gt=0)
    page_limits: Literal["auto", "public", "local"] = "auto"

    def resolved_server_url(self) -> str:
        """The FHE server's base URL: ``server_url``, or the local one on ``server_port``."""
        return (self.server_url or f"http://127.0.0.1:{self.server_port}").rstrip("/")
