"""What the parties encrypt and the public operands: the layout helpers of the engine.

The explain candidates' vectors, the key-confirmation challenge, the recipients' tags and each
party's encoded vector.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np

from contracts.parties import RECIPIENTS
from threeparty.engine import PLAINTEXT_MODULUS
from threeparty.engine.context import max_blocks
from threeparty.engine.errors import InvalidInputError
from threeparty.layout import Layout, LayoutError

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
