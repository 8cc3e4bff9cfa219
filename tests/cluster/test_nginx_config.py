"""The nginx configuration the cluster renders: the per-address limit on requests for a session.

Fast and without keys: the configuration is rendered from settings and read; one test asks
``nginx -t`` whether nginx accepts it (skipped without nginx, an error under
``REQUIRE_CLUSTER=1``). The limit at work, with real processes, is in ``test_faults.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fhe_server.cluster import find_binary
from fhe_server.nginx_config import ClusterError, creation_limit, render_nginx_config
from settings import ServerSettings, server_settings_from

LIMIT = "limit_req zone=fhe_creations burst=20 delay=10;"
# Two replicas at 10 requests per second each: 20 a second, 10 s of them waiting, 1 s at once.
TOTAL_LIMIT = "limit_req zone=fhe_creations_all burst=200 delay=20;"


def render(tmp_path: Path, **fields: object) -> str:
    return render_nginx_config(
        tmp_path, 8080, [8081, 8082], server_settings=ServerSettings(**fields)
    )


def test_both_requests_for_a_session_are_limited_per_address_and_in_all(tmp_path: Path) -> None:
    config = render(tmp_path)
    assert "limit_req_zone $fhe_creation_client zone=fhe_creations:1m rate=120r/m;" in config
    assert "limit_req_zone $fhe_creation_any zone=fhe_creations_all:64k rate=1200r/m;" in config
    # The library's question (GET /admission) and the creation (POST /sessions), nothing else.
    for limit in (LIMIT, TOTAL_LIMIT):
        assert config.count(limit) == 2
        for location in ("location = /sessions {", "location = /admission {"):
            block = config.split(location, 1)[1].split("}", 1)[0]
            assert limit in block, location
    assert "        127.0.0.1 1;\n        ::1 1;\n" in config  # session_quota_exempt's default
    # A request that found a queue full: told to come back once the queues drained.
    assert "add_header Retry-After 10 always;" in config


def test_a_refused_creation_is_not_read_to_its_end(tmp_path: Path) -> None:
    config = render(tmp_path)
    for location in ("location @@refused {", "location @@slow_down {"):
        block = config.split(location.replace("@@", "@"), 1)[1].split("}", 1)[0]
        assert "lingering_time 0;" in block, location


def test_a_rate_of_0_turns_its_limit_off_and_no_address_is_exempt_when_none_is_listed(
    tmp_path: Path,
) -> None:
    config = render(tmp_path, creation_requests_per_second=0, session_quota_exempt="")
    assert LIMIT not in config and config.count(TOTAL_LIMIT) == 2
    config = render(tmp_path, replica_creation_requests_per_second=0)
    assert TOTAL_LIMIT not in config and config.count(LIMIT) == 2
    geo = render(tmp_path, session_quota_exempt="").split("geo $fhe_creation_exempt {", 1)[1]
    assert geo.split("}", 1)[0].split() == ["default", "0;"]


def test_an_exempt_entry_that_is_no_ip_address_is_refused() -> None:
    exempt = ServerSettings(session_quota_exempt=["127.0.0.1", "localhost"])
    with pytest.raises(ClusterError, match="no IP address"):
        creation_limit(exempt, 2)


def test_the_queues_hold_10_seconds_of_requests_and_a_creation_passes_at_once() -> None:
    slow = ServerSettings(creation_requests_per_second=0.5, replica_creation_requests_per_second=3)
    fields = creation_limit(slow, 3)
    assert fields["creation_rate"] == "30r/m" and fields["total_creation_rate"] == "540r/m"
    # 5 requests of one address fit the queue (10 s at one per 2 s), half of them pass at once;
    # 90 of all clients (10 s at 9 per s), one second's worth at once.
    assert "zone=fhe_creations burst=5 delay=3;" in fields["creation_limit"]
    assert "zone=fhe_creations_all burst=90 delay=9;" in fields["creation_limit"]
    assert fields["slow_down_seconds"] == "10"


def test_the_cluster_reads_the_settings_its_replicas_read() -> None:
    read = server_settings_from(
        {
            "PATH": "/usr/bin",
            "FHE_CREATION_REQUESTS_PER_SECOND": "0.5",
            "fhe_session_quota_exempt": "10.0.0.1, 10.0.0.2",
        }
    )
    assert read.creation_requests_per_second == 0.5
    assert read.session_quota_exempt == ["10.0.0.1", "10.0.0.2"]


def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    nginx = find_binary("nginx")
    if nginx is None:
        if os.environ.get("REQUIRE_CLUSTER") == "1":
            raise RuntimeError("REQUIRE_CLUSTER=1 but nginx is not installed")
        pytest.skip("nginx is not installed")
    for index, fields in enumerate(
        ({}, {"creation_requests_per_second": 0, "session_quota_exempt": ""})
    ):
        path = tmp_path / f"nginx-{index}.conf"
        path.write_text(render(tmp_path, **fields), encoding="utf-8")
        checked = subprocess.run(
            [nginx, "-t", "-p", str(tmp_path), "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
