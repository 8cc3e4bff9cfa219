"""What the party's modules share: the error they raise, the session folder's files, the waits."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

BOX_SECRET_FILE = "box_secret.key"
TAG_FILE = "tag"
TAG_SALT_BYTES = 32
TOKEN_FILE = "token"
DEFAULT_WAIT_SECONDS = 120.0
HTTP_TIMEOUT_SECONDS = 120.0
LONG_POLL_SECONDS = 10.0


Progress = Callable[[dict[str, Any]], None]


class PartyError(Exception):
    """A step failed; ``str(error)`` says why in one readable sentence.

    Attributes:
        code: a ``protocol.ErrorCode`` value from the server; a ``TranscriptError`` code
            ("bad_signature", "wrong_roster", "tampered", "replayed", "bad_chain"); or
            "key_confirmation", "output_mismatch", "timeout", "invalid_field", "unreachable",
            "key_dir", "bad_result".
    """

    def __init__(self, message: str, code: str):
        """Build the error."""
        super().__init__(message)
        self.code = code


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
