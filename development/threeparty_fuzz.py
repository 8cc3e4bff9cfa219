"""Mutated OpenFHE blobs of every kind against a real three-party server, over HTTP.

Run in the three-party environment (``make fuzz-threeparty``)::

    OMP_NUM_THREADS=1 .venv-threeparty/bin/python -m development.threeparty_fuzz [--per-kind 200]

It starts ``uvicorn threeparty.server:app``, brings one session (three raw parties with real
identities) to the step where each kind of blob is uploaded, and uploads ``--per-kind`` mutated
copies of each kind, *signed* by the uploading party (so the server gets past the signature and
has to parse them): 8 bytes overwritten at a random offset (half of them in the first 64 bytes,
where OpenFHE's headers and length fields are), with a random value or a huge one. Meanwhile a
bystander session repeats one step (a signed round-1 upload and its deletion) and its latency is
compared with its idle latency. Prints a table (kind, uploads, answers by status, slowest answer,
server deaths, worker replacements) and writes development/threeparty_fuzz_results.json.

``mutate`` and ``Stage`` are what tests/threeparty/test_hardening.py uses with a few mutations.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contracts.wire import bearer
from fhe_server.launcher import ServerProcess
from threeparty import engine, protocol
from threeparty.transcript import Identity

OUT_PATH = Path(__file__).resolve().parent / "threeparty_fuzz_results.json"
KINDS = ("public_key", "eval_mult", "rotation", "challenge", "confirm_partial", "round2", "ct")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with 8 bytes overwritten (half the time in its first 64 bytes)."""
    head = 4  # keep the engine's 4-byte header: a wrong header is refused without parsing
    span = 64 if rng.random() < 0.5 else len(data) - 8
    offset = head + rng.randrange(max(1, min(span, len(data) - 8 - head)))
    value = rng.choice(
        [rng.getrandbits(64), 2**63 - 1, 2**64 - 1, 2**32, 0, rng.getrandbits(40) << 20]
    )
    return data[:offset] + value.to_bytes(8, "little") + data[offset + 8 :]


class Party:
    """One party's raw, signed access to a session."""

    def __init__(self, url: str, created: Mapping[str, Any], role: str, identity: Identity):
        self.role, self.identity = role, identity
        self.sid, secret = protocol.parse_session_code(created["invitations"][role])
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        self.http = httpx.Client(base_url=url, timeout=120)
        joined = self.http.post(
            protocol.JOIN.format(sid=self.sid),
            json=identity.join_request(self.sid, role, secret, digest),
        )
        joined.raise_for_status()
        self.http.headers.update(bearer(token))

    def put(self, step: str, blobs: Mapping[str, bytes]) -> httpx.Response:
        """Upload a step signed by this party."""
        body = self.identity.signed_step(self.sid, self.role, step, blobs)
        return self.http.put(
            protocol.STEP.format(sid=self.sid, step=step),
            content=body,
            headers={"Content-Type": protocol.OCTET_STREAM},
        )

    def delete(self) -> None:
        """Delete the session."""
        self.http.delete(protocol.SESSION.format(sid=self.sid))


@dataclasses.dataclass
class Stage:
    """A session brought to the step where one kind of blob is uploaded, and that upload.

    Attributes:
        party: who uploads it.
        step: the step.
        blobs: the step's real blobs.
        name: the blob to mutate.
        parties: the session's three parties.
    """

    party: Party
    step: str
    blobs: dict[str, bytes]
    name: str
    parties: dict[str, Party]

    def upload(self, data: bytes) -> httpx.Response:
        """Upload the step with blob ``name`` replaced by ``data``."""
        return self.party.put(self.step, {**self.blobs, self.name: data})


def _session(url: str, identities: Mapping[str, Identity], mode: str = "predict") -> dict:
    roster = {role: i.verify_key.hex() for role, i in identities.items()}
    created = httpx.post(f"{url}{protocol.SESSIONS}", json={"mode": mode, "roster": roster})
    created.raise_for_status()
    return {role: Party(url, created.json(), role, identities[role]) for role in protocol.ROLES}


def _ok(response: httpx.Response) -> None:
    if response.status_code != 204:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")


def stage(url: str, identities: Mapping[str, Identity], kind: str) -> Stage:
    """A new session brought to where ``kind`` is uploaded (``KINDS``)."""
    parties = _session(url, identities)
    shares, made = {}, {}
    shares["applicant"], made["applicant"] = engine.lead_round1()
    for role in protocol.ROLES[1:]:
        lead = made["applicant"]
        previous = made[protocol.previous_role(role)].public_key
        shares[role], made[role] = engine.join_round1(role, previous, lead.eval_mult, lead.rotation)
    round1 = {
        role: {**dataclasses.asdict(b), "box_key": secrets.token_bytes(32)}
        for role, b in made.items()
    }
    if kind in ("public_key", "eval_mult", "rotation"):
        return Stage(parties["applicant"], "round1", round1["applicant"], kind, parties)
    for role in protocol.ROLES:
        _ok(parties[role].put("round1", round1[role]))
    joint_pk = made["credit_bureau"].public_key
    tag = engine.key_tag_of(joint_pk)
    challenge = engine.encrypt(joint_pk, {0: np.arange(16)})[0]
    if kind == "challenge":
        return Stage(
            parties["applicant"], "challenge", {"ciphertext": challenge}, "ciphertext", parties
        )
    _ok(parties["applicant"].put("challenge", {"ciphertext": challenge}))
    for role in protocol.ROLES:
        _ok(parties[role].put("confirm_commit", {}))
    partial = engine.partial_decrypt(shares["bank"], challenge, tag)
    if kind == "confirm_partial":
        return Stage(parties["bank"], "confirm_reveal", {"partial": partial}, "partial", parties)
    for role in protocol.ROLES:
        own = engine.partial_decrypt(shares[role], challenge, tag)
        _ok(parties[role].put("confirm_reveal", {"partial": own}))
    for role in protocol.ROLES:
        _ok(parties[role].put("inputs_commit", {}))
    joint = engine.combine_round1([made[r] for r in protocol.ROLES])
    share = engine.round2(shares["applicant"], joint.joint_eval_mult_round1, tag)
    ciphertext = engine.encrypt(joint_pk, {0: np.ones(8, dtype=np.int64)})[0]
    blobs = {protocol.ROUND2_BLOB: share, protocol.ciphertext_blob(0): ciphertext}
    name = protocol.ROUND2_BLOB if kind == "round2" else protocol.ciphertext_blob(0)
    return Stage(parties["applicant"], "inputs", blobs, name, parties)


def _bystander(url: str, identities: Mapping[str, Identity], stop: threading.Event) -> list[float]:
    """Repeat one signed round-1 upload in sessions of its own; return each one's seconds."""
    _, made = engine.lead_round1()
    blobs = {**dataclasses.asdict(made), "box_key": secrets.token_bytes(32)}
    times = []
    while not stop.is_set():
        parties = _session(url, identities)
        start = time.perf_counter()
        _ok(parties["applicant"].put("round1", blobs))
        times.append(time.perf_counter() - start)
        parties["applicant"].delete()
    return times


def run(url: str, identities: Mapping[str, Identity], per_kind: int, seed: int) -> dict:
    """Upload ``per_kind`` mutations of each kind; return the figures."""
    rng = random.Random(seed)
    health = lambda: httpx.get(f"{url}/health", timeout=10).status_code  # noqa: E731
    idle_stop = threading.Event()
    timer = threading.Timer(6.0, idle_stop.set)
    timer.start()
    idle = _bystander(url, identities, idle_stop)
    figures: dict[str, Any] = {"kinds": {}, "bystander_idle_seconds": statistics.median(idle)}
    stop = threading.Event()
    during: list[float] = []
    thread = threading.Thread(target=lambda: during.extend(_bystander(url, identities, stop)))
    thread.start()
    try:
        for kind in KINDS:
            current = stage(url, identities, kind)
            real = current.blobs[current.name]
            statuses: dict[int, int] = {}
            slowest, deaths = 0.0, 0
            for _ in range(per_kind):
                start = time.perf_counter()
                try:
                    answer = current.upload(mutate(real, rng))
                    code = answer.status_code
                except httpx.HTTPError:
                    code = 0
                slowest = max(slowest, time.perf_counter() - start)
                statuses[code] = statuses.get(code, 0) + 1
                if code == 204:  # a mutation that still parses: the step is in, start over
                    current.party.delete()
                    current = stage(url, identities, kind)
                    real = current.blobs[current.name]
                if code == 0 or code >= 500:
                    deaths += health() != 200
            accepted_after = current.upload(real).status_code
            current.party.delete()
            figures["kinds"][kind] = {
                "uploads": per_kind,
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "slowest_seconds": round(slowest, 3),
                "server_deaths": deaths,
                "real_blob_accepted_after": accepted_after == 204,
            }
    finally:
        stop.set()
        thread.join()
    figures["bystander_during_seconds"] = statistics.median(during) if during else None
    figures["server_alive"] = health() == 200
    return figures


def _table(figures: Mapping[str, Any]) -> str:
    lines = [
        "| kind | mutated uploads | answers | slowest answer | server deaths |",
        "|---|---|---|---|---|",
    ]
    for kind, row in figures["kinds"].items():
        answers = ", ".join(f"{n}× {code}" for code, n in row["statuses"].items())
        lines.append(
            f"| {kind} | {row['uploads']} | {answers} | {row['slowest_seconds']:.2f} s | "
            f"{row['server_deaths']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the mutation campaign against a fresh server; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        env = {
            "OMP_NUM_THREADS": "1",
            "THREEPARTY_MAX_SESSIONS": "16",
            "THREEPARTY_STORE_DIR": str(Path(root) / "store"),
        }
        log = Path(root) / "server.log"
        with ServerProcess("threeparty.server:app", env=env, log_path=log) as server:
            identities = {r: Identity.load_or_create(Path(root) / r) for r in protocol.ROLES}
            figures = run(server.url, identities, args.per_kind, args.seed)
        workers = log.read_text(errors="replace").count("a sandbox worker was replaced")
    figures["worker_replacements"] = workers
    figures["measured"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    OUT_PATH.write_text(json.dumps(figures, indent=2) + "\n")
    print(_table(figures))
    print(
        f"bystander round-1 upload: idle {figures['bystander_idle_seconds']:.3f} s, during "
        f"{figures['bystander_during_seconds']:.3f} s; worker replacements {workers}; "
        f"server alive: {figures['server_alive']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
