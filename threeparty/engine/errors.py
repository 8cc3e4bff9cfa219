"""The engine's errors: every one is an ``EngineError`` (a server answers them with a 4xx)."""

from __future__ import annotations


class EngineError(Exception):
    """Any error of the three-party engine."""


class InvalidBlobError(EngineError, ValueError):
    """Bytes that do not deserialize, are of another kind, or belong to another key set."""


class KeyTagError(InvalidBlobError):
    """A blob made under another key set (e.g. a ciphertext replayed from another session)."""


class InvalidInputError(EngineError, ValueError):
    """Inputs of the right kind that do not fit (missing vectors, too many blocks, bad rows)."""


class DecryptionError(EngineError):
    """The partial decryptions do not fuse to verdicts (a share missing, wrong or repeated)."""


class SelfTestError(EngineError):
    """The known-answer check failed: these parameters or this build give wrong verdicts."""
