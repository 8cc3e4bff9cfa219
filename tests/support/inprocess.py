"""The single-key server's app in this process, through FastAPI's ``TestClient``.

- ``app_client(store_dir, **settings)``: a ``TestClient`` of ``create_app`` with those settings,
  its lifespan run (requests say ``Host: testserver``, accepted unless the test says otherwise).
- ``service_of(client)``: the app's ``ScoringService`` (its store and key cache).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from fhe_server.api import create_app
from settings import ServerSettings


@contextmanager
def app_client(store_dir: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient of an app created with the test's settings (lifespan run).

    Args:
        store_dir: the filesystem store's directory.
        **overrides: other ``ServerSettings`` fields.
    """
    overrides.setdefault("allowed_hosts", ["testserver"])
    config = ServerSettings(store_dir=store_dir, **overrides)
    with TestClient(create_app(config)) as client:
        yield client


def service_of(test_client: TestClient) -> Any:
    """The ``ScoringService`` of a TestClient's app."""
    return test_client.app_state["service"]
