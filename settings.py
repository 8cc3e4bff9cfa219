"""Paths, limits and choices of the encrypted credit-card approval service, in one place.

Nothing here does work at import time: the field ranges the page shows are read from
``deployment_files/field_ranges.json`` (written by ``python -m development.train`` from the data)
the first time one of them is asked for.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fhe_server import protocol

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

# Where the page's process keeps each browser session's private keys (one sub-folder a session).
CLIENT_KEYS_DIR = Path(os.environ.get("FHE_CLIENT_KEYS_DIR", str(REPO_DIR / ".keys")))

# The FHE server the client library talks to.
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def server_url() -> str:
    """Return the FHE server's base URL (environment variable FHE_SERVER_URL, or the local one)."""
    return os.environ.get("FHE_SERVER_URL", DEFAULT_SERVER_URL).rstrip("/")


# ---------------------------------------------------------------------------------------------
# Parties and fields
# ---------------------------------------------------------------------------------------------
PARTIES = protocol.PARTIES  # ("applicant", "bank", "credit_bureau"), named in fhe_server.protocol

APPLICANT_FIELDS = (
    "own_car",
    "own_property",
    "mobile_phone",
    "num_children",
    "household_size",
    "total_income",
    "age",
    "income_type",
    "education_type",
    "family_status",
    "occupation_type",
    "housing_type",
)
BANK_FIELDS = ("account_age",)
CREDIT_BUREAU_FIELDS = ("employed", "years_employed")
PARTY_FIELDS = {
    "applicant": APPLICANT_FIELDS,
    "bank": BANK_FIELDS,
    "credit_bureau": CREDIT_BUREAU_FIELDS,
}
BOOLEAN_FIELDS = ("own_car", "own_property", "mobile_phone", "employed")

# Canonical category values, each with its English and Chinese display names. The canonical value
# is what the data, the preprocessing and the client library use; the page shows a display name.
CATEGORY_DISPLAY: dict[str, dict[str, dict[str, str]]] = {
    "income_type": {
        "Working": {"en": "Working", "zh": "在职工作"},
        "Commercial associate": {"en": "Commercial associate", "zh": "商业合伙人"},
        "Pensioner": {"en": "Pensioner", "zh": "退休人员"},
        "State servant": {"en": "State servant", "zh": "公务员"},
        "Student": {"en": "Student", "zh": "学生"},
    },
    "education_type": {
        "Secondary": {"en": "Secondary school", "zh": "中学"},
        "Incomplete higher": {"en": "Incomplete higher education", "zh": "未完成高等教育"},
        "Higher education": {"en": "Higher education", "zh": "高等教育"},
        "Lower secondary": {"en": "Lower secondary school", "zh": "初中"},
        "Academic degree": {"en": "Academic degree", "zh": "学位"},
    },
    "family_status": {
        "Married": {"en": "Married", "zh": "已婚"},
        "Single": {"en": "Single / not married", "zh": "单身"},
        "Civil marriage": {"en": "Civil marriage", "zh": "事实婚姻"},
        "Separated": {"en": "Separated", "zh": "分居"},
        "Widow": {"en": "Widowed", "zh": "丧偶"},
    },
    "occupation_type": {
        "Laborers": {"en": "Laborers", "zh": "工人"},
        "Core staff": {"en": "Core staff", "zh": "核心员工"},
        "Sales staff": {"en": "Sales staff", "zh": "销售人员"},
        "Managers": {"en": "Managers", "zh": "经理"},
        "Drivers": {"en": "Drivers", "zh": "司机"},
        "High skill tech staff": {"en": "High-skill tech staff", "zh": "高技能技术人员"},
        "Accountants": {"en": "Accountants", "zh": "会计"},
        "Medicine staff": {"en": "Medical staff", "zh": "医务人员"},
        "Cooking staff": {"en": "Cooking staff", "zh": "厨师"},
        "Security staff": {"en": "Security staff", "zh": "安保人员"},
        "Cleaning staff": {"en": "Cleaning staff", "zh": "保洁人员"},
        "Private service staff": {"en": "Private service staff", "zh": "私人服务人员"},
        "Low-skill Laborers": {"en": "Low-skill laborers", "zh": "低技能工人"},
        "Waiters/barmen staff": {"en": "Waiters / bar staff", "zh": "服务员/酒保"},
        "Secretaries": {"en": "Secretaries", "zh": "秘书"},
        "Realty agents": {"en": "Real-estate agents", "zh": "房地产经纪人"},
        "HR staff": {"en": "HR staff", "zh": "人力资源人员"},
        "IT staff": {"en": "IT staff", "zh": "IT人员"},
    },
    "housing_type": {
        "House / apartment": {"en": "House / apartment", "zh": "住宅/公寓"},
        "With parents": {"en": "With parents", "zh": "与父母同住"},
        "Municipal apartment": {"en": "Municipal apartment", "zh": "市政公寓"},
        "Rented apartment": {"en": "Rented apartment", "zh": "租赁公寓"},
        "Office apartment": {"en": "Office apartment", "zh": "单位公寓"},
        "Co-op apartment": {"en": "Co-op apartment", "zh": "合作公寓"},
    },
    "years_employed": {
        "0-2": {"en": "0-2 years", "zh": "0-2年"},
        "2-5": {"en": "2-5 years", "zh": "2-5年"},
        "5-8": {"en": "5-8 years", "zh": "5-8年"},
        "8-11": {"en": "8-11 years", "zh": "8-11年"},
        "11-18": {"en": "11-18 years", "zh": "11-18年"},
        "18+": {"en": "18 years or more", "zh": "18年以上"},
    },
}

INCOME_TYPES = list(CATEGORY_DISPLAY["income_type"])
EDUCATION_TYPES = list(CATEGORY_DISPLAY["education_type"])
FAMILY_STATUS = list(CATEGORY_DISPLAY["family_status"])
OCCUPATION_TYPES = list(CATEGORY_DISPLAY["occupation_type"])
HOUSING_TYPES = list(CATEGORY_DISPLAY["housing_type"])
YEARS_EMPLOYED_BINS = list(CATEGORY_DISPLAY["years_employed"])
CATEGORY_VALUES: dict[str, list[str]] = {
    field: list(values) for field, values in CATEGORY_DISPLAY.items()
}


def display_name(field: str, value: str, lang: str = "en") -> str:
    """Return the display name of a canonical category value in a language ("en" or "zh")."""
    return CATEGORY_DISPLAY[field][value]["zh" if lang.startswith("zh") else "en"]


# Numeric fields whose slider range (and default) come from the data: name in settings -> field.
_RANGE_NAMES = {
    "ACCOUNT_MIN_MAX": "account_age",
    "CHILDREN_MIN_MAX": "num_children",
    "INCOME_MIN_MAX": "total_income",
    "AGE_MIN_MAX": "age",
    "FAMILY_MIN_MAX": "household_size",
}
_VALUE_NAMES = {"INCOME_VALUE": "total_income", "AGE_VALUE": "age"}


@lru_cache(maxsize=1)
def field_ranges() -> dict[str, dict[str, float]]:
    """Return {field: {"minimum", "maximum", "value"}} as measured on the training data."""
    return json.loads(FIELD_RANGES_PATH.read_text(encoding="utf-8"))


def __getattr__(name: str) -> Any:
    """Serve ACCOUNT_MIN_MAX, INCOME_VALUE, ... from the data's ranges, read on first use."""
    if name in _RANGE_NAMES:
        entry = field_ranges()[_RANGE_NAMES[name]]
        return {"minimum": entry["minimum"], "maximum": entry["maximum"]}
    if name in _VALUE_NAMES:
        return field_ranges()[_VALUE_NAMES[name]]["value"]
    raise AttributeError(f"module 'settings' has no attribute {name!r}")


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
    session_quota_exempt: Annotated[list[str], NoDecode] = ["127.0.0.1", "::1"]
    # Host names the server answers (any port), comma-separated in FHE_ALLOWED_HOSTS:
    # "*.example.org" matches its subdomains, "*" any host. Loopback only by default.
    allowed_hosts: Annotated[list[str], NoDecode] = ["localhost", "127.0.0.1", "[::1]"]

    @field_validator("allowed_hosts", "session_quota_exempt", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Read a list from its environment variable as comma-separated items."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> ServerSettings:
    """Return the server settings from the FHE_* environment variables (read once)."""
    return ServerSettings()
