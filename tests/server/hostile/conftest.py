"""The hostile tests' fixtures: two key sets, one server process and a bystander session.

Package scope: every test of this folder attacks the same ``uvicorn server:app`` (so each test
also checks that the earlier attacks left it serving), and the bystander session, opened
before the first attack, must still get its correct verdict after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.applications import EXAMPLE_PROFILE, refused_profile
from tests.support.hostile import Bystander, Live
from tests.support.http import open_session, upload
from tests.support.kit import Kit
from tests.support.servers import running_server


@pytest.fixture(scope="package")
def kit_a() -> Kit:
    return Kit.generate()


@pytest.fixture(scope="package")
def kit_b() -> Kit:
    return Kit.generate()


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    store_dir = tmp_path_factory.mktemp("hostile") / "store"
    with running_server(store_dir=store_dir) as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            yield Live(base_url=base_url, store_dir=store_dir, http=http)


@pytest.fixture(scope="package")
def bystander(live: Live, kit_b: Kit) -> Bystander:
    profile = refused_profile()
    session_id, auth = open_session(live.http, kit_b.evaluation_keys)
    upload(live.http, session_id, auth, kit_b.encrypt(profile))
    return Bystander(session_id=session_id, auth=auth, kit=kit_b, profile=profile)


@pytest.fixture(scope="package")
def encrypted_a(kit_a: Kit) -> dict[str, bytes]:
    """kit_a's ciphertexts of the example application and of the explain candidates."""
    return {**kit_a.encrypt(EXAMPLE_PROFILE), "candidates": kit_a.encrypt_candidates()}
