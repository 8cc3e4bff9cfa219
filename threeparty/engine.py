"""Threshold BFV engine of the three-party mode (OpenFHE), everything exchanged as bytes.

Keys in rounds, encryption, evaluation of the tree's slot layout, partial decryptions and their
fusion.

Cryptography: BFV, plaintext modulus 65537, multiplicative depth 3, batching, multiparty mode
``NOISE_FLOODING_MULTIPARTY`` (``FIXED_NOISE_MULTIPARTY`` gave wrong verdicts with no error in the
prototype: ``self_test`` is the known-answer check that catches such a setting). The ring
dimension is OpenFHE's choice for 128-bit security (16384).

Parties, in key-generation order: the applicant (the lead), the bank, the credit bureau.

1. Round 1, a chain: the lead makes a key pair and its shares of the relinearization and rotation
   keys (``lead_round1``); each next party extends the previous public key and the lead's shares
   with its own secret (``join_round1``). The last public key is the *joint* public key; its key
   tag names the key set (``key_tag``). The server adds the shares (``combine_round1``).
2. Round 2, in parallel: each party turns the joint round-1 multiplication key into its share of
   the relinearization key (``round2``); the server adds them (``combine_round2``).
3. Each party encrypts its own literals under the joint public key (``encrypt``); the server
   evaluates with the public evaluation keys only (``evaluate``).
4. Each party decrypts partially with its secret share (``partial_decrypt``); only the three
   partial decryptions together give the verdicts (``fuse``); fewer give noise.

A secret share is a ``PartyKeyShare``; it never leaves its party's process except to its own
folder (mode 0600). Everything else here is public material.

OpenFHE keeps evaluation keys in process-global caches keyed by key tag: ``evaluate`` inserts the
session's keys under the joint tag, evaluates and clears the caches again, under one lock.

Blobs carry a 4-byte header (magic and kind) in front of OpenFHE's binary serialization, so a blob
of the wrong kind is refused before OpenFHE parses it; every engine error is an ``EngineError``
(``InvalidBlobError`` for bytes that do not deserialize, are of another kind or belong to another
key set), so a server can answer them with a 4xx.
"""

from __future__ import annotations

import os

# Every OpenFHE process runs single-threaded: on a shared 2-core machine OpenMP threads make its
# times swing tenfold. Set before openfhe loads; an explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib  # noqa: E402
import secrets  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import openfhe  # noqa: E402

from contracts.parties import LEAD, PARTIES, RECIPIENTS  # noqa: E402
from threeparty.layout import Layout, LayoutError, load_layout  # noqa: E402

PLAINTEXT_MODULUS = 65537
MULTIPLICATIVE_DEPTH = 3
"""Declared depth (OpenFHE sizes the modulus and so the noise budget from it): up to two levels
for the product of the owners' vectors (three owners; this tree has two, so it uses one) and one
counted for the plaintext mask. Depth 2 and 3 give the same modulus here (5 towers)."""
MULTIPARTY_MODE = "NOISE_FLOODING_MULTIPARTY"
LEAD_PARTY = LEAD

ROTATION_INDICES: tuple[int, ...] = (1,)
"""Rotation keys made. (1,): one key, a block's 8 slots summed with 7 rotations by 1. The
alternative (1, 2, 4) sums with 3 rotations but costs each party two more rotation-key shares
(6.6 MB each, up and down); see README, "Three-party mode", for the measured trade-off."""

_MAGIC = b"3P"
_KINDS = {
    "public_key": 1,
    "eval_key": 2,  # a share or sum of the round-1 relinearization key (KeySwitchGen)
    "rotation_keys": 3,  # an EvalKeyMap of rotation keys (a share or the sum)
    "mult_key": 4,  # a round-2 share or the joint relinearization key
    "ciphertext": 5,
    "partial": 6,  # a partial decryption
    "secret_key": 7,
}

_CACHE_LOCK = threading.RLock()


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


# -- blobs ------------------------------------------------------------------------------------
_MEMO: OrderedDict[int, tuple[str, bytes, Any]] | None = None
_MEMO_CAPACITY = 0
_MEMO_LOCK = threading.Lock()


def keep_objects(capacity: int = 32) -> None:
    """Keep the last ``capacity`` OpenFHE objects this process serialized or deserialized.

    A party hands the same blob to the engine several times (its own round-1 shares when it
    sums them, the joint keys it just summed when it evaluates, its secret share for each
    decryption, the output it evaluated when it decrypts it); deserializing an evaluation key
    takes 15-50 ms here and a ciphertext 10-40 ms. With this on, the engine remembers each
    blob's object by the blob itself: a lookup matches only the very same ``bytes`` object
    (identity, not equal content, so nothing is hashed and no other bytes can ever map to a
    remembered object), and every check ``_unpack`` makes (kind, crypto context, key tag) is
    made as before. Off by default (the server parses blobs in throw-away workers);
    ``capacity`` 0 turns it off.
    """
    global _MEMO, _MEMO_CAPACITY
    with _MEMO_LOCK:
        if capacity <= 0:
            _MEMO = None
        elif _MEMO is None:
            _MEMO = OrderedDict()
        _MEMO_CAPACITY = capacity


def _memo_put(kind: str, blob: bytes, obj: Any) -> None:
    with _MEMO_LOCK:
        if _MEMO is None:
            return
        _MEMO[id(blob)] = (kind, blob, obj)  # the entry keeps the blob alive: its id stays its
        _MEMO.move_to_end(id(blob))
        while len(_MEMO) > _MEMO_CAPACITY:
            _MEMO.popitem(last=False)


def _memo_get(kind: str, blob: bytes) -> Any:
    with _MEMO_LOCK:
        entry = _MEMO.get(id(blob)) if _MEMO is not None else None
        if entry is None or entry[1] is not blob or entry[0] != kind:
            return None
        _MEMO.move_to_end(id(blob))
        return entry[2]


def _pack(kind: str, obj: Any) -> bytes:
    blob = _MAGIC + bytes([_KINDS[kind], 0]) + openfhe.Serialize(obj, openfhe.BINARY)
    _memo_put(kind, blob, obj)
    return blob


_DESERIALIZERS: dict[str, Callable[[bytes, Any], Any]] = {
    "public_key": openfhe.DeserializePublicKeyString,
    "eval_key": openfhe.DeserializeEvalKeyString,
    "rotation_keys": openfhe.DeserializeEvalKeyMapString,
    "mult_key": openfhe.DeserializeEvalKeyString,
    "ciphertext": openfhe.DeserializeCiphertextString,
    "partial": openfhe.DeserializeCiphertextString,
    "secret_key": openfhe.DeserializePrivateKeyString,
}


def _unpack(kind: str, data: bytes, key_tag: str | None = None, cc: Any = None) -> Any:
    """Deserialize a blob of ``kind`` made in ``cc`` (default: ``context()``); check its key tag.

    Public keys, secret keys and ciphertexts record their crypto context: one made with other
    parameters is refused here rather than failing later in an operation.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidBlobError(f"{kind}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 5 or data[:2] != _MAGIC:
        raise InvalidBlobError(f"{kind}: not a three-party engine blob")
    if data[2] != _KINDS[kind]:
        found = next((k for k, v in _KINDS.items() if v == data[2]), "unknown")
        raise InvalidBlobError(f"expected a {kind} blob, got a {found} blob")
    cc = cc if cc is not None else context()
    obj = _memo_get(kind, data)
    if obj is None:
        try:
            obj = _DESERIALIZERS[kind](data[4:], openfhe.BINARY)
        except Exception as exc:  # OpenFHE raises RuntimeError and others on bad bytes
            raise InvalidBlobError(f"{kind}: the bytes do not deserialize ({exc})") from exc
        if obj is None:
            raise InvalidBlobError(f"{kind}: the bytes do not deserialize")
        _memo_put(kind, data, obj)
    if hasattr(obj, "GetCryptoContext") and obj.GetCryptoContext() != cc:
        raise InvalidBlobError(f"{kind}: made with other encryption parameters")
    if key_tag is not None and kind != "rotation_keys":
        found_tag = obj.GetKeyTag()
        if found_tag != key_tag:
            raise KeyTagError(f"{kind}: made under another key set (tag {found_tag[:12]}...)")
    return obj


BLOB_KINDS: tuple[str, ...] = tuple(_KINDS)
"""The kinds of engine blobs (``check_blob``'s ``kind``)."""


def check_blob(kind: str, data: bytes, key_tag: str | None = None) -> None:
    """Check that ``data`` is a well-formed engine blob of ``kind`` (of the key set ``key_tag``).

    A server calls it on every upload before storing it. A rotation-key map carries no single
    key tag: for it ``key_tag`` is not checked (adding it to the others' shares checks it).

    Args:
        kind: one of ``BLOB_KINDS``.
        data: the bytes received.
        key_tag: when given, the joint key tag the blob must carry.

    Raises:
        InvalidBlobError: bytes that do not deserialize as ``kind``, or an unknown kind.
        KeyTagError: a blob of another key set.
    """
    if kind not in _KINDS:
        raise InvalidBlobError(f"unknown blob kind {kind!r}")
    _unpack(kind, data, key_tag)


def blob_kind(data: bytes) -> str | None:
    """The kind of an engine blob from its header (no parsing), or None if it is not one."""
    if len(data) < 5 or data[:2] != _MAGIC:
        return None
    return next((k for k, v in _KINDS.items() if v == data[2]), None)


# -- the context ------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _make_context(multiparty_mode: str) -> Any:
    params = openfhe.CCParamsBFVRNS()
    params.SetPlaintextModulus(PLAINTEXT_MODULUS)
    params.SetMultiplicativeDepth(MULTIPLICATIVE_DEPTH)
    params.SetMultipartyMode(getattr(openfhe.MultipartyMode, multiparty_mode))
    cc = openfhe.GenCryptoContext(params)
    for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "MULTIPARTY"):
        cc.Enable(getattr(openfhe.PKESchemeFeature, feature))
    return cc


def context() -> Any:
    """The process's OpenFHE crypto context (made once; the same parameters in every process).

    Returns:
        An ``openfhe.CryptoContext`` for BFV, t = 65537, depth 3, NOISE_FLOODING_MULTIPARTY.
    """
    return _make_context(MULTIPARTY_MODE)


def slot_count() -> int:
    """Slots of a ciphertext (the ring dimension; rotations act on two rows of half of them)."""
    return int(context().GetRingDimension())


def max_blocks(layout: Layout) -> int:
    """Applications (blocks) one ciphertext holds: the slots over the block size."""
    return slot_count() // layout.block_size


EXPLAIN_PARTY = "credit_bureau"
"""The party whose columns the explain candidates set (employed, years employed)."""


def explain_vectors(layout: Layout, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The public operands that put the explain candidates in blocks 1.. of an evaluation.

    The candidate rows (employed, each years-employed bin) are public values, so no party
    encrypts them: the evaluation keeps only block 0 of the credit bureau's vector (its own row)
    and adds the candidates' vector, encoded from the public layout, in blocks 1... A crafted
    vector of the credit bureau's therefore reaches block 0 only.

    Args:
        layout: the slot layout.
        candidates: the credit bureau's candidate rows (its columns), one per block from 1.

    Returns:
        (keep, add): 1 in block 0's slots and 0 elsewhere; the candidates' encoded vector with
        block 0 at 0.
    """
    rows = np.atleast_2d(np.asarray(candidates, dtype=np.int64))
    encoded = layout.encode_party(EXPLAIN_PARTY, rows).get(0)
    if encoded is None:
        raise InvalidInputError(f"the {EXPLAIN_PARTY} owns no literal: nothing to explain")
    keep = np.zeros((len(rows) + 1) * layout.block_size, dtype=np.int64)
    keep[: layout.block_size] = 1
    add = np.concatenate([np.zeros(layout.block_size, dtype=np.int64), encoded])
    return keep, add


CHALLENGE_SLOTS = 16


def challenge_values(seed: str, count: int = CHALLENGE_SLOTS) -> list[int]:
    """The key-confirmation challenge: ``count`` values mod t derived from a transcript hash.

    Args:
        seed: the hex digest of the round-1 statements (so the challenge is bound to them).
        count: how many slots it fills.
    """
    stream = hashlib.shake_256(b"threeparty challenge\x00" + seed.encode()).digest(4 * count)
    return [
        int.from_bytes(stream[4 * i : 4 * i + 4], "big") % PLAINTEXT_MODULUS for i in range(count)
    ]


def challenge_matches(slots: np.ndarray, values: Sequence[int]) -> bool:
    """Whether fused slots are exactly the challenge (its values, then zeros)."""
    slots = np.asarray(slots, dtype=np.int64)
    count = len(values)
    return bool((slots[:count] == np.asarray(values)).all() and not slots[count:].any())


TAGGED_PARTIES: tuple[str, ...] = RECIPIENTS
"""The result's recipients: each multiplies a secret tag of its own into the evaluation."""


def vector_indices(layout: Layout, party: str) -> list[int]:
    """The vectors ``party`` encrypts: its literals' ([0]), or a recipient's tag vector ([0])."""
    return layout.party_vectors(party) or ([0] if party in TAGGED_PARTIES else [])


def random_tag() -> int:
    """A recipient's secret tag: a uniform nonzero value mod t."""
    return 1 + secrets.randbelow(PLAINTEXT_MODULUS - 1)


def tagged_vectors(
    layout: Layout, party: str, rows: np.ndarray | Sequence[Sequence[int]], tag: int = 1
) -> dict[int, np.ndarray]:
    """What ``party`` encrypts, with its tag multiplied in (``tag`` 1: no tag).

    The evaluation multiplies every party's vector, so the output's verdict slots hold
    ``tag_applicant * tag_bank * (matched leaves)``: a party that shifts its partial decryption
    by an offset it chose without knowing both tags makes fusion fail (``fuse``) instead of
    turning the verdict. A party that owns literals scales its literal vector; a recipient that
    owns none (the bank) encrypts its tag in every leaf slot.

    Raises:
        InvalidInputError: when the rows do not fit the party's inputs or a ciphertext.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
    vectors = encode_party(layout, party, rows)
    if vectors:
        return {i: v * int(tag) % PLAINTEXT_MODULUS for i, v in vectors.items()}
    if party not in TAGGED_PARTIES:
        return {}
    vector = np.zeros((len(rows), layout.block_size), dtype=np.int64)
    vector[:, : layout.n_leaves] = int(tag)
    return {0: vector.reshape(-1)}


# -- keys -------------------------------------------------------------------------------------
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


class _Engine:
    """The operations on one crypto context (the default one, or another for tests)."""

    def __init__(self, cc: Any, rotation_indices: Sequence[int] = ROTATION_INDICES):
        self.cc = cc
        self.rotation_indices = [int(i) for i in rotation_indices]

    def lead_round1(self) -> tuple[PartyKeyShare, Round1Blobs]:
        keys = self.cc.KeyGen()
        eval_mult = self.cc.KeySwitchGen(keys.secretKey, keys.secretKey)
        with _CACHE_LOCK:
            self.cc.EvalAtIndexKeyGen(keys.secretKey, self.rotation_indices)
            rotation = self.cc.GetEvalAutomorphismKeyMap(keys.secretKey.GetKeyTag())
            rotation_blob = _pack("rotation_keys", rotation)
            _clear_caches()
        share = PartyKeyShare(LEAD_PARTY, _pack("secret_key", keys.secretKey))
        return share, Round1Blobs(
            public_key=_pack("public_key", keys.publicKey),
            eval_mult=_pack("eval_key", eval_mult),
            rotation=rotation_blob,
        )

    def join_round1(
        self, party: str, previous_public_key: bytes, lead_eval_mult: bytes, lead_rotation: bytes
    ) -> tuple[PartyKeyShare, Round1Blobs]:
        if party not in PARTIES or party == LEAD_PARTY:
            raise InvalidInputError(f"join_round1 is for {PARTIES[1:]}, not {party!r}")
        previous = _unpack("public_key", previous_public_key, cc=self.cc)
        lead_mult = _unpack("eval_key", lead_eval_mult, cc=self.cc)
        lead_rot = _unpack("rotation_keys", lead_rotation, cc=self.cc)
        try:
            keys = self.cc.MultipartyKeyGen(previous)
            eval_mult = self.cc.MultiKeySwitchGen(keys.secretKey, keys.secretKey, lead_mult)
            rotation = self.cc.MultiEvalAtIndexKeyGen(
                keys.secretKey, lead_rot, self.rotation_indices, keys.publicKey.GetKeyTag()
            )
        except Exception as exc:
            raise InvalidBlobError(f"the round-1 material does not fit together: {exc}") from exc
        share = PartyKeyShare(party, _pack("secret_key", keys.secretKey))
        return share, Round1Blobs(
            public_key=_pack("public_key", keys.publicKey),
            eval_mult=_pack("eval_key", eval_mult),
            rotation=_pack("rotation_keys", rotation),
        )

    def combine_round1(self, round1: Sequence[Round1Blobs]) -> JointRound1:
        if len(round1) != len(PARTIES):
            raise InvalidInputError(f"round 1 needs {len(PARTIES)} parties, got {len(round1)}")
        joint_pk = _unpack("public_key", round1[-1].public_key, cc=self.cc)
        tag = joint_pk.GetKeyTag()
        mults = [_unpack("eval_key", r.eval_mult, cc=self.cc) for r in round1]
        rotations = [_unpack("rotation_keys", r.rotation, cc=self.cc) for r in round1]
        try:
            joint_mult, joint_rot = mults[0], rotations[0]
            for mult, rot in zip(mults[1:], rotations[1:], strict=True):
                joint_mult = self.cc.MultiAddEvalKeys(joint_mult, mult, tag)
                joint_rot = self.cc.MultiAddEvalAutomorphismKeys(joint_rot, rot, tag)
        except Exception as exc:
            raise InvalidBlobError(f"the round-1 shares do not add up: {exc}") from exc
        return JointRound1(
            joint_public_key=round1[-1].public_key,
            joint_eval_mult_round1=_pack("eval_key", joint_mult),
            joint_rotation=_pack("rotation_keys", joint_rot),
            key_tag=tag,
        )

    def round2(self, share: PartyKeyShare, joint_eval_mult_round1: bytes, key_tag: str) -> bytes:
        joint = _unpack("eval_key", joint_eval_mult_round1, key_tag, cc=self.cc)
        try:
            mult = self.cc.MultiMultEvalKey(share._secret(self.cc), joint, key_tag)
        except Exception as exc:
            raise InvalidBlobError(f"round 2 failed on this material: {exc}") from exc
        return _pack("mult_key", mult)

    def combine_round2(self, shares: Sequence[bytes], key_tag: str) -> bytes:
        if len(shares) != len(PARTIES):
            raise InvalidInputError(f"round 2 needs {len(PARTIES)} shares, got {len(shares)}")
        keys = [_unpack("mult_key", s, key_tag, cc=self.cc) for s in shares]
        try:
            joint = keys[0]
            for key in keys[1:]:
                joint = self.cc.MultiAddEvalMultKeys(joint, key, key_tag)
        except Exception as exc:
            raise InvalidBlobError(f"the round-2 shares do not add up: {exc}") from exc
        return _pack("mult_key", joint)

    # -- data ---------------------------------------------------------------------------------
    def encrypt(
        self, joint_public_key: bytes, vectors: Mapping[int, np.ndarray]
    ) -> dict[int, bytes]:
        public_key = _unpack("public_key", joint_public_key, cc=self.cc)
        slots = int(self.cc.GetRingDimension())
        out = {}
        for index, vector in vectors.items():
            values = [int(v) for v in np.asarray(vector).reshape(-1)]
            if len(values) > slots:
                raise InvalidInputError(f"vector {index}: {len(values)} slots, at most {slots}")
            plaintext = self.cc.MakePackedPlaintext(values)
            out[int(index)] = _pack("ciphertext", self.cc.Encrypt(public_key, plaintext))
        return out

    def _block_sum(self, ciphertext: Any, block_size: int, indices: Sequence[int]) -> Any:
        """Sum each block's slots into its first slot with the available rotations."""
        doubling = [1 << k for k in range((block_size - 1).bit_length())]
        if list(indices) == doubling:
            total = ciphertext
            for index in doubling:
                total = self.cc.EvalAdd(total, self.cc.EvalRotate(total, index))
            return total
        if list(indices) == [1]:
            total, rotated = ciphertext, ciphertext
            for _ in range(block_size - 1):
                rotated = self.cc.EvalRotate(rotated, 1)
                total = self.cc.EvalAdd(total, rotated)
            return total
        raise InvalidInputError(f"no block sum for rotation indices {list(indices)}")

    def _plain(self, values: np.ndarray) -> Any:
        return self.cc.MakePackedPlaintext([int(v) for v in np.asarray(values).reshape(-1)])

    def evaluate(
        self,
        keys: EvaluationKeys,
        ciphertexts: Mapping[str, Mapping[int, bytes]],
        blocks: int,
        layout: Layout,
        candidates: np.ndarray | None = None,
    ) -> bytes:
        if not 1 <= blocks <= int(self.cc.GetRingDimension()) // layout.block_size:
            raise InvalidInputError(f"blocks must be 1..{max_blocks(layout)}, got {blocks}")
        public = explain_vectors(layout, candidates) if candidates is not None else None
        factors = []
        for party in PARTIES:
            expected = set(vector_indices(layout, party))
            given = {int(index) for index in ciphertexts.get(party, {})}
            if given != expected:
                raise InvalidInputError(
                    f"{party}: ciphertexts {sorted(given)}, expected {sorted(expected)}"
                )
            for index in sorted(given):
                blob = ciphertexts[party][index]
                factor = _unpack("ciphertext", blob, keys.key_tag, cc=self.cc)
                if public is not None and party == EXPLAIN_PARTY:
                    # Only block 0 is the party's own row; blocks 1.. are the public candidates.
                    keep, add = public
                    factor = self.cc.EvalAdd(
                        self.cc.EvalMult(factor, self._plain(keep)), self._plain(add)
                    )
                factors.append(factor)
        relin = _unpack("mult_key", keys.relinearization, keys.key_tag, cc=self.cc)
        rotation = _unpack("rotation_keys", keys.rotation, cc=self.cc)
        mask = self._plain(layout.verdict_mask(blocks))
        with _CACHE_LOCK:
            try:
                self.cc.InsertEvalMultKey([relin], keys.key_tag)
                self.cc.InsertEvalAutomorphismKey(rotation, keys.key_tag)
                while len(factors) > 1:  # a balanced product: depth ceil(log2(owners))
                    paired = [
                        self.cc.EvalMult(factors[i], factors[i + 1])
                        for i in range(0, len(factors) - 1, 2)
                    ]
                    factors = paired + ([factors[-1]] if len(factors) % 2 else [])
                total = self._block_sum(factors[0], layout.block_size, keys.rotation_indices)
                # The tagged count of matched leaves; the verdict is read at fusion (``fuse``).
                return _pack("ciphertext", self.cc.EvalMult(total, mask))
            except EngineError:
                raise
            except Exception as exc:
                raise InvalidBlobError(f"evaluation failed on these keys: {exc}") from exc
            finally:
                _clear_caches()

    def partial_decrypt(self, share: PartyKeyShare, output: bytes, key_tag: str) -> bytes:
        ciphertext = _unpack("ciphertext", output, key_tag, cc=self.cc)
        secret = share._secret(self.cc)
        if share.party == LEAD_PARTY:
            partial = self.cc.MultipartyDecryptLead([ciphertext], secret)[0]
        else:
            partial = self.cc.MultipartyDecryptMain([ciphertext], secret)[0]
        return _pack("partial", partial)

    def fuse_slots(self, partials: Sequence[bytes]) -> np.ndarray:
        objs = [_unpack("partial", p, cc=self.cc) for p in partials]
        if not objs:
            raise InvalidInputError("no partial decryption to fuse")
        try:
            plaintext = self.cc.MultipartyDecryptFusion(objs)
        except Exception as exc:
            raise InvalidBlobError(f"the partial decryptions do not fuse: {exc}") from exc
        return np.asarray(plaintext.GetPackedValueArray(), dtype=np.int64) % PLAINTEXT_MODULUS


def _clear_caches() -> None:
    """Empty OpenFHE's process-global evaluation-key caches."""
    openfhe.ClearEvalMultKeys()
    openfhe.CryptoContext.ClearEvalAutomorphismKeys()


def _default() -> _Engine:
    return _Engine(context())


# -- the public API: stateless functions over bytes ---------------------------------------------
def lead_round1(
    rotation_indices: Sequence[int] = ROTATION_INDICES,
) -> tuple[PartyKeyShare, Round1Blobs]:
    """Round 1 for the lead (the applicant): a key pair and its evaluation-key shares.

    Args:
        rotation_indices: the rotations the evaluation will use (the same for every party).

    Returns:
        The applicant's secret share and its public round-1 blobs.
    """
    return _Engine(context(), rotation_indices).lead_round1()


def join_round1(
    party: str,
    previous_public_key: bytes,
    lead_eval_mult: bytes,
    lead_rotation: bytes,
    rotation_indices: Sequence[int] = ROTATION_INDICES,
) -> tuple[PartyKeyShare, Round1Blobs]:
    """Round 1 for the bank or the credit bureau: extend the chain with a new secret share.

    Args:
        party: "bank" or "credit_bureau".
        previous_public_key: the previous party's public key (applicant's for the bank, the
            bank's for the credit bureau).
        lead_eval_mult: the lead's round-1 relinearization share.
        lead_rotation: the lead's rotation-key shares.
        rotation_indices: as for ``lead_round1``.

    Returns:
        The party's secret share and its public round-1 blobs.

    Raises:
        InvalidBlobError: on bytes that are not the expected keys.
    """
    return _Engine(context(), rotation_indices).join_round1(
        party, previous_public_key, lead_eval_mult, lead_rotation
    )


def combine_round1(round1: Sequence[Round1Blobs]) -> JointRound1:
    """The server's step after round 1: the joint round-1 keys (public material only).

    Args:
        round1: the three parties' round-1 blobs in key-generation order.

    Returns:
        The joint public key, the joint round-1 relinearization key, the joint rotation keys and
        the key tag.

    Raises:
        InvalidBlobError: on a blob that is not the expected key or does not add up.
        InvalidInputError: on another number of parties.
    """
    return _default().combine_round1(round1)


def round2(share: PartyKeyShare, joint_eval_mult_round1: bytes, key_tag: str) -> bytes:
    """A party's round-2 share of the relinearization key.

    Args:
        share: the party's secret share.
        joint_eval_mult_round1: ``JointRound1.joint_eval_mult_round1``.
        key_tag: the joint key tag.

    Returns:
        The share (public).

    Raises:
        InvalidBlobError: on a blob of another kind or key set.
    """
    return _default().round2(share, joint_eval_mult_round1, key_tag)


def combine_round2(shares: Sequence[bytes], key_tag: str) -> bytes:
    """The server's step after round 2: the joint relinearization key.

    Args:
        shares: the three parties' ``round2`` outputs (any order).
        key_tag: the joint key tag.

    Returns:
        The relinearization key (public).

    Raises:
        InvalidBlobError: on a share of another kind or key set.
    """
    return _default().combine_round2(shares, key_tag)


def encode_party(
    layout: Layout, party: str, rows: Sequence[Sequence[int]] | np.ndarray
) -> dict[int, np.ndarray]:
    """The vector a party encrypts: per leaf, the product of its own literals (``Layout``).

    Args:
        layout: the public slot layout.
        party: the party encoding.
        rows: its own quantized inputs, one row per block (application or explain candidate).

    Returns:
        {0: int64 vector}, or {} for a party the tree tests no input of.

    Raises:
        InvalidInputError: when the rows do not fit the party's inputs or a ciphertext.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
    if len(rows) > max_blocks(layout):
        raise InvalidInputError(f"{len(rows)} blocks, at most {max_blocks(layout)}")
    try:
        return layout.encode_party(party, rows)
    except LayoutError as exc:
        raise InvalidInputError(str(exc)) from exc


def encrypt(joint_public_key: bytes, vectors: Mapping[int, np.ndarray]) -> dict[int, bytes]:
    """Encrypt a party's vectors under the joint public key.

    Args:
        joint_public_key: ``JointRound1.joint_public_key``.
        vectors: ``encode_party``'s output.

    Returns:
        {index: ciphertext blob}.

    Raises:
        InvalidBlobError: when the key is not a public key.
    """
    return _default().encrypt(joint_public_key, vectors)


def evaluate(
    keys: EvaluationKeys,
    ciphertexts: Mapping[str, Mapping[int, bytes]],
    blocks: int,
    layout: Layout | None = None,
    candidates: np.ndarray | None = None,
) -> bytes:
    """Evaluate the tree on the parties' ciphertexts with public keys only (the server's step).

    Every ciphertext must carry the key set's tag. The output holds each asked block's verdict
    in its first slot and 0 in every other slot (a plaintext mask), so fusion reveals only them.

    Args:
        keys: the key set's public evaluation keys.
        ciphertexts: {party: {index: ciphertext blob}} with exactly ``vector_indices``.
        blocks: blocks (applications or explain candidates) to decide, from block 0.
        layout: the slot layout (default: the deployed one).
        candidates: in explain mode, the public candidate rows of blocks 1.. (the credit
            bureau's vector then counts in block 0 only: ``explain_vectors``).

    Returns:
        The output ciphertext blob.

    Raises:
        KeyTagError: a ciphertext or key of another key set.
        InvalidBlobError: bytes that are not the expected blobs.
        InvalidInputError: missing or extra vectors, or too many blocks.
    """
    layout = layout or load_layout()
    return _Engine(context(), keys.rotation_indices).evaluate(
        keys, ciphertexts, blocks, layout, candidates
    )


def evaluation_keys(
    round1: Sequence[Round1Blobs], round2: Sequence[bytes]
) -> tuple[JointRound1, EvaluationKeys]:
    """The joint keys combined from the parties' round-1 and round-2 material.

    The server combines them to evaluate; each party combines them again from the signed
    material to re-evaluate before it decrypts (the combination is deterministic, so both get
    the same bytes).

    Args:
        round1: the three parties' round-1 blobs in key-generation order.
        round2: their round-2 shares in the same order.

    Raises:
        InvalidBlobError: on blobs that are not the expected keys or do not add up.
    """
    joint = combine_round1(round1)
    keys = EvaluationKeys(
        key_tag=joint.key_tag,
        relinearization=combine_round2(round2, joint.key_tag),
        rotation=joint.joint_rotation,
    )
    return joint, keys


def partial_decrypt(share: PartyKeyShare, output: bytes, key_tag: str) -> bytes:
    """A party's partial decryption of the output (the applicant's is the "lead" one).

    Args:
        share: the party's secret share.
        output: ``evaluate``'s output.
        key_tag: the session's joint key tag (an output of another key set is refused).

    Returns:
        The partial decryption (reveals nothing alone; seal it for its recipient).

    Raises:
        KeyTagError: when the output belongs to another key set.
    """
    return _default().partial_decrypt(share, output, key_tag)


def fuse_slots(partials: Sequence[bytes]) -> np.ndarray:
    """Fuse partial decryptions into the raw slot values (mod 65537), without any check.

    With all three partials these are the output's slots; with fewer, noise. ``fuse`` is the
    checked version.
    """
    return _default().fuse_slots(partials)


def _verdicts(slots: np.ndarray, blocks: int, layout: Layout, tag: int = 1) -> list[int]:
    """The verdicts of fused slots, checked: each verdict slot 0 or ``tag``, every other 0.

    A verdict slot holds ``tag * (matched leaves)``, 0 or ``tag``; the verdict is that bit, or
    its complement when the matched leaves are the refusals (``leaf_class`` 0).
    """
    size = blocks * layout.block_size
    used = slots[:size].reshape(blocks, layout.block_size)
    tag = int(tag) % PLAINTEXT_MODULUS
    if not np.isin(used[:, 0], (0, tag)).all() or used[:, 1:].any() or slots[size:].any():
        raise DecryptionError(
            "the partial decryptions do not fuse to verdicts carrying the recipients' tags "
            "(a partial is missing, wrong or shifted)"
        )
    matched = [int(v == tag) for v in used[:, 0]]
    return matched if layout.leaf_class == 1 else [1 - m for m in matched]


def fuse(
    partials: Sequence[bytes], blocks: int, layout: Layout | None = None, tag: int = 1
) -> list[int]:
    """Fuse the three partial decryptions into the verdicts (1 = likely approved).

    Args:
        partials: the three parties' partial decryptions (the applicant's among them).
        blocks: the blocks that were evaluated.
        layout: the slot layout (default: the deployed one).
        tag: the product of the recipients' tags (``tagged_vectors``) mod t.

    Returns:
        The verdict of each block.

    Raises:
        DecryptionError: unless every verdict slot is 0 or ``tag`` and every other slot 0: a
            share is missing, repeated or wrong, or a partial was shifted.
    """
    layout = layout or load_layout()
    if len(partials) != len(PARTIES):
        raise DecryptionError(
            f"fusion needs {len(PARTIES)} partial decryptions, got {len(partials)}"
        )
    return _verdicts(fuse_slots(partials), blocks, layout, tag)


MIN_RING_DIMENSION = 16384


def check_parameters(layout: Layout, multiparty_mode: str = MULTIPARTY_MODE) -> None:
    """Refuse parameters that are not the deployed, secure ones for this layout.

    A known answer cannot catch every wrong setting: with this circuit (one multiplication and a
    mask) ``FIXED_NOISE_MULTIPARTY`` decrypts correctly at ring dimension 8192, but without noise
    flooding a partial decryption is not shown to hide its party's key share.

    Args:
        layout: the slot layout (its owners set the multiplicative depth it needs).
        multiparty_mode: the multiparty mode the context is made with.

    Raises:
        SelfTestError: another multiparty mode than noise flooding, a ring dimension under
            16384, or a multiplicative depth under what the layout needs.
    """
    if multiparty_mode != "NOISE_FLOODING_MULTIPARTY":
        raise SelfTestError(
            f"multiparty mode {multiparty_mode}: only NOISE_FLOODING_MULTIPARTY floods the noise "
            "of partial decryptions, which keeps them from revealing the key shares"
        )
    cc = _make_context(multiparty_mode)
    factors = sum(len(vector_indices(layout, party)) for party in PARTIES)
    needed = (factors - 1).bit_length() + 1  # the vectors' product, then the mask
    problems = []
    if cc.GetRingDimension() < MIN_RING_DIMENSION:
        problems.append(f"ring dimension {cc.GetRingDimension()} < {MIN_RING_DIMENSION}")
    if cc.GetMultiplicativeDepth() < needed:
        problems.append(f"multiplicative depth {cc.GetMultiplicativeDepth()} < {needed}")
    if problems:
        raise SelfTestError("wrong parameters: " + "; ".join(problems))


def self_test(
    layout: Layout | None = None,
    multiparty_mode: str = MULTIPARTY_MODE,
    tamper: Callable[[bytes], bytes] | None = None,
) -> dict[str, int]:
    """Parameter check and known answer: a throwaway key set decides the layout's probe rows.

    Checks the parameters (``check_parameters``), then runs the whole protocol in this process
    (key rounds, encryption, evaluation, partial decryptions, fusion) and compares with the
    probe's clear verdicts. A server runs it at start-up and refuses to serve when it raises.

    Args:
        layout: the slot layout (default: the deployed one).
        multiparty_mode: OpenFHE's multiparty mode (tests pass a wrong one).
        tamper: applied to the output ciphertext before decryption (tests corrupt it).

    Returns:
        The size of each kind of blob the flow made (``blob_sizes``): a server refuses blobs far
        from them before it parses anything.

    Raises:
        SelfTestError: wrong parameters, or verdicts that differ from the known answer or do
            not decrypt.
    """
    layout = layout or load_layout()
    check_parameters(layout, multiparty_mode)
    rows = np.asarray(layout.probe["rows"], dtype=np.int64)
    expected = [int(v) for v in layout.probe["verdicts"]]
    try:
        flow = run_flow(
            layout, layout.split_rows(rows), multiparty_mode=multiparty_mode, tamper=tamper
        )
    except EngineError as exc:
        raise SelfTestError(f"the known-answer check did not decrypt: {exc}") from exc
    if flow["verdicts"] != expected:
        raise SelfTestError(
            f"the known-answer check gave {flow['verdicts']}, expected {expected} "
            f"({multiparty_mode})"
        )
    return blob_sizes(flow)


def blob_sizes(flow: Mapping[str, Any]) -> dict[str, int]:
    """The largest blob of each kind in a ``run_flow`` result (sizes hardly vary by content)."""
    round1 = list(flow["round1"].values())
    ciphertexts = [b for blobs in flow["ciphertexts"].values() for b in blobs.values()]
    return {
        "public_key": max(len(r.public_key) for r in round1),
        "eval_key": max(len(r.eval_mult) for r in round1),
        "rotation_keys": max(len(r.rotation) for r in round1),
        "mult_key": max(len(b) for b in flow["round2"].values()),
        "ciphertext": max([len(flow["output"]), *map(len, ciphertexts)]),
        "partial": max(len(b) for b in flow["partials"].values()),
    }


def run_flow(
    layout: Layout,
    party_rows: Mapping[str, np.ndarray],
    multiparty_mode: str = MULTIPARTY_MODE,
    rotation_indices: Sequence[int] = ROTATION_INDICES,
    tamper: Callable[[bytes], bytes] | None = None,
    timings: dict[str, float] | None = None,
    candidates: np.ndarray | None = None,
    tags: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The whole three-party protocol in one process (self-test, tests and the benchmark).

    Args:
        layout: the slot layout.
        party_rows: {party: its quantized rows, one per block}.
        multiparty_mode: OpenFHE's multiparty mode (the deployed one unless testing).
        rotation_indices: the rotation keys to make and use.
        tamper: applied to the output ciphertext before decryption.
        timings: when given, filled with each step's seconds ("round1_<party>",
            "combine_round1", "round2_<party>", "combine_round2", "encrypt_<party>", "evaluate",
            "partial_<party>", "fuse").
        candidates: explain mode's public candidate rows (``explain_vectors``); the credit
            bureau's rows are then its own row only.
        tags: the recipients' tags (``tagged_vectors``; default: random ones).

    Returns:
        {"verdicts", "tag" (the product of the tags), "shares" (the three PartyKeyShare),
        "joint" (JointRound1), "keys"
        (EvaluationKeys), "round1" (Round1Blobs per party), "round2" (bytes per party),
        "ciphertexts", "output", "partials" (per party)}.

    Raises:
        DecryptionError: when the fused slots are not verdicts.
    """
    engine = _Engine(_make_context(multiparty_mode), rotation_indices)
    times = timings if timings is not None else {}
    tags = dict(tags) if tags is not None else {p: random_tag() for p in TAGGED_PARTIES}
    tag = 1
    for value in tags.values():
        tag = tag * int(value) % PLAINTEXT_MODULUS

    def timed(step: str, func: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        result = func(*args)
        times[step] = time.perf_counter() - start
        return result

    lead_share, lead_blobs = timed(f"round1_{LEAD_PARTY}", engine.lead_round1)
    shares, round1 = {LEAD_PARTY: lead_share}, {LEAD_PARTY: lead_blobs}
    previous = lead_blobs.public_key
    for party in PARTIES[1:]:
        shares[party], round1[party] = timed(
            f"round1_{party}",
            engine.join_round1,
            party,
            previous,
            lead_blobs.eval_mult,
            lead_blobs.rotation,
        )
        previous = round1[party].public_key
    joint = timed("combine_round1", engine.combine_round1, [round1[p] for p in PARTIES])
    round2_shares = {
        p: timed(
            f"round2_{p}", engine.round2, shares[p], joint.joint_eval_mult_round1, joint.key_tag
        )
        for p in PARTIES
    }
    keys = EvaluationKeys(
        key_tag=joint.key_tag,
        relinearization=timed(
            "combine_round2",
            engine.combine_round2,
            [round2_shares[p] for p in PARTIES],
            joint.key_tag,
        ),
        rotation=joint.joint_rotation,
        rotation_indices=tuple(engine.rotation_indices),
    )
    blocks = np.atleast_2d(party_rows[LEAD_PARTY]).shape[0]
    ciphertexts = {
        p: timed(
            f"encrypt_{p}",
            lambda p: engine.encrypt(
                joint.joint_public_key,
                tagged_vectors(layout, p, party_rows[p], tags.get(p, 1)),
            ),
            p,
        )
        for p in PARTIES
    }
    output = timed("evaluate", engine.evaluate, keys, ciphertexts, blocks, layout, candidates)
    if tamper is not None:
        output = tamper(output)
    partials = {
        p: timed(f"partial_{p}", engine.partial_decrypt, shares[p], output, joint.key_tag)
        for p in PARTIES
    }
    slots = timed("fuse", engine.fuse_slots, [partials[p] for p in PARTIES])
    return {
        "verdicts": _verdicts(slots, blocks, layout, tag),
        "tag": tag,
        "shares": shares,
        "joint": joint,
        "keys": keys,
        "round1": round1,
        "round2": round2_shares,
        "ciphertexts": ciphertexts,
        "output": output,
        "partials": partials,
    }
