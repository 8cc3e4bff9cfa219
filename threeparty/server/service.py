"""The three-party server's use cases (``ThreePartyService``).

Order checks, checks of every upload's signature and blobs, OpenFHE work in the sandbox's worker
processes, storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread

from fhe_server.errors import ServerBusyError
from fhe_server.runtime import FHEGate, SessionQuota
from threeparty import engine, protocol, transcript
from threeparty.layout import Layout
from threeparty.protocol import ErrorCode
from threeparty.sandbox import Sandbox, SandboxError, blob_kind
from threeparty.server.errors import ServiceError, out_of_order, sandbox_error, unknown_session
from threeparty.server.sessions import Session
from threeparty.server.settings import ThreePartySettings
from threeparty.server.store import SessionStore, open_storage

logger = logging.getLogger("threeparty.server")


def check_sizes(
    blobs: dict[str, bytes], step: str, sizes: dict[str, int], tolerance: float
) -> None:
    """Refuse, before any parsing, a blob whose size is not its kind's for these parameters."""
    for name, data in blobs.items():
        kind = blob_kind(step, name)
        if kind is None or kind not in sizes:
            continue
        expected = sizes[kind]
        if abs(len(data) - expected) > tolerance * expected:
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"{name} is {len(data)} bytes; a {kind} of these parameters is about {expected}",
            )


def unpack(body: bytes, names: tuple[str, ...] | None, what: str) -> dict[str, bytes]:
    """Split a framed body, checking its names when they are fixed (422 otherwise)."""
    try:
        blobs = protocol.unpack(body)
    except protocol.FrameError as error:
        raise ServiceError(ErrorCode.invalid_blob, f"{what}: {error}") from None
    if names is not None and set(blobs) != set(names):
        raise ServiceError(
            ErrorCode.invalid_blob, f"{what} holds exactly {', '.join(names)}; got {sorted(blobs)}"
        )
    if any(not data for data in blobs.values()):
        raise ServiceError(ErrorCode.invalid_blob, f"{what}: an empty blob")
    return blobs


# What each step needs first: every role's ``after`` step (and, for round 1, the previous
# party's round 1; for the output commitment, the evaluated output).
_PREREQUISITE = {
    "challenge": "round1",
    "confirm_commit": "challenge",
    "confirm_reveal": "confirm_commit",
    "inputs_commit": "confirm_reveal",
    "inputs": "inputs_commit",
    "partials": "output_commit",
}


class ThreePartyService:
    """What the routes do: order checks, engine calls in worker threads, storage."""

    def __init__(
        self,
        config: ThreePartySettings,
        layout: Layout,
        sandbox: Sandbox,
        sizes: dict[str, int],
        store: SessionStore | None = None,
    ):
        """Create the worker limits (inside the event loop).

        Args:
            config: the settings.
            layout: the public slot layout.
            sandbox: the worker processes that do OpenFHE work on what clients send.
            sizes: each blob kind's size under these parameters (``engine.self_test``).
            store: the sessions (default: over the storage the settings name).
        """
        self.config = config
        self.layout = layout
        self.sandbox = sandbox
        self.sizes = sizes
        self.store = store or SessionStore(config, storage=open_storage(config))
        self.quota = SessionQuota(
            config.session_quota,
            config.session_quota_window_seconds,
            exempt=config.session_quota_exempt,
        )
        # Threads that wait on the workers: one per worker, so no call waits in a thread pool.
        self.workers = anyio.CapacityLimiter(max(1, config.sandbox_workers))
        # The single-key server's evaluation gate: the same queue, refusal and Retry-After.
        self.gate = FHEGate(config.max_concurrent_evaluations, config.max_waiting_evaluations)
        self.uploads = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _sandbox(
        self,
        what: str,
        op: str,
        args: dict[str, Any],
        blobs: dict[str, bytes],
        seconds: float,
    ) -> dict[str, bytes]:
        """Run ``op`` in a worker process; its refusal, death or time-out is a 422."""
        try:
            return await anyio.to_thread.run_sync(
                lambda: self.sandbox.call(op, args, blobs, seconds), limiter=self.workers
            )
        except SandboxError as error:
            if error.code in ("crashed", "timeout"):
                logger.warning("%s: a sandbox worker was replaced (%s)", what, error)
            raise sandbox_error(error, what) from None

    @contextlib.contextmanager
    def upload_slot(self) -> Iterator[None]:
        """Hold one of the concurrent uploads (503 before the body is read when none is free).

        Raises:
            ServiceError: busy with Retry-After.
        """
        if self.uploads >= self.config.max_concurrent_uploads:
            raise ServiceError(ErrorCode.busy, "too many uploads at once", retry_after=1)
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    def step_limit(self, step: str) -> int:
        """The largest body a step may have."""
        config = self.config
        limits = {
            "round1": config.max_round1_bytes,
            "challenge": config.max_ciphertexts_bytes,
            "confirm_reveal": config.max_partial_bytes,
            "inputs": config.max_round2_bytes + config.max_ciphertexts_bytes,
            "partials": 2 * config.max_partial_bytes,
        }
        return limits.get(step, config.max_statement_bytes)

    def _require_turn(self, session: Session, role: str, step: str) -> None:
        if role not in protocol.step_roles(step):
            raise ServiceError(ErrorCode.invalid_request, f"the {role} has no {step} step")
        if step in session.statements.get(role, {}):
            raise out_of_order(f"the {role}'s {step} is already in")
        if step == "round1":
            before = protocol.previous_role(role)
            if before is not None and "round1" not in session.statements.get(before, {}):
                raise out_of_order(f"round 1 goes in chain order: the {before} uploads first")
        elif step == "output_commit":
            if session.output is None:
                raise out_of_order("the output commitment needs the evaluated output first")
        elif not session.all_done(_PREREQUISITE[step]):
            raise out_of_order(f"{step} needs every party's {_PREREQUISITE[step]} first")

    def _signed(
        self, session: Session, role: str, step: str, body: bytes
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The signed envelope and the blobs of an upload, checked against the roster."""
        blobs = unpack(body, None, step)
        try:
            envelope = json.loads(blobs.pop(protocol.STATEMENT_BLOB, b"").decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServiceError(
                ErrorCode.invalid_blob, f"{step}: no signed statement in the upload"
            ) from None
        try:
            statement = transcript.verify_signature(bytes.fromhex(session.roster[role]), envelope)
        except transcript.TranscriptError as error:
            raise ServiceError(ErrorCode.bad_signature, str(error)) from None
        expected = {"session": session.session_id, "role": role, "step": step}
        if any(statement.get(key) != value for key, value in expected.items()):
            raise ServiceError(
                ErrorCode.bad_signature, f"{step}: the statement is for another session or step"
            )
        names = protocol.step_blobs(step, role, engine.vector_indices(self.layout, role))
        if sorted(blobs) != sorted(names):
            raise ServiceError(
                ErrorCode.invalid_blob,
                f"the {role}'s {step} holds [{', '.join(names)}]; got [{', '.join(sorted(blobs))}]",
            )
        if statement.get("blobs") != {
            name: transcript.digest(data) for name, data in blobs.items()
        }:
            raise ServiceError(
                ErrorCode.bad_signature, f"{step}: the blobs are not the ones the statement signs"
            )
        if step == "round1" and len(blobs["box_key"]) != protocol.BOX_PUBLIC_KEY_BYTES:
            raise ServiceError(
                ErrorCode.invalid_blob, f"a box key is {protocol.BOX_PUBLIC_KEY_BYTES} bytes"
            )
        return envelope, blobs

    async def put_step(self, session: Session, role: str, step: str, body: bytes) -> None:
        """Check and store one party's signed step; combine keys when a round is complete."""
        self._require_turn(session, role, step)
        envelope, blobs = self._signed(session, role, step, body)
        check_sizes(blobs, step, self.sizes, self.config.blob_size_tolerance)
        key_tag = session.joint.key_tag if session.joint is not None else None
        await self._sandbox(
            f"the {role}'s {step}",
            "check",
            {"step": step, "key_tag": key_tag},
            blobs,
            self.config.parse_seconds,
        )
        async with session.lock:
            self._require_turn(session, role, step)
            # The step shows in the status (statements) only once what it completes is done, so
            # no party sees every input in while the evaluation keys are still being combined.
            session.blobs[(role, step)] = blobs
            completes = set(session.done(step)) | {role} == set(protocol.step_roles(step))
            try:
                derived: dict[str, bytes] = {}
                if step == "round1" and completes:
                    session.joint = joint = await self._combine_round1(session)
                    derived = {
                        "joint_public_key": joint.joint_public_key,
                        "joint_eval_mult_round1": joint.joint_eval_mult_round1,
                        "joint_rotation": joint.joint_rotation,
                    }
                if step == "inputs" and completes:
                    session.keys = await self._evaluation_keys(session)
                    derived = {"relinearization": session.keys.relinearization}
            except ServiceError:
                del session.blobs[(role, step)]
                raise
            await self._write(session, f"{role}__{step}", blobs)
            await self._write(session, "derived", derived)
            session.statements.setdefault(role, {})[step] = envelope
            self.store.save(session)
            session.touch()
        if step == "inputs" and session.keys is not None and session.output is None:
            # Every input is in: evaluate now, while the parties evaluate again on their side.
            task = asyncio.get_running_loop().create_task(self._evaluate_soon(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, session: Session, prefix: str, blobs: dict[str, bytes]) -> None:
        """Store blobs of the session, off the event loop."""
        if blobs:
            await anyio.to_thread.run_sync(
                self.store.storage.write_blobs, session.session_id, prefix, blobs
            )

    async def _combine_round1(self, session: Session) -> engine.JointRound1:
        blobs = {
            "public_key_credit_bureau": session.blobs[("credit_bureau", "round1")]["public_key"]
        }
        for role in protocol.ROLES:
            own = session.blobs[(role, "round1")]
            blobs |= {f"eval_mult_{role}": own["eval_mult"], f"rotation_{role}": own["rotation"]}
        joint = await self._sandbox(
            "combining round 1", "combine_round1", {}, blobs, self.config.evaluate_seconds
        )
        return engine.JointRound1(
            joint_public_key=joint["joint_public_key"],
            joint_eval_mult_round1=joint["joint_eval_mult_round1"],
            joint_rotation=joint["joint_rotation"],
            key_tag=joint["key_tag"].decode(),
        )

    async def _evaluation_keys(self, session: Session) -> engine.EvaluationKeys:
        joint = session.joint
        assert joint is not None  # inputs come after round 1
        shares = {
            f"round2_{r}": session.blobs[(r, "inputs")][protocol.ROUND2_BLOB]
            for r in protocol.ROLES
        }
        combined = await self._sandbox(
            "combining round 2",
            "combine_round2",
            {"key_tag": joint.key_tag},
            shares,
            self.config.evaluate_seconds,
        )
        return engine.EvaluationKeys(
            key_tag=joint.key_tag,
            relinearization=combined["relinearization"],
            rotation=joint.joint_rotation,
        )

    def blob(self, session: Session, role: str, step: str, name: str) -> bytes:
        """One blob of a party's step (409 before the step is in, 404 for another name)."""
        blobs = session.blobs.get((role, step))
        if blobs is None:
            raise out_of_order(f"the {role} has not done {step} yet")
        if name not in blobs:
            raise ServiceError(ErrorCode.not_found, f"the {role}'s {step} has no blob {name!r}")
        return blobs[name]

    async def _evaluate_soon(self, session: Session) -> None:
        """Evaluate in the background; a refusal (a full queue) waits for a party's own call."""
        with contextlib.suppress(ServiceError):
            await self.evaluate(session)

    async def evaluate(self, session: Session) -> float:
        """Evaluate once (later calls get the same output); return the evaluation's seconds."""
        if session.keys is None:
            raise out_of_order("evaluation needs every party's inputs (round-2 share, ciphertexts)")
        if session.output is not None:
            return session.evaluation_seconds or 0.0
        # The parties of a session all ask; only the first takes a place in the queue, the
        # others wait for its output.
        admitted = not session.evaluating
        session.evaluating = True
        try:
            async with self.gate.slot() if admitted else contextlib.nullcontext():
                async with session.lock:
                    if session.output is None:
                        await self._evaluate(session)
        except ServerBusyError as busy:
            raise ServiceError(
                ErrorCode.busy, "the evaluation queue is full", retry_after=busy.retry_after
            ) from None
        finally:
            if admitted:
                session.evaluating = False
        return session.evaluation_seconds or 0.0

    async def _evaluate(self, session: Session) -> None:
        assert session.keys is not None
        blobs = {
            f"ct_{role}_{index}": session.blobs[(role, "inputs")][protocol.ciphertext_blob(index)]
            for role in protocol.ROLES
            for index in engine.vector_indices(self.layout, role)
        }
        blobs |= {
            "relinearization": session.keys.relinearization,
            "rotation": session.keys.rotation,
        }
        args = {
            "key_tag": session.keys.key_tag,
            "mode": session.mode,
            "blocks": protocol.blocks_for(session.mode, session.applications),
        }
        start = time.perf_counter()
        answer = await self._sandbox(
            "evaluation", "evaluate", args, blobs, self.config.evaluate_seconds
        )
        output = answer["output"]
        session.evaluation_seconds = time.perf_counter() - start
        await self._write(session, "derived", {"output": output})
        session.output = output
        self.store.save(session)
        session.touch()
        logger.info(
            "session %s evaluated in %.2f s", session.session_id[:8], session.evaluation_seconds
        )

    def output(self, session: Session) -> bytes:
        """The encrypted (masked) output (409 before evaluation)."""
        if session.output is None:
            raise out_of_order("not evaluated yet")
        return session.output

    async def wait_status(self, session: Session, since: int, wait: float) -> dict[str, Any]:
        """The status once the session's version exceeds ``since`` (or after ``wait`` seconds)."""
        wait = min(max(0.0, wait), self.config.max_status_wait_seconds)
        if session.version <= since and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.changed.wait(), timeout=wait)
        if session.session_id not in self.store.sessions:
            raise unknown_session()
        return session.status(self.store.expires_in(session))
