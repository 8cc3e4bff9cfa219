"""Test and benchmark instrumentation around the FHE server: record requests, probe /health.

Used by the tests and the benchmark only, so it lives here and not in the production launcher
(``fhe_server.launcher``, whose ``stop_process`` the probe reuses):

- ``RecordingTransport``: an httpx transport that forwards requests and records each one
  (``RecordedRequest``).
- ``HealthProbe``: /health latencies measured from a child process while something runs.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from fhe_server.launcher import stop_process


# ---------------------------------------------------------------------------------------------
# Recording a client's requests
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedRequest:
    """One request as it went out, and how long the answer's headers took.

    Attributes:
        method: the HTTP method.
        url: the full URL.
        headers: the raw header pairs as sent.
        body: the body as sent (b"" when the transport does not keep bodies).
        seconds: time from sending to the response's headers.
    """

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    seconds: float

    @property
    def path(self) -> str:
        """The URL's path (``/sessions/…``)."""
        return httpx.URL(self.url).path

    def wire_bytes(self) -> bytes:
        """Everything the request carried: request line, headers and body."""
        head = f"{self.method} {self.url}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in self.headers)
        return head + b"\r\n" + self.body


class RecordingTransport(httpx.BaseTransport):
    """Forwards every request to a real transport and records it (thread-safe).

    Attributes:
        requests: the recorded requests, in order.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None, keep_bodies: bool = True):
        """Wrap ``inner`` (a new ``httpx.HTTPTransport`` when None).

        Args:
            inner: the transport that really sends the requests.
            keep_bodies: keep each request's body (off for long runs with large uploads).
        """
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.keep_bodies = keep_bodies
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far."""
        with self._lock:
            return [(request.method, request.path) for request in self.requests]

    def __len__(self) -> int:
        with self._lock:
            return len(self.requests)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request through the real transport, recording it and its time."""
        body = bytes(request.read()) if self.keep_bodies else b""
        headers = list(request.headers.raw)
        start = time.perf_counter()
        try:
            return self.inner.handle_request(request)
        finally:  # a request that failed (refused, timed out) is recorded too
            record = RecordedRequest(
                request.method, str(request.url), headers, body, time.perf_counter() - start
            )
            with self._lock:
                self.requests.append(record)

    def close(self) -> None:
        """Close the real transport."""
        self.inner.close()


# ---------------------------------------------------------------------------------------------
# /health latency, measured from another process
# ---------------------------------------------------------------------------------------------
_HEALTH_PROBE_SCRIPT = """
import json, sys, time
from pathlib import Path
import httpx
base_url, stop_file, period = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
latencies, failures = [], []
with httpx.Client(base_url=base_url, timeout=60) as http:
    while not stop_file.exists():
        start = time.perf_counter()
        try:
            status = http.get("/health").status_code
        except httpx.TransportError as error:
            failures.append(repr(error))
        else:
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures.append(f"status {status}")
        if len(latencies) + len(failures) == 1:
            print("ready", flush=True)
        time.sleep(period)
print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)
"""


class HealthProbe:
    """Calls /health every ``period_seconds`` from a child process and records the latencies.

    A child process, so that the busy threads of this process (key generation, encryption, all
    under one GIL) cannot delay the measurement: what is measured is the server. Entering the
    context returns once the first call has been answered.

    Attributes:
        latencies: seconds of each call answered 200 (filled when the context exits).
        failures: the other answers and the transport errors, as text.
    """

    def __init__(self, base_url: str, period_seconds: float = 0.1, start_timeout: float = 120.0):
        """Describe the probe; nothing runs before ``with``.

        Args:
            base_url: the server's base URL.
            period_seconds: pause between two calls.
            start_timeout: seconds to wait for the first answer.
        """
        self.base_url = base_url
        self.period_seconds = period_seconds
        self.start_timeout = start_timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProbe:
        self._dir = tempfile.TemporaryDirectory()
        stop_file = Path(self._dir.name) / "stop"
        command = [sys.executable, "-c", _HEALTH_PROBE_SCRIPT, self.base_url]
        command += [str(stop_file), str(self.period_seconds)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], self.start_timeout)
        if not ready or self._process.stdout.readline().strip() != "ready":
            self._close()
            raise RuntimeError(f"the /health probe did not start within {self.start_timeout:g} s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._process is not None and self._dir is not None
        (Path(self._dir.name) / "stop").touch()
        try:
            output, _ = self._process.communicate(timeout=120)
        finally:
            self._close()
        result = json.loads(output.strip().splitlines()[-1])
        self.latencies, self.failures = result["latencies"], result["failures"]

    def _close(self) -> None:
        if self._process is not None:
            stop_process(self._process, grace=5)
        if self._dir is not None:
            self._dir.cleanup()
