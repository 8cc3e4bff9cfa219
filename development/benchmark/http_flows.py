"""Stage 4, over HTTP: five-step flows, explain and the server's memory with live sessions.

``backend.CreditScoringClient`` against a real ``uvicorn server:app`` (``fhe_server.launcher``),
its requests timed by ``development.instrumentation.RecordingTransport``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from development.benchmark.dataset import Dataset
from development.benchmark.options import Options
from development.benchmark.report import Report
from development.benchmark.timing import Stopwatch, rss_bytes, timed
from development.instrumentation import RecordedRequest, RecordingTransport
from fhe_server.launcher import ServerProcess

RSS_SESSIONS = 5
FLOW_STEPS = (
    "keygen_upload",
    "send_applicant",
    "send_bank",
    "send_credit_bureau",
    "predict",
    "fetch_decrypt",
)


def route(request: RecordedRequest) -> str:
    """'METHOD route' with the session id left out (e.g. 'PUT inputs/bank')."""
    parts = [p for p in request.path.split("/") if p]
    tail = "/".join(parts[2:]) if len(parts) > 2 else "/".join(parts)
    if len(parts) == 2 and request.method == "DELETE":
        tail = "sessions/{id}"
    return f"{request.method} {tail}"


def route_times(transport: RecordingTransport, name: str) -> list[float]:
    """The recorded times (to the response's headers) of one route."""
    return [r.seconds for r in list(transport.requests) if route(r) == name]


def pick_profiles(data: Dataset, count: int) -> list[int]:
    """Held-out positions of refused applications that explain can turn into approvals.

    Falls back to any refused row when fewer than ``count`` such rows exist.
    """
    from development.reference import clear_explain

    refused = [int(i) for i in np.flatnonzero(data.y_quant == 0)]
    chosen = []
    for position in refused:
        parts = data.raw_parties(position)
        if clear_explain(parts["applicant"], parts["bank"], parts["credit_bureau"]) is not None:
            chosen.append(position)
            if len(chosen) == count:
                return chosen
    return (chosen + refused)[:count] or [0]


def full_flow(client: Any, parts: dict[str, dict[str, Any]]) -> tuple[dict[str, float], bool]:
    """The five steps (keys, three uploads, predict, fetch + decrypt); return times and verdict.

    Key generation and predict wait and try again while the server's queue is full (503).
    """
    from backend import retry_while_busy

    steps: dict[str, float] = {}
    steps["keygen_upload"], _ = timed(lambda: retry_while_busy(client.generate_keys))
    steps["send_applicant"], _ = timed(lambda: client.send_applicant(**parts["applicant"]))
    steps["send_bank"], _ = timed(lambda: client.send_bank(**parts["bank"]))
    steps["send_credit_bureau"], _ = timed(
        lambda: client.send_credit_bureau(**parts["credit_bureau"])
    )
    steps["predict"], _ = timed(lambda: retry_while_busy(client.predict))
    steps["fetch_decrypt"], verdict = timed(client.decrypt_verdict)
    steps["flow"] = sum(steps.values())
    return steps, bool(verdict)


@dataclass
class HttpSamples:
    """What ``measure_http`` measures, session by session (the first, warm-up one left out).

    Attributes:
        steps: seconds of each of the five steps (``FLOW_STEPS``, and "flow": their sum).
        first_predict_fhe: the server's FHE seconds of each session's first predict.
        warm_predict_fhe: the same for a second predict on the session's prepared keys.
        explain_wall: seconds of each explain, seen by the client.
        explain_fhe: the server's FHE seconds of each explain.
        explain_trips: HTTP requests each explain made.
        agree: whether each session's verdict and explanation were the clear model's.
        rss: the server's RSS (bytes) with that many sessions open.
    """

    steps: dict[str, list[float]] = field(default_factory=dict)
    first_predict_fhe: list[float] = field(default_factory=list)
    warm_predict_fhe: list[float] = field(default_factory=list)
    explain_wall: list[float] = field(default_factory=list)
    explain_fhe: list[float] = field(default_factory=list)
    explain_trips: list[int] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)
    rss: dict[int, int] = field(default_factory=dict)


def measure_http(
    report: Report, options: Options, data: Dataset, server: ServerProcess, work_dir: Path
) -> None:
    """Five-step flows, explain and the server's RSS with live sessions, over HTTP."""
    from backend import CreditScoringClient, retry_while_busy
    from development.reference import clear_explain

    report.stage("HTTP flows")
    n_sessions = max(RSS_SESSIONS, options.runs + 1)
    profiles = pick_profiles(data, n_sessions)
    transport = RecordingTransport(keep_bodies=False)
    clients = []
    samples = HttpSamples(rss={0: rss_bytes(server.pid)})
    try:
        for index in tqdm(range(n_sessions), desc="sessions (flow + explain)", leave=False):
            position = profiles[index % len(profiles)]
            parts = data.raw_parties(position)
            client = CreditScoringClient(
                server.url, key_dir=work_dir / "http_keys" / str(index), transport=transport
            )
            clients.append(client)
            flow_steps, verdict = full_flow(client, parts)
            before = len(transport)
            with Stopwatch() as explain_watch:
                years = retry_while_busy(client.explain)
            trips = len(transport) - before
            expected_years = clear_explain(**parts)
            samples.agree.append(
                verdict == bool(data.y_quant[position]) and years == expected_years
            )
            # Memory after this session's full flow, with every session so far still open.
            samples.rss[index + 1] = rss_bytes(server.pid)
            if index == 0:
                continue  # warm-up: the server's very first FHE runs
            for name, seconds in flow_steps.items():
                samples.steps.setdefault(name, []).append(seconds)
            samples.first_predict_fhe.append(float(client.fhe_execution_time))
            samples.explain_wall.append(explain_watch.seconds)
            samples.explain_trips.append(trips)
            if client.explain_fhe_execution_time is not None:
                samples.explain_fhe.append(float(client.explain_fhe_execution_time))
            samples.warm_predict_fhe.append(float(retry_while_busy(client.predict)))
        record_http(report, n_sessions, transport, samples)
    finally:
        for client in clients:
            client.close()
        transport.close()
    time.sleep(0.5)
    report.record("server_rss_after_close_bytes", rss_bytes(server.pid))


def record_http(
    report: Report, n_sessions: int, transport: RecordingTransport, samples: HttpSamples
) -> None:
    """Record the medians of the HTTP stage, the explain's round trips and the server's RSS."""
    report.record("http_sessions", n_sessions)
    report.median("flow_s", samples.steps["flow"])
    for name in FLOW_STEPS:
        report.median(f"flow_{name}_s", samples.steps[name])
    report.median("http_upload_keys_s", route_times(transport, "POST sessions")[1:])
    report.median("http_first_predict_fhe_s", samples.first_predict_fhe)
    report.median("http_warm_predict_fhe_s", samples.warm_predict_fhe)
    report.median("explain_http_s", samples.explain_wall)
    if samples.explain_fhe:
        report.median("explain_server_fhe_s", samples.explain_fhe)
    report.record("explain_round_trips", max(samples.explain_trips))
    report.record("http_agreement", round(float(np.mean(samples.agree)), 4))
    report.record("server_rss_0_sessions_bytes", samples.rss[0])
    report.record("server_rss_1_session_bytes", samples.rss[1])
    report.record("server_rss_5_sessions_bytes", samples.rss[RSS_SESSIONS])
    report.facts(server_rss_by_sessions_bytes={str(k): v for k, v in samples.rss.items()})
