"""Engine blobs: a 4-byte header (magic and kind) in front of OpenFHE's binary serialization.

A blob of the wrong kind is refused before OpenFHE parses it. ``keep_objects`` turns on a memo of
the last objects serialized or deserialized; its state (``_MEMO``, ``_MEMO_CAPACITY``) lives here
only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import openfhe

from threeparty.engine.context import context
from threeparty.engine.errors import InvalidBlobError, KeyTagError

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


# -- the memo -------------------------------------------------------------------------------
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
