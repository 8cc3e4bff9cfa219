"""The wire contracts live in ``contracts`` alone, and the client library reads no settings.

``contracts`` imports nothing of the project (standard library only, so the three-party party
program imports it on Python 3.10); the client's error classes come from the single-key error
table; no module of ``fhe_client`` imports ``settings`` or reads the environment.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import parties, single_key, threeparty
from fhe_client import errors
from fhe_server import protocol as single_key_protocol
from fhe_server.launcher import REPO_DIR
from threeparty import protocol as threeparty_protocol


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path", sorted((REPO_DIR / "contracts").glob("*.py")), ids=lambda path: path.name
)
def test_contracts_import_only_the_standard_library_and_themselves(path):
    allowed = {"__future__", "re", "enum", "dataclasses", "typing"}
    for name in _imports(path):
        assert name in allowed or name.split(".")[0] == "contracts", (path.name, name)


@pytest.mark.parametrize(
    "path", sorted((REPO_DIR / "fhe_client").glob("*.py")), ids=lambda path: path.name
)
def test_the_client_package_reads_no_settings_and_no_environment(path):
    text = path.read_text(encoding="utf-8")
    assert "os.environ" not in text and "getenv" not in text
    assert not {"settings", "backend"} & {name.split(".")[0] for name in _imports(path)}


def test_the_party_side_loads_no_settings_and_no_server():
    code = (
        "import sys, fhe_client.preprocessing, threeparty.protocol, contracts.threeparty; "
        "print(sorted(m for m in ('settings', 'pydantic_settings', 'fhe_server', 'backend') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_client_errors_follow_the_single_key_table():
    for status, error in single_key.ERRORS.items():
        raised = errors.error_for_status(status, "why", {})
        assert raised.status_code == status
        if status in errors.STATUS_ERRORS:
            assert raised.code == error.code and error.summary in raised.message
        else:  # no class of its own: a plain ServerError
            assert type(raised) is errors.ServerError
    assert set(errors.STATUS_ERRORS) == {401, 404, 409, 413, 422, 429, 503}
    assert {str(cls.code) for cls in errors.STATUS_ERRORS.values()} <= errors.ERROR_CODES


def test_the_old_protocol_modules_are_the_contracts():
    assert single_key_protocol.ERRORS is single_key.ERRORS
    assert single_key_protocol.PARTIES == parties.PARTIES == threeparty_protocol.ROLES
    assert threeparty_protocol.ErrorCode is threeparty.ErrorCode
    assert threeparty_protocol.RECIPIENTS == parties.RECIPIENTS == ("applicant", "bank")
    assert {code.status for code in threeparty.ErrorCode} == {
        401,
        403,
        404,
        409,
        413,
        415,
        422,
        429,
        503,
    }
