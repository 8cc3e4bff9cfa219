"""One three-party session as the server holds it (``Session``).

It holds only public material, signed statements, digests of secrets and partials sealed for
their recipients. ``Session.meta`` and ``Session.restore`` are what a storage
(``threeparty.server.store``) writes and reads back; the asyncio event, the lock and the
evaluation flag live in memory only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from threeparty import engine, protocol, transcript


def digest(token: str) -> bytes:
    """SHA-256 of an invitation secret or bearer token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass
class Session:
    """One three-party session.

    Attributes:
        session_id: 32 hex characters.
        mode: "predict" or "explain" (how many applications one evaluation scores).
        roster: {role: verify key hex}, fixed at creation.
        invitation_digests: SHA-256 of each party's single-use invitation secret.
        token_digests: {role: SHA-256 hex of the bearer token it bound when it joined}.
        created: creation time (a session never lives past ``session_lifetime_seconds``).
        last_used: time of the last authenticated call (idle sessions expire).
        version: bumped by every change (status long-polls wait for it).
        statements: {role: {step: signed envelope}}.
        blobs: {(role, step): {name: bytes}}.
    """

    session_id: str
    mode: str
    roster: dict[str, str]
    invitation_digests: dict[str, bytes]
    created: float
    last_used: float
    applications: int = 1
    token_digests: dict[str, str] = field(default_factory=dict)
    version: int = 0
    statements: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    joint: engine.JointRound1 | None = None
    keys: engine.EvaluationKeys | None = None
    output: bytes | None = None
    evaluation_seconds: float | None = None
    evaluating: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        """Record a change and wake the status long-polls."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def role_of(self, token: str) -> str | None:
        """The party whose bearer token this is, if any (constant-time comparisons)."""
        presented = digest(token).hex()
        found = None
        for role, expected in self.token_digests.items():
            if hmac.compare_digest(presented, expected):
                found = role
        return found

    def done(self, step: str) -> list[str]:
        """The roles that uploaded ``step``."""
        return [role for role in protocol.ROLES if step in self.statements.get(role, {})]

    def all_done(self, step: str) -> bool:
        """Whether every role that uploads ``step`` did."""
        return set(self.done(step)) == set(protocol.step_roles(step))

    def meta(self, wall_offset: float) -> dict[str, Any]:
        """What a storage writes (times as wall-clock seconds: now + ``wall_offset``)."""
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "applications": self.applications,
            "roster": self.roster,
            "invitation_digests": {r: d.hex() for r, d in self.invitation_digests.items()},
            "token_digests": self.token_digests,
            "created": self.created + wall_offset,
            "last_used": self.last_used + wall_offset,
            "statements": self.statements,
            "key_tag": self.joint.key_tag if self.joint is not None else None,
            "evaluation_seconds": self.evaluation_seconds,
        }

    @classmethod
    def restore(cls, meta: dict[str, Any], files: dict[str, bytes], wall_offset: float) -> Session:
        """A session read back by a storage's ``load``."""
        session = cls(
            session_id=meta["session_id"],
            mode=meta["mode"],
            applications=int(meta.get("applications", 1)),
            roster=dict(meta["roster"]),
            invitation_digests={r: bytes.fromhex(d) for r, d in meta["invitation_digests"].items()},
            token_digests=dict(meta["token_digests"]),
            created=float(meta["created"]) - wall_offset,
            last_used=float(meta["last_used"]) - wall_offset,
            statements=meta["statements"],
            evaluation_seconds=meta.get("evaluation_seconds"),
        )
        for stem, data in files.items():
            parts = stem.split("__")
            if len(parts) == 3:
                session.blobs.setdefault((parts[0], parts[1]), {})[parts[2]] = data
        derived = {
            stem.split("__", 1)[1]: data
            for stem, data in files.items()
            if stem.startswith("derived__")
        }
        if meta.get("key_tag") and "joint_rotation" in derived:
            session.joint = engine.JointRound1(
                joint_public_key=derived["joint_public_key"],
                joint_eval_mult_round1=derived["joint_eval_mult_round1"],
                joint_rotation=derived["joint_rotation"],
                key_tag=meta["key_tag"],
            )
        if session.joint is not None and "relinearization" in derived:
            session.keys = engine.EvaluationKeys(
                key_tag=session.joint.key_tag,
                relinearization=derived["relinearization"],
                rotation=session.joint.joint_rotation,
            )
        session.output = derived.get("output")
        return session

    def status(self, expires_in: float) -> dict[str, Any]:
        """What every party of the session may know about its progress."""
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "applications": self.applications,
            "blocks": protocol.blocks_for(self.mode, self.applications),
            "version": self.version,
            "expires_in": expires_in,
            "roster": dict(self.roster),
            "joined": [role for role in protocol.ROLES if role in self.token_digests],
            "steps": {step: self.done(step) for step in protocol.STEPS},
            "transcript": {role: dict(steps) for role, steps in self.statements.items()},
            "key_tag": self.joint.key_tag if self.joint is not None else None,
            "output": self.output is not None,
            "output_digest": transcript.digest(self.output) if self.output else None,
            "evaluation_seconds": self.evaluation_seconds,
        }
