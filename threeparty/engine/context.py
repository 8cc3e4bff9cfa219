"""The crypto context, made once per process, and OpenFHE's key caches.

The encryption parameters are the package's (``threeparty.engine.PLAINTEXT_MODULUS``,
``MULTIPLICATIVE_DEPTH``, ``MULTIPARTY_MODE``): ``_make_context`` reads them there each time it
makes a context, so one that a test or a tool sets on the package is the one used.

OpenFHE keeps evaluation keys in process-global caches keyed by key tag; ``_CACHE_LOCK`` serializes
whatever inserts keys in them and ``_clear_caches`` empties them again.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import openfhe

import threeparty.engine as _package
from contracts.parties import LEAD
from threeparty.layout import Layout

LEAD_PARTY = LEAD

ROTATION_INDICES: tuple[int, ...] = (1,)
"""Rotation keys made. (1,): one key, a block's 8 slots summed with 7 rotations by 1. The
alternative (1, 2, 4) sums with 3 rotations but costs each party two more rotation-key shares
(4.2 MB each, up and down); see README, "Three-party mode", for the measured trade-off."""


_CACHE_LOCK = threading.RLock()


@lru_cache(maxsize=4)
def _make_context(multiparty_mode: str) -> Any:
    params = openfhe.CCParamsBFVRNS()
    params.SetPlaintextModulus(_package.PLAINTEXT_MODULUS)
    params.SetMultiplicativeDepth(_package.MULTIPLICATIVE_DEPTH)
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
    return _make_context(_package.MULTIPARTY_MODE)


def slot_count() -> int:
    """Slots of a ciphertext (the ring dimension; rotations act on two rows of half of them)."""
    return int(context().GetRingDimension())


def max_blocks(layout: Layout) -> int:
    """Applications (blocks) one ciphertext holds: the slots over the block size."""
    return slot_count() // layout.block_size


def _clear_caches() -> None:
    """Empty OpenFHE's process-global evaluation-key caches."""
    openfhe.ClearEvalMultKeys()
    openfhe.CryptoContext.ClearEvalAutomorphismKeys()
