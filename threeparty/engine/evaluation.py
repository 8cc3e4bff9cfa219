"""The operations on one crypto context: key rounds, encryption, evaluation, decryption.

``_Engine`` does the work on OpenFHE objects; the stateless functions over bytes (``api``) and the
whole flow (``selftest.run_flow``) call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contracts.parties import PARTIES
from threeparty.engine import PLAINTEXT_MODULUS
from threeparty.engine.blobs import _pack, _unpack
from threeparty.engine.context import (
    _CACHE_LOCK,
    LEAD_PARTY,
    ROTATION_INDICES,
    _clear_caches,
    context,
    max_blocks,
)
from threeparty.engine.errors import EngineError, InvalidBlobError, InvalidInputError
from threeparty.engine.keys import EvaluationKeys, JointRound1, PartyKeyShare, Round1Blobs
from threeparty.engine.vectors import EXPLAIN_PARTY, explain_vectors, vector_indices
from threeparty.layout import Layout


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


def _default() -> _Engine:
    return _Engine(context())
