"""The parameter check, the known-answer self-test and the whole flow in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from contracts.parties import PARTIES
from threeparty.engine import MULTIPARTY_MODE, PLAINTEXT_MODULUS
from threeparty.engine.api import _verdicts
from threeparty.engine.blobs import _pack, _unpack
from threeparty.engine.context import LEAD_PARTY, ROTATION_INDICES, _make_context
from threeparty.engine.errors import EngineError, SelfTestError
from threeparty.engine.evaluation import _Engine
from threeparty.engine.keys import EvaluationKeys
from threeparty.engine.vectors import TAGGED_PARTIES, random_tag, tagged_vectors
from threeparty.layout import Layout, load_layout

MIN_RING_DIMENSION = 16384
MIN_NOISE_MARGIN_BITS = 30
"""The evaluated known answer must still decrypt after its noise is multiplied by 2^30 (two
multiplications by 2^15): a modulus too small for the circuit is refused before it serves."""
NOISE_STEP_BITS = 15  # one scaling of the output: a plaintext constant 2^15 (< t = 65537)


def check_parameters(layout: Layout, multiparty_mode: str = MULTIPARTY_MODE) -> None:
    """Refuse parameters that are not the deployed, secure ones.

    A known answer cannot catch every wrong setting: with this circuit ``FIXED_NOISE_MULTIPARTY``
    decrypts correctly at ring dimension 8192, but without noise flooding a partial decryption
    is not shown to hide its party's key share. Whether the modulus suits the layout's circuit is
    measured, not counted: ``self_test`` requires ``MIN_NOISE_MARGIN_BITS`` of noise margin.

    Args:
        layout: the slot layout (its circuit is what ``self_test`` then measures).
        multiparty_mode: the multiparty mode the context is made with.

    Raises:
        SelfTestError: another multiparty mode than noise flooding, or a ring dimension under
            16384.
    """
    del layout  # kept in the signature: the callers name the layout the parameters serve
    if multiparty_mode != "NOISE_FLOODING_MULTIPARTY":
        raise SelfTestError(
            f"multiparty mode {multiparty_mode}: only NOISE_FLOODING_MULTIPARTY floods the noise "
            "of partial decryptions, which keeps them from revealing the key shares"
        )
    cc = _make_context(multiparty_mode)
    if cc.GetRingDimension() < MIN_RING_DIMENSION:
        raise SelfTestError(
            f"wrong parameters: ring dimension {cc.GetRingDimension()} < {MIN_RING_DIMENSION}"
        )


def noise_margin_bits(
    flow: Mapping[str, Any],
    limit: int = MIN_NOISE_MARGIN_BITS,
    multiparty_mode: str = MULTIPARTY_MODE,
) -> int:
    """How much more noise the output of a ``run_flow`` takes and still decrypts, in bits.

    Multiplies the evaluated output by the plaintext constant 2^15 again and again (each time
    the noise grows by up to 2^15, and the message by 2^15 mod t) and decrypts it with the three
    flooded partial decryptions, until it no longer decrypts to the scaled message or ``limit``
    bits are reached.

    Args:
        flow: a ``run_flow`` result (its output, shares and key tag).
        limit: stop once this many bits of margin are shown.
        multiparty_mode: the mode the flow's context was made with.

    Returns:
        The bits of margin shown: a multiple of 15, at least ``limit`` when there is that much.
    """
    engine = _Engine(_make_context(multiparty_mode))
    cc, tag, shares = engine.cc, flow["joint"].key_tag, flow["shares"]

    def fused(blob: bytes) -> np.ndarray:
        return engine.fuse_slots([engine.partial_decrypt(shares[p], blob, tag) for p in PARTIES])

    step = pow(2, NOISE_STEP_BITS, PLAINTEXT_MODULUS)
    constant = cc.MakePackedPlaintext([step] * int(cc.GetRingDimension()))
    expected = fused(flow["output"])
    current = _unpack("ciphertext", flow["output"], tag, cc=cc)
    shown = 0
    while shown < limit:
        current = cc.EvalMult(current, constant)
        expected = expected * step % PLAINTEXT_MODULUS
        try:
            if not np.array_equal(fused(_pack("ciphertext", current)), expected):
                break
        except EngineError:
            break
        shown += NOISE_STEP_BITS
    return shown


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
    margin = noise_margin_bits(flow, multiparty_mode=multiparty_mode)
    if margin < MIN_NOISE_MARGIN_BITS:
        raise SelfTestError(
            f"wrong parameters: the evaluated output takes only 2^{margin} more noise, under "
            f"the 2^{MIN_NOISE_MARGIN_BITS} required: the ciphertext modulus is too small for "
            "the circuit"
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
