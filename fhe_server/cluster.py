"""A local cluster: redis-server, N single-worker replicas of the server, nginx in front.

``make cluster REPLICAS=2`` (or ``python -m fhe_server.cluster --replicas 2``) runs it in the
foreground until Ctrl-C, which stops everything. Redis listens on loopback with persistence off;
each replica uses it as its session store (``FHE_STORE_URL``) and is named by
``FHE_REPLICA_NAME``; nginx (Debian's package, configured from ``nginx.conf.template`` by
``fhe_server.nginx_config``) sends the requests of one session to one replica by consistent
hashing on the session id, and ``POST /sessions`` to any. A replica that dies is started
again; its sessions meanwhile move to the other replicas, which read them from Redis.

The tests and the scale-out benchmark use ``Cluster`` as a context manager.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from contracts.single_key import HEALTH_PATH
from fhe_server.launcher import free_port, stop_process
from fhe_server.make_parent import watch_make_parent
from fhe_server.nginx_config import HOST, ClusterError, render_nginx_config
from settings import server_settings_from

REPO_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 120.0


def find_binary(name: str) -> str | None:
    """Path of an executable on PATH or in the sbin folders (where Debian puts nginx)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


class Child:
    """One process of the cluster, its output copied to a log file (and echoed, if asked)."""

    def __init__(
        self, name: str, command: list[str], log_path: Path, env: dict[str, str], echo: bool
    ):
        """Describe the process; ``start`` runs it."""
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.echo = echo
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (again)."""
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_DIR,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the cluster runner, which stops each child
        )
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        with self.log_path.open("ab") as log:
            for line in stream:
                log.write(line)
                log.flush()
                if self.echo:
                    text = line.decode("utf-8", errors="replace").rstrip()
                    print(f"[{self.name}] {text}", flush=True)

    @property
    def pid(self) -> int | None:
        """The process id, or None if it never started."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, characters: int = 3000) -> str:
        """The end of what the process printed."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-characters:]
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        """Send a signal to the process (if it runs)."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the process is reaped."""
        if self.process is not None:
            stop_process(self.process, grace=timeout)


class Cluster:
    """redis-server, ``replicas`` replicas of ``uvicorn server:app`` and nginx, on loopback.

    Attributes:
        url: nginx's address, the cluster's one entry point (``FHE_SERVER_URL``).
        redis_url: the store every replica uses.
        replica_urls: each replica's own address (for tests and measurements).
        workdir: logs and nginx's files.
    """

    def __init__(
        self,
        replicas: int = 2,
        port: int = 0,
        redis_port: int = 0,
        replica_ports: Sequence[int] | None = None,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
        echo: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    ):
        """Describe the cluster (0 ports: free ones); ``start`` runs it.

        Args:
            replicas: number of server replicas (at least 1).
            port: nginx's port.
            redis_port: redis-server's port.
            replica_ports: the replicas' ports (default: free ones).
            env: extra FHE_* settings for every replica.
            workdir: folder for logs and nginx's files (default: a new temporary folder).
            echo: also print every process's output, prefixed with its name.
            startup_timeout: seconds each part has to answer.

        Raises:
            ClusterError: if redis-server or nginx is not installed.
        """
        if replicas < 1:
            raise ClusterError("a cluster needs at least one replica")
        self.binaries = {name: find_binary(name) for name in ("redis-server", "nginx")}
        missing = [name for name, path in self.binaries.items() if path is None]
        if missing:
            raise ClusterError(
                f"not installed: {', '.join(missing)} (Debian: apt-get install redis-server nginx)"
            )
        self.port = port or free_port()
        self.redis_port = redis_port or free_port()
        self.replica_ports = list(replica_ports or [free_port() for _ in range(replicas)])
        if len(self.replica_ports) != replicas:
            raise ClusterError(f"{replicas} replicas need {replicas} ports")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fhe-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.startup_timeout = startup_timeout
        self.url = f"http://{HOST}:{self.port}"
        self.redis_url = f"redis://{HOST}:{self.redis_port}/0"
        self.replica_urls = [f"http://{HOST}:{port}" for port in self.replica_ports]
        self.redis = self._child("redis", self._redis_command(), {})
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        base_env["FHE_STORE_URL"] = self.redis_url
        self.server_settings = server_settings_from(base_env)  # what the replicas will read
        self.replicas = [
            self._child(
                f"replica-{index + 1}",
                self._replica_command(replica_port),
                {**base_env, "FHE_REPLICA_NAME": f"replica-{index + 1}"},
            )
            for index, replica_port in enumerate(self.replica_ports)
        ]
        self.nginx = self._child(
            "nginx",
            self._nginx_command(),
            {},
        )

    def _child(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        return Child(name, command, log_path, env or dict(os.environ), self.echo)

    @staticmethod
    def _replica_command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "server:app",
            "--host", HOST, "--port", str(port), "--workers", "1",
        ]  # fmt: skip

    def _nginx_command(self) -> list[str]:
        return [
            str(self.binaries["nginx"]), "-e", "stderr",
            "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"),
        ]  # fmt: skip

    def _redis_command(self) -> list[str]:
        # Persistence off: a restarted Redis is empty (sessions are short-lived by design).
        return [
            str(self.binaries["redis-server"]), "--port", str(self.redis_port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
        ]  # fmt: skip

    # -- waiting ---------------------------------------------------------------------------
    def _wait(self, child: Child, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not child.alive():
                raise ClusterError(f"{child.name} exited before {what}:\n{child.log_tail()}")
            try:
                if ready():
                    return
            except (OSError, httpx.TransportError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{child.name}: no {what} within {self.startup_timeout} s:\n{child.log_tail()}"
                )
            time.sleep(0.2)

    @staticmethod
    def _healthy(url: str) -> bool:
        return httpx.get(f"{url}{HEALTH_PATH}", timeout=5.0).status_code == 200

    def _redis_answers(self) -> bool:
        with socket.create_connection((HOST, self.redis_port), timeout=2.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    # -- life cycle ------------------------------------------------------------------------
    def start_redis(self) -> None:
        """Start redis-server (empty) and wait until it answers PING."""
        self.redis.start()
        self._wait(self.redis, self._redis_answers, "an answer to PING")

    def start_replica(self, index: int, wait: bool = True) -> None:
        """Start replica ``index`` (again); with ``wait``, until its /health answers."""
        self.replicas[index].start()
        if wait:
            self.wait_replica(index)

    def wait_replica(self, index: int) -> None:
        """Wait until replica ``index`` answers /health."""
        url = self.replica_urls[index]
        self._wait(self.replicas[index], lambda: self._healthy(url), "/health")

    def start(self) -> Cluster:
        """Start Redis, the replicas (loading the model in parallel) and nginx; wait for each."""
        try:
            self.start_redis()
            for index in range(len(self.replicas)):
                self.start_replica(index, wait=False)
            for index in range(len(self.replicas)):
                self.wait_replica(index)
            (self.workdir / "nginx.conf").write_text(
                render_nginx_config(
                    self.workdir,
                    self.port,
                    self.replica_ports,
                    server_settings=self.server_settings,
                ),
                encoding="utf-8",
            )
            self.nginx.start()
            self._wait(self.nginx, lambda: self._healthy(self.url), "/health through nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def restart_redis(self) -> None:
        """Stop redis-server and start it again on the same port, empty."""
        self.redis.stop()
        self.start_redis()

    def stop(self) -> None:
        """Stop nginx, the replicas, then Redis."""
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis.stop()
        if self._own_workdir:  # (echoed logs were printed already)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        """Start the cluster."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the cluster."""
        self.stop()

    def supervise(self, stop: threading.Event, period: float = 1.0) -> None:
        """Until ``stop`` is set: start again every replica that died.

        Raises:
            ClusterError: if Redis or nginx dies (the cluster cannot serve without them).
        """
        while not stop.wait(period):
            for part in (self.redis, self.nginx):
                if not part.alive():
                    raise ClusterError(f"{part.name} stopped:\n{part.log_tail()}")
            for index, replica in enumerate(self.replicas):
                if not replica.alive():
                    print(f"[cluster] {replica.name} stopped; starting it again", flush=True)
                    self.start_replica(index, wait=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a local cluster in the foreground until Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="server replicas (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    parser.add_argument("--redis-port", type=int, default=6380, help="Redis's port (default 6380)")
    parser.add_argument(
        "--replica-port",
        type=int,
        default=8101,
        help="first replica's port; the others follow (default 8101)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    watch_make_parent()  # `make cluster`: a SIGINT to make alone stops the cluster too
    try:
        cluster = Cluster(
            replicas=args.replicas,
            port=args.port,
            redis_port=args.redis_port,
            replica_ports=[args.replica_port + index for index in range(args.replicas)],
            echo=True,
        )
        print(f"[cluster] starting Redis, {args.replicas} replica(s) and nginx ...", flush=True)
        cluster.start()
    except ClusterError as error:
        print(f"[cluster] cannot start: {error}", file=sys.stderr)
        return 1
    print(
        f"[cluster] ready at {cluster.url} (replicas {', '.join(cluster.replica_urls)}, "
        f"Redis {cluster.redis_url}, logs in {cluster.workdir}, removed when it stops).\n"
        f"[cluster] Use it with: FHE_SERVER_URL={cluster.url} make run   (Ctrl-C stops all)",
        flush=True,
    )
    try:
        cluster.supervise(stop)
        status = 0
    except ClusterError as error:
        print(f"[cluster] {error}", file=sys.stderr)
        status = 1
    finally:
        print("[cluster] stopping", flush=True)
        cluster.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
