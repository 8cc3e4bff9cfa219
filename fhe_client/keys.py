"""The single-key client's key set on disk: generated, saved (secret key included) and loaded.

Every path is an argument: the FHE module's client specs and the key folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from concrete import fhe

KEYS_FILE_NAME = "keys"

KeyGenerator = Callable[[Path], bytes]
"""Generates and saves a key set in a folder; returns the serialized evaluation keys."""


@lru_cache(maxsize=4)
def load_client_specs(path: Path) -> fhe.ClientSpecs:
    """The FHE module's client specs, read once per file.

    Args:
        path: ``client_specs.json`` of the deployment.
    """
    return fhe.ClientSpecs.deserialize(Path(path).read_bytes())


def generate_key_file(key_dir: Path, client_specs_path: Path) -> bytes:
    """Generate a new key set and save it, secret key included, as ``key_dir/keys`` (mode 0600).

    A module-level function so that a worker process can run it (the page does, so that the
    ~1 s of key generation, which holds the interpreter lock, never stalls other sessions).

    Args:
        key_dir: the folder (created 0700 if missing).
        client_specs_path: the FHE module's client specs.

    Returns:
        The serialized evaluation keys (what the server needs; no secret key in them).
    """
    client = fhe.Client(load_client_specs(Path(client_specs_path)))
    client.keygen(force=True)
    key_dir = Path(key_dir)
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_path = key_dir / KEYS_FILE_NAME
    keys_path.unlink(missing_ok=True)
    client.keys.save(keys_path)
    os.chmod(keys_path, 0o600)
    return client.evaluation_keys.serialize()
