"""Three-party sessions on disk, so that they survive a restart (the default storage).

One folder per session under the store folder (``THREEPARTY_STORE_DIR``, default
``.fhe_store/threeparty``): ``meta.json`` (mode, roster, invitation and token digests, the signed
statements, times as wall-clock seconds, the key tag, the evaluation time) and one file per blob
(each party's step blobs, the joint keys the server combined, the output). Only public material,
signed statements, digests of secrets and partials sealed for their recipients are written,
exactly what the server holds in memory. Blobs are written before the ``meta.json`` that lists
them, each file atomically, so a crash leaves the last complete state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

META = "meta.json"
_BLOB_FILE = re.compile(r"[a-z0-9_]{1,40}(?:__[a-z0-9_]{1,40}){0,2}\.bin")


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class FileStorage:
    """Sessions under ``root``, a ``SessionStorage`` (None: nothing is written, nothing survives).

    Args:
        root: the store folder (made 0700 when first written).
    """

    def __init__(self, root: Path | None):
        """Remember the folder."""
        self.root = Path(root) if root is not None else None

    def _folder(self, session_id: str) -> Path | None:
        if self.root is None or not re.fullmatch(r"[0-9a-f]{32}", session_id):
            return None
        folder = self.root / session_id
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    def write_blobs(self, session_id: str, prefix: str, blobs: dict[str, bytes]) -> None:
        """Write blobs as ``<prefix>__<name>.bin`` (prefix: "<role>__<step>", or "derived")."""
        folder = self._folder(session_id)
        if folder is None:
            return
        for name, data in blobs.items():
            _write(folder / f"{prefix}__{name}.bin", data)

    def write_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        """Write the session's ``meta.json`` (after the blobs it lists)."""
        folder = self._folder(session_id)
        if folder is not None:
            _write(folder / META, json.dumps(meta).encode())

    def delete(self, session_id: str) -> None:
        """Forget a session on disk."""
        if self.root is not None and re.fullmatch(r"[0-9a-f]{32}", session_id):
            shutil.rmtree(self.root / session_id, ignore_errors=True)

    def load(self) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Every stored session: (its meta, {file stem: bytes}); unreadable ones are removed."""
        if self.root is None or not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not re.fullmatch(r"[0-9a-f]{32}", folder.name):
                continue
            try:
                meta = json.loads((folder / META).read_text())
                blobs = {
                    path.stem: path.read_bytes()
                    for path in folder.iterdir()
                    if _BLOB_FILE.fullmatch(path.name)
                }
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            yield meta, blobs
