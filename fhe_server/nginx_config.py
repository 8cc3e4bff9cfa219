"""The nginx configuration of the cluster, rendered from ``nginx.conf.template`` and settings.

``render_nginx_config`` fills the template's ``@{name}`` placeholders: the replicas, the
folders nginx writes to, the body limit, and the two queues for requests for a new session
(per client address and for all clients, ``creation_limit``), from the settings the replicas
read. ``fhe_server.cluster`` writes the result and starts nginx with it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import pwd
import string
from collections.abc import Sequence
from pathlib import Path

from settings import ServerSettings

HOST = "127.0.0.1"
TEMPLATE_PATH = Path(__file__).with_name("nginx.conf.template")
# Request bodies nginx accepts; the replicas check each route's exact size themselves.
MAX_BODY_BYTES = 64 * 1024 * 1024
# nginx takes a replica out of rotation for FAIL_TIMEOUT after MAX_FAILS failed attempts within
# FAIL_TIMEOUT: one broken connection never takes a healthy replica out, and a stopped one costs
# three refused connections (each moved to the next replica) before it is skipped.
MAX_FAILS = 3
FAIL_TIMEOUT = "5s"
# Requests for a new session over their rate wait in nginx's queues, which hold this many
# seconds of requests; a request that finds a queue full is refused, told to come back after it.
QUEUE_SECONDS = 10


class ClusterError(RuntimeError):
    """A part of the cluster could not start, or its settings cannot configure nginx.

    When a process did not start, the message carries the end of its log.
    """


class _Template(string.Template):
    """``@{name}`` placeholders: ``$`` belongs to nginx's own variables."""

    delimiter = "@"


def _zone(name: str, rate: float, seconds_at_once: float) -> tuple[str, str]:
    """The ``rate=`` of a limit_req zone and the ``limit_req`` line using it (a comment if off).

    Args:
        name: the zone's name.
        rate: requests per second (0: no limit).
        seconds_at_once: of the queue (``QUEUE_SECONDS`` of requests), this many seconds' worth
            pass at once, the rest wait their turn; at least 2 (a library client's question and
            creation).
    """
    per_minute = max(1, round(rate * 60))  # nginx takes whole requests per second or minute
    burst = max(2, math.ceil(rate * QUEUE_SECONDS))
    undelayed = min(burst, max(2, math.ceil(rate * seconds_at_once)))
    line = (
        f"limit_req zone={name} burst={burst} delay={undelayed};"
        if rate > 0
        else f"# {name}: no limit (its rate is 0)"
    )
    return f"{per_minute}r/m", line


def creation_limit(server_settings: ServerSettings, replicas: int) -> dict[str, str]:
    """The template's fields of the limits on requests for a new session.

    Two limits, each a queue in nginx: per client address (``creation_requests_per_second``)
    and for all clients together (``replica_creation_requests_per_second`` times the
    replicas). A request over a rate waits in its queue, which holds ``QUEUE_SECONDS`` of
    requests; one that finds a queue full is refused at once, told to come back when it drained.

    Args:
        server_settings: the replicas' settings: the two rates, and the addresses without
            either limit (``session_quota_exempt``).
        replicas: how many replicas nginx sends requests to.

    Returns:
        The fields ``creation_rate``, ``total_creation_rate``, ``creation_limit``,
        ``exempt_lines``, ``slow_down_seconds`` and ``slow_down_detail``.

    Raises:
        ClusterError: if an exempt entry is not an IP address (nginx's ``geo`` needs one).
    """
    lines = []
    for entry in server_settings.session_quota_exempt:
        try:
            address = ipaddress.ip_address(entry)
        except ValueError as error:
            raise ClusterError(f"FHE_SESSION_QUOTA_EXEMPT: {entry!r} is no IP address") from error
        lines.append(f"        {address} 1;")
    per_client = server_settings.creation_requests_per_second
    total = server_settings.replica_creation_requests_per_second * replicas
    client_rate, client_line = _zone("fhe_creations", per_client, QUEUE_SECONDS / 2)
    total_rate, total_line = _zone("fhe_creations_all", total, 1.0)
    return {
        "creation_rate": client_rate,
        "total_creation_rate": total_rate,
        "creation_limit": f"{client_line}\n            {total_line}",
        "exempt_lines": "\n".join(lines),
        "slow_down_seconds": str(QUEUE_SECONDS),
        "slow_down_detail": (
            f"too many requests for a new session (over {per_client:g} per second from this "
            f"address, or {total:g} per second from all clients); ask again in "
            f"{QUEUE_SECONDS} s"
        ),
    }


def render_nginx_config(
    workdir: Path,
    port: int,
    replica_ports: Sequence[int],
    host: str = HOST,
    server_settings: ServerSettings | None = None,
) -> str:
    """The nginx configuration for replicas on ``replica_ports``, listening on ``host:port``.

    Args:
        workdir: the folder nginx writes to.
        port: nginx's port.
        replica_ports: the replicas' ports.
        host: the address nginx and the replicas listen on.
        server_settings: the replicas' settings (the limits on requests for a new session and
            their exempt addresses come from them); default: the defaults.

    Returns:
        The configuration's text.
    """
    server_settings = server_settings or ServerSettings()
    servers = "\n".join(
        f"        server {host}:{replica_port} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT};"
        for replica_port in replica_ports
    )
    # As root, nginx's workers would switch to "nobody", who cannot use the temporary folders.
    user_line = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""
    return _Template(TEMPLATE_PATH.read_text(encoding="utf-8")).substitute(
        workdir=str(workdir),
        user_line=user_line,
        max_body_bytes=MAX_BODY_BYTES,
        servers=servers,
        host=host,
        port=port,
        **creation_limit(server_settings, len(replica_ports)),
    )
