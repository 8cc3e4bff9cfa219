"""The public API: stateless functions over bytes (key rounds, encryption, evaluation, fusion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contracts.parties import PARTIES
from threeparty.engine import PLAINTEXT_MODULUS
from threeparty.engine.context import ROTATION_INDICES, context
from threeparty.engine.errors import DecryptionError
from threeparty.engine.evaluation import _default, _Engine
from threeparty.engine.keys import EvaluationKeys, JointRound1, PartyKeyShare, Round1Blobs
from threeparty.layout import Layout, load_layout


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
