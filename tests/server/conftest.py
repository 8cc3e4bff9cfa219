"""Fixtures of the server's tests: the example's ciphertexts and an in-process app.

``ciphertexts`` (one set a test module, from the module's ``kit``) holds the first of
``VERDICT_PROFILES``'s three parties' ciphertexts and explain's six candidates; ``client`` is a
TestClient of the app on a fresh store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.applications import VERDICT_PROFILES
from tests.support.inprocess import app_client
from tests.support.kit import Kit


@pytest.fixture(scope="module")
def ciphertexts(kit: Kit) -> dict[str, bytes]:
    """The example application's three ciphertexts and six explain candidates."""
    encrypted = kit.encrypt(VERDICT_PROFILES[0])
    encrypted["candidates"] = kit.encrypt_candidates()
    return encrypted


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """A TestClient of the app (lifespan run) on a store in the test's folder."""
    with app_client(store_dir=tmp_path / "store") as test_client:
        yield test_client
