"""The three-party server: relays signed public material, evaluates, relays sealed partials.

Run it in ``.venv-threeparty`` as ``uvicorn threeparty.server:app`` (settings: THREEPARTY_*
environment variables, see ``settings.ThreePartySettings``). At start-up it runs the engine's
known-answer self-test (a throwaway three-party key set, a fixed probe, the known verdicts) and
refuses to serve if it fails.

The parties do not trust it: every upload is a *step* signed by its party's identity key
(``threeparty.transcript``), and the parties check every signature, every hash and the
evaluation itself before they use anything. The server checks the same signatures (so it
stores nothing a party did not sign), the steps' order, and that every blob parses as its kind.

What it holds, in memory and in its storage (``store.py``), bounded (``max_sessions`` sessions,
each upload under its size limit, idle sessions dropped after ``session_ttl_seconds``): the
roster (verify keys), each party's signed statements and public blobs (round-1 keys and X25519
box keys, the challenge and its partial decryptions, round-2 shares, ciphertexts), the joint
evaluation keys it combines from them, the encrypted output, and the partial decryptions
*sealed* for their recipients, which it cannot open. No key share ever reaches it.

Contract (README "Three-party mode" and ``/docs``): see ``threeparty.protocol`` for the routes;
every call under ``/sessions/{sid}`` but ``join`` needs ``Authorization: Bearer <token>``, a token
the party chose and bound to its identity when it redeemed its invitation. Errors are
``{"detail": str, "code": str}`` with the status of ``protocol.ErrorCode``; never a 5xx for
anything a client sends.

The package, built as the single-key server ``fhe_server``: ``settings.py``, ``errors.py``
(``ServiceError`` over ``protocol.ErrorCode`` and its handlers), ``sessions.py`` (``Session``),
``store.py`` (the live sessions over a storage), ``file_storage.py`` (sessions on disk),
``redis_storage.py`` (sessions in Redis), ``service.py`` (the use cases), ``api.py`` (the
routes and ``create_app(settings)``). It imports the HTTP plumbing both servers share:
``fhe_server.app_base``, ``hosts``, ``body``, ``json_errors`` and ``runtime.SessionQuota``.
"""

from __future__ import annotations

from threeparty.server.api import create_app

__all__ = ["app", "create_app"]

# Cheap: settings from the environment and the routes; the lifespan does the work.
app = create_app()
