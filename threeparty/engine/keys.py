"""Key shares and the public material of the key rounds (dataclasses of blobs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threeparty.engine.blobs import _unpack, blob_kind
from threeparty.engine.context import ROTATION_INDICES
from threeparty.engine.errors import InvalidBlobError


@dataclass(frozen=True)
class PartyKeyShare:
    """A party's secret key share (secret: it stays in the party's process and folder).

    Attributes:
        party: "applicant", "bank" or "credit_bureau".
        secret_key: the serialized secret share (an engine blob).
    """

    party: str
    secret_key: bytes

    def __repr__(self) -> str:
        return f"PartyKeyShare(party={self.party!r}, secret_key=<{len(self.secret_key)} bytes>)"

    def path(self, directory: Path) -> Path:
        """Where ``save`` writes the share in ``directory``."""
        return Path(directory) / f"{self.party}.keyshare"

    def save(self, directory: Path) -> Path:
        """Write the share to ``directory/<party>.keyshare`` with mode 0600 (folder 0700).

        Returns:
            The file's path.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.secret_key)
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load(cls, directory: Path, party: str) -> PartyKeyShare:
        """Read the share ``save`` wrote for ``party``.

        Raises:
            InvalidBlobError: when the file is missing or is not a secret key share.
        """
        path = Path(directory) / f"{party}.keyshare"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidBlobError(f"no key share for {party} in {directory}: {exc}") from exc
        if blob_kind(data) != "secret_key":
            raise InvalidBlobError(f"{path} is not a secret key share")
        return cls(party=party, secret_key=data)

    def _secret(self, cc: Any = None) -> Any:
        return _unpack("secret_key", self.secret_key, cc=cc)


@dataclass(frozen=True)
class Round1Blobs:
    """A party's public round-1 material (all of it may go to the server).

    Attributes:
        public_key: the party's public key in the chain (the last one is the joint key).
        eval_mult: its share of the round-1 relinearization key.
        rotation: its shares of the rotation keys.
    """

    public_key: bytes
    eval_mult: bytes
    rotation: bytes


@dataclass(frozen=True)
class JointRound1:
    """The server's sums after round 1 (public).

    Attributes:
        joint_public_key: the last party's public key: everyone encrypts under it.
        joint_eval_mult_round1: the summed round-1 relinearization key (input of round 2).
        joint_rotation: the joint rotation keys (the server's, for evaluation).
        key_tag: the joint public key's tag: names the key set; every ciphertext carries it.
    """

    joint_public_key: bytes
    joint_eval_mult_round1: bytes
    joint_rotation: bytes
    key_tag: str


@dataclass(frozen=True)
class EvaluationKeys:
    """The server's public evaluation keys of one key set.

    Attributes:
        key_tag: the joint key tag.
        relinearization: the joint relinearization key (``combine_round2``).
        rotation: the joint rotation keys (``JointRound1.joint_rotation``).
        rotation_indices: the rotation indices the keys were made for.
    """

    key_tag: str
    relinearization: bytes
    rotation: bytes
    rotation_indices: tuple[int, ...] = ROTATION_INDICES


def key_tag_of(joint_public_key: bytes) -> str:
    """The key tag of a (joint) public key blob.

    Raises:
        InvalidBlobError: when the bytes are not a public key.
    """
    return _unpack("public_key", joint_public_key).GetKeyTag()
