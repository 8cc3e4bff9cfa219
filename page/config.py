"""The page's client-side settings: both servers' addresses and every time-out, read once.

``PageConfig.from_environment()`` is the one place the page reads its environment: the FHE
server's side and the page's limits come from ``settings.ClientSettings`` (``FHE_*``,
``GRADIO_SERVER_*``), the three-party side from ``THREEPARTY_SERVER_URL`` /
``THREEPARTY_SERVER_PORT``. ``app.main`` builds it and passes it on; nothing else reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import settings

TP_PYTHON = settings.REPO_DIR / ".venv-threeparty" / "bin" / "python"
DEFAULT_TP_PORT = 8001


@dataclass(frozen=True)
class ThreePartyConfig:
    """Where the three-party mode runs and how long each part of a run may take.

    Attributes:
        server_url: a three-party server run elsewhere (THREEPARTY_SERVER_URL); "" when the
            page starts its own on ``port``.
        port: the port of the server the page starts (THREEPARTY_SERVER_PORT, 127.0.0.1).
        python: the interpreter with openfhe (``.venv-threeparty``).
        start_timeout: seconds to wait for the server's /health (it runs a self-test first).
        restart_limit: restarts of a dead server the page allows per 10 minutes.
        probe_timeout: seconds for ``python -c "import openfhe"`` (is the mode available?).
        identity_timeout: seconds for a party's ``identity`` command.
        request_timeout: seconds for creating a session on the server.
        delete_timeout: seconds for deleting it afterwards.
        party_wait: seconds a party waits for another (the party's ``--wait``).
        flow_timeout: seconds a whole run may take.
        exit_timeout: seconds a party may take to exit once its output ended.
    """

    server_url: str = ""
    port: int = DEFAULT_TP_PORT
    python: Path = TP_PYTHON
    start_timeout: float = 120.0
    restart_limit: int = 3
    probe_timeout: float = 60.0
    identity_timeout: float = 60.0
    request_timeout: float = 30.0
    delete_timeout: float = 10.0
    party_wait: float = 120.0
    flow_timeout: float = 300.0
    exit_timeout: float = 30.0

    @property
    def local_url(self) -> str:
        """The base URL of the server the page starts."""
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ThreePartyConfig:
        """The THREEPARTY_SERVER_URL / THREEPARTY_SERVER_PORT variables (``os.environ``)."""
        environ = os.environ if environ is None else environ
        return cls(
            server_url=environ.get("THREEPARTY_SERVER_URL", "").rstrip("/"),
            port=int(environ.get("THREEPARTY_SERVER_PORT", str(DEFAULT_TP_PORT))),
        )


@dataclass(frozen=True)
class PageConfig:
    """Everything the page's process needs to know about its servers and limits.

    Attributes:
        client: the FHE server's address and start-up, the keys folder and the page's limits.
        threeparty: the three-party server's address and the run's time-outs.
    """

    client: settings.ClientSettings = field(default_factory=settings.ClientSettings)
    threeparty: ThreePartyConfig = field(default_factory=ThreePartyConfig)

    @classmethod
    def from_environment(cls) -> PageConfig:
        """Read the page's environment (the only place that does)."""
        return cls(settings.ClientSettings(), ThreePartyConfig.from_environment())
