"""The use cases the routes call (``ScoringService``) and their assembly from the settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from contracts.parties import PARTIES, Party
from contracts.single_key import BATCH_INPUTS, BATCH_ROWS, CANDIDATES
from fhe_server.errors import InvalidPayloadError, SessionNotFoundError
from fhe_server.file_store import FileSessionStore
from fhe_server.model import FHEModel
from fhe_server.runtime import FHEGate, KeyCache, SessionQuota
from fhe_server.session_store import SessionStore, short_id
from settings import ServerSettings

logger = logging.getLogger("fhe_server")

T = TypeVar("T")


class ScoringService:
    """What the routes do, over the model, the store, the key cache and the FHE gate."""

    def __init__(
        self,
        model: FHEModel,
        store: SessionStore,
        key_cache: KeyCache,
        gate: FHEGate,
        quota: SessionQuota | None = None,
    ):
        """Assemble the service (see ``build_service``); no ``quota``: no per-client quota."""
        self.model = model
        self.store = store
        self.key_cache = key_cache
        self.gate = gate
        self.quota = quota if quota is not None else SessionQuota(limit=0, window_seconds=0)

    @staticmethod
    async def _io(func: Callable[..., T], *args: Any) -> T:
        """Run blocking storage work off the event loop (default thread pool)."""
        return await anyio.to_thread.run_sync(func, *args)

    def _prepared_keys(self, session_id: str) -> Any:
        """The session's prepared evaluation keys, from the cache or from disk."""
        keys = self.key_cache.get(session_id)
        if keys is None:
            keys = self.model.evaluation_keys(self.store.read_evaluation_keys(session_id))
            self.key_cache.put(session_id, keys)
        return keys

    async def check_room(self, client: str) -> None:
        """Refuse a creation before its body is read: the client's quota or the store is full.

        Raises:
            TooManySessionsError: if the client used up its quota of sessions.
            ServerBusyError: if the store is full (or cannot be reached).
        """
        await self._io(self.quota.check, client)
        await self._io(self.store.check_room, self.model.session_reserve_bytes())

    def store_status(self) -> dict[str, bool]:
        """The store's health as ``/health`` shows it (a local store is always up)."""
        status = getattr(self.store, "status", None)
        return status() if status is not None else {"reachable": True, "subscribed": True}

    async def create_session(self, evaluation_keys: bytes, client: str) -> tuple[str, str]:
        """Check and prepare the keys, store a new session; return (session_id, token).

        Args:
            evaluation_keys: the serialized evaluation keys.
            client: who asks (its IP address), for the per-client quota.

        Raises:
            TooManySessionsError: if the client used up its quota of sessions.
            ServerBusyError: if the store is full.
            InvalidPayloadError: if the bytes are not this model's evaluation keys.
        """
        with self.quota.admit(client):
            prepared = await self._io(self.model.evaluation_keys, evaluation_keys)
            session_id, token = await self._io(
                self.store.create, evaluation_keys, self.model.session_reserve_bytes()
            )
        self.key_cache.put(session_id, prepared)
        return session_id, token

    async def authenticate(self, session_id: str, token: str | None) -> None:
        """Check the session and its token (see ``SessionStore.authenticate``).

        A session the store no longer has loses its prepared keys here too (the store may have
        lost it without telling this replica, e.g. restarted empty).
        """
        try:
            await self._io(self.store.authenticate, session_id, token)
        except SessionNotFoundError:
            self.key_cache.discard(session_id)
            raise

    async def put_input(self, session_id: str, party: Party, data: bytes) -> None:
        """Check one party's ciphertext and store it."""
        await self._io(self.model.value, party.value, data)
        await self._io(self.store.put_input, session_id, party, data)

    async def predict(self, session_id: str) -> float:
        """Run predict on the stored inputs, store the encrypted verdict; return the FHE time."""
        inputs, inputs_version = await self._io(self.store.read_inputs, session_id, list(Party))

        def job() -> tuple[bytes, float]:
            keys = self._prepared_keys(session_id)
            values = [self.model.value(party.value, inputs[party]) for party in Party]
            return self.model.run("predict", values, keys)

        output, elapsed = await self.gate.run(job)
        await self._io(self.store.store_output, session_id, output, inputs_version)
        logger.info("session %s: predict ran in %.3f s", short_id(session_id), elapsed)
        return elapsed

    async def output(self, session_id: str) -> bytes:
        """The encrypted verdict of the current inputs."""
        return await self._io(self.store.read_output, session_id)

    async def explain(self, session_id: str, candidates: bytes) -> tuple[bytes, float]:
        """Score candidate credit-bureau rows with the stored applicant and bank inputs."""
        inputs, _ = await self._io(
            self.store.read_inputs, session_id, [Party.applicant, Party.bank]
        )
        await self._io(self.model.value, CANDIDATES, candidates)

        def job() -> tuple[bytes, float]:
            keys = self._prepared_keys(session_id)
            values = [
                self.model.value(Party.applicant.value, inputs[Party.applicant]),
                self.model.value(Party.bank.value, inputs[Party.bank]),
                self.model.value(CANDIDATES, candidates),
            ]
            return self.model.run("explain", values, keys)

        output, elapsed = await self.gate.run(job)
        logger.info("session %s: explain ran in %.3f s", short_id(session_id), elapsed)
        return output, elapsed

    @property
    def batch_bytes(self) -> int:
        """The exact length of a batch request's body (the three batch ciphertexts)."""
        return sum(self.model.wire[name].length for name in BATCH_INPUTS.values())

    async def predict_batch(self, session_id: str, body: bytes) -> tuple[bytes, float]:
        """Decide a batch of applications at once; nothing is stored in the session.

        Args:
            session_id: an authenticated session (its evaluation keys are used).
            body: the three parties' batch ciphertexts, one after the other in party order.

        Returns:
            The serialized encrypted verdicts and the FHE time.

        Raises:
            InvalidPayloadError: if a ciphertext is not a batch input of this model.
        """
        if len(body) != self.batch_bytes:
            raise InvalidPayloadError(
                f"the batch ciphertexts must be exactly {self.batch_bytes} bytes for this model "
                f"(the three parties' {BATCH_ROWS}-row inputs one after the other), got {len(body)}"
            )
        values, start = [], 0
        for name in BATCH_INPUTS.values():
            length = self.model.wire[name].length
            values.append(await self._io(self.model.value, name, body[start : start + length]))
            start += length

        def job() -> tuple[bytes, float]:
            return self.model.run("predict_batch", values, self._prepared_keys(session_id))

        output, elapsed = await self.gate.run(job)
        logger.info("session %s: predict_batch ran in %.3f s", short_id(session_id), elapsed)
        return output, elapsed

    async def delete(self, session_id: str) -> None:
        """Remove the session and its cached keys."""
        await self._io(self.store.delete, session_id)
        self.key_cache.discard(session_id)


def build_service(config: ServerSettings) -> ScoringService:
    """Load the model and open the store described by the settings.

    Raises:
        RuntimeError: if the deployment files are unusable or the limits make no sense.
    """
    model = FHEModel.load(config.deployment_dir)
    if config.max_concurrent_fhe < 1 or config.max_waiting_fhe < 0 or config.max_sessions < 1:
        raise RuntimeError(
            "max_concurrent_fhe and max_sessions must be at least 1, max_waiting_fhe at least 0"
        )
    if config.disk_budget_bytes < model.session_reserve_bytes():
        raise RuntimeError(
            f"disk_budget_bytes={config.disk_budget_bytes} cannot hold one session "
            f"({model.session_reserve_bytes()} bytes)"
        )
    for limit_name, limit, wire_name in (
        ("max_evaluation_key_bytes", config.max_evaluation_key_bytes, "evaluation_keys"),
        *(("max_ciphertext_bytes", config.max_ciphertext_bytes, name) for name in PARTIES),
        ("max_ciphertext_bytes", config.max_ciphertext_bytes, CANDIDATES),
    ):
        if limit < model.wire[wire_name].length:
            logger.warning(
                "%s=%d is below this model's %s size (%d bytes): every upload of it will be "
                "refused with 413",
                limit_name,
                limit,
                wire_name,
                model.wire[wire_name].length,
            )
    key_cache = KeyCache(capacity=config.key_cache_size)
    store = open_store(config, on_remove=key_cache.discard, on_resync=key_cache.retain)
    store.recover()
    gate = FHEGate(max_concurrent=config.max_concurrent_fhe, max_waiting=config.max_waiting_fhe)
    # A shared store brings its own quota, shared by every replica (POST /sessions goes to any).
    make_quota = getattr(store, "session_quota", SessionQuota)
    quota = make_quota(
        limit=config.session_quota,
        window_seconds=config.session_quota_window_seconds,
        exempt=config.session_quota_exempt,
    )
    return ScoringService(model=model, store=store, key_cache=key_cache, gate=gate, quota=quota)


def open_store(
    config: ServerSettings,
    on_remove: Callable[[str], None],
    on_resync: Callable[[set[str]], None] | None = None,
) -> SessionStore:
    """The session store the settings name: Redis for ``store_url``, else the filesystem store.

    Args:
        config: the server settings.
        on_remove: called with the id of every session this process removes (with Redis: that
            any replica removes, or that Redis expired).
        on_resync: with Redis, called with the ids of the sessions Redis holds when the
            replica's subscription comes back after a loss.
    """
    if config.store_url:
        from fhe_server.redis_store import RedisSessionStore

        return RedisSessionStore(
            url=config.store_url,
            ttl_seconds=config.session_ttl_seconds,
            max_sessions=config.max_sessions,
            on_remove=on_remove,
            on_resync=on_resync,
        )
    return FileSessionStore(
        root=config.store_dir,
        ttl_seconds=config.session_ttl_seconds,
        max_sessions=config.max_sessions,
        disk_budget_bytes=config.disk_budget_bytes,
        on_remove=on_remove,
    )
