"""The threshold BFV engine with real OpenFHE (Python 3.10, .venv-threeparty).

One three-party key set for the module (``flow``): 256 held-out rows decided in one batched
evaluation. The expected verdicts come from tests/threeparty/data/heldout_rows.json, written by
``python -m development.threeparty_layout`` with ``development.reference.clear_verdict`` (a
main-suite test checks that file against the derivation).
"""

import dataclasses
import itertools
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from threeparty import PARTIES, engine
from threeparty.layout import load_layout

FIXTURE = json.loads((Path(__file__).parent / "data" / "heldout_rows.json").read_text())
N_ROWS = 256


@pytest.fixture(scope="module")
def layout():
    return load_layout()


@pytest.fixture(scope="module")
def flow(layout):
    rows = np.array(FIXTURE["rows"][:N_ROWS])
    return engine.run_flow(layout, layout.split_rows(rows))


@pytest.fixture(scope="module")
def other_key_set():
    """The public key of another key set (another session's lead)."""
    _, blobs = engine.lead_round1()
    return blobs


def _verdict_slots(slots: np.ndarray, blocks: int, layout) -> np.ndarray:
    return slots[: blocks * layout.block_size].reshape(blocks, layout.block_size)[:, 0]


def _assert_noise(slots: np.ndarray, expected: list[int], layout) -> None:
    """Over the batch, the verdict slots are no better than chance (in fact: noise)."""
    verdicts = _verdict_slots(slots, len(expected), layout)
    right = np.mean(verdicts == np.array(expected))
    assert right < 0.05, f"{right:.0%} of the verdicts came out: not noise"
    assert np.mean(np.isin(verdicts, (0, 1))) < 0.05


def test_verdicts_equal_the_clear_tree_on_held_out_rows_in_one_evaluation(flow, layout):
    expected = FIXTURE["verdicts"][:N_ROWS]
    assert 0.2 < np.mean(expected) < 0.8  # both verdicts are well represented
    assert flow["verdicts"] == expected
    partials = [flow["partials"][p] for p in PARTIES]
    assert engine.fuse(partials, N_ROWS, layout, flow["tag"]) == expected
    # Fusion does not depend on the order the recipient receives the partials in.
    assert engine.fuse(partials[::-1], N_ROWS, layout, flow["tag"]) == expected
    # Without the recipients' tags the slots are not verdicts.
    with pytest.raises(engine.DecryptionError):
        engine.fuse(partials, N_ROWS, layout, (flow["tag"] + 1) % engine.PLAINTEXT_MODULUS)


def test_a_partial_shifted_by_an_offset_is_refused(flow, layout):
    """A party that adds an offset to its partial cannot turn a verdict without both tags."""
    cc = engine.context()
    expected = FIXTURE["verdicts"][:N_ROWS]
    shifted = dict(flow["partials"])
    for offset in (1, flow["tag"] - 1, 65536):
        plain = cc.MakePackedPlaintext([offset] + [0] * (layout.block_size - 1))
        partial = engine._unpack("partial", flow["partials"]["credit_bureau"])
        shifted["credit_bureau"] = engine._pack("partial", cc.EvalAdd(partial, plain))
        with pytest.raises(engine.DecryptionError):
            engine.fuse([shifted[p] for p in PARTIES], N_ROWS, layout, flow["tag"])
    # Shifting by the product of the tags would turn a refusal, but it takes both tags.
    assert 0 in expected


def test_output_reveals_only_the_verdict_slots(flow, layout):
    slots = engine.fuse_slots([flow["partials"][p] for p in PARTIES])
    blocks = slots.reshape(-1, layout.block_size)
    assert not blocks[:, 1:].any()
    assert not blocks[N_ROWS:].any()


def test_explain_decides_the_six_bins_in_one_evaluation(flow, layout):
    candidates = np.array(layout.explain_candidates["rows"])
    # Explain needs several refused applications whose bins disagree, else it proves little.
    cases = [e for e in FIXTURE["explain"] if len(set(e["candidate_verdicts"])) == 2]
    assert cases
    case = cases[0]
    split = layout.split_rows(np.array(FIXTURE["rows"][case["position"]]))
    rows = {
        "applicant": np.repeat(split["applicant"], len(candidates), axis=0),
        "bank": np.repeat(split["bank"], len(candidates), axis=0),
        "credit_bureau": candidates,
    }
    joint = flow["joint"]
    tags = {"applicant": 3, "bank": 11}
    ciphertexts = {
        p: engine.encrypt(
            joint.joint_public_key, engine.tagged_vectors(layout, p, rows[p], tags.get(p, 1))
        )
        for p in PARTIES
    }
    output = engine.evaluate(flow["keys"], ciphertexts, len(candidates), layout)
    partials = [engine.partial_decrypt(flow["shares"][p], output, joint.key_tag) for p in PARTIES]
    assert engine.fuse(partials, len(candidates), layout, 33) == case["candidate_verdicts"]


def test_fewer_than_three_partial_decryptions_give_noise(flow, layout):
    expected = FIXTURE["verdicts"][:N_ROWS]
    for count in (1, 2):
        for subset in itertools.combinations(PARTIES, count):
            partials = [flow["partials"][p] for p in subset]
            _assert_noise(engine.fuse_slots(partials), expected, layout)
            with pytest.raises(engine.DecryptionError):
                engine.fuse(partials, N_ROWS, layout)
    # Repeating a partial instead of the missing one gives noise too.
    repeated = [flow["partials"][p] for p in ("applicant", "bank", "bank")]
    _assert_noise(engine.fuse_slots(repeated), expected, layout)
    with pytest.raises(engine.DecryptionError):
        engine.fuse(repeated, N_ROWS, layout)


def test_what_the_server_holds_does_not_decrypt_the_verdicts(flow, layout):
    """The server has every public blob and the output; with its own keys it gets noise."""
    import openfhe

    expected = FIXTURE["verdicts"][:N_ROWS]
    joint = flow["joint"]
    public = [
        *(b for r in flow["round1"].values() for b in (r.public_key, r.eval_mult, r.rotation)),
        *flow["round2"].values(),
        joint.joint_public_key,
        joint.joint_eval_mult_round1,
        joint.joint_rotation,
        flow["keys"].relinearization,
        *(ct for cts in flow["ciphertexts"].values() for ct in cts.values()),
        flow["output"],
    ]
    # No secret share is among (or inside) what the server holds.
    assert all(engine.blob_kind(blob) != "secret_key" for blob in public)
    for share in flow["shares"].values():
        secret = share.secret_key
        chunk = secret[len(secret) // 2 : len(secret) // 2 + 64]
        assert not any(chunk in blob for blob in public)

    cc = engine.context()
    output = engine._unpack("ciphertext", flow["output"])
    # Its own key pair, and its own share chained onto the joint public key (a fourth party).
    own = cc.KeyGen().secretKey
    chained = cc.MultipartyKeyGen(engine._unpack("public_key", joint.joint_public_key)).secretKey
    for secret in (own, chained):
        plaintext = cc.Decrypt(secret, output)
        _assert_noise(np.asarray(plaintext.GetPackedValueArray()) % 65537, expected, layout)
        as_lead = openfhe.Serialize(cc.MultipartyDecryptLead([output], secret)[0], openfhe.BINARY)
        forged = engine._MAGIC + bytes([engine._KINDS["partial"], 0]) + as_lead
        # Its partial with the two non-lead parties' real partials (what a relay could add).
        attempt = [forged, flow["partials"]["bank"], flow["partials"]["credit_bureau"]]
        _assert_noise(engine.fuse_slots(attempt), expected, layout)
        with pytest.raises(engine.DecryptionError):
            engine.fuse(attempt, N_ROWS, layout)


def test_wrong_shares_give_noise(flow, layout, other_key_set):
    """A share of another key set (its partial tag-checked out, then forced) gives noise."""
    expected = FIXTURE["verdicts"][:N_ROWS]
    other_share, _ = engine.join_round1(
        "bank", other_key_set.public_key, other_key_set.eval_mult, other_key_set.rotation
    )
    wrong = engine.partial_decrypt(other_share, flow["output"], flow["joint"].key_tag)
    attempt = [flow["partials"]["applicant"], wrong, flow["partials"]["credit_bureau"]]
    _assert_noise(engine.fuse_slots(attempt), expected, layout)


def test_self_test_passes_with_the_deployed_parameters(layout):
    engine.self_test(layout)


def test_self_test_refuses_fixed_noise_multiparty(layout):
    # With this circuit FIXED_NOISE decrypts the right verdicts (ring dimension 8192), so the
    # known answer alone would pass it: the parameter check refuses it.
    with pytest.raises(engine.SelfTestError, match="NOISE_FLOODING"):
        engine.self_test(layout, multiparty_mode="FIXED_NOISE_MULTIPARTY")


def test_self_test_refuses_a_tampered_output(layout):
    def flip_coefficients(blob: bytes) -> bytes:
        data = bytearray(blob)
        middle = len(data) // 2
        for i in range(middle, middle + 64):
            data[i] ^= 0x5A
        return bytes(data)

    with pytest.raises(engine.SelfTestError):
        engine.self_test(layout, tamper=flip_coefficients)


def test_self_test_refuses_a_wrong_known_answer(layout):
    probe = dict(layout.probe, verdicts=[1 - v for v in layout.probe["verdicts"]])
    wrong = dataclasses.replace(layout, probe=probe)
    with pytest.raises(engine.SelfTestError):
        engine.self_test(wrong)


def test_key_tag_check_rejects_material_of_another_key_set(flow, layout, other_key_set):
    split = layout.split_rows(np.array(FIXTURE["rows"][:1]))
    joint = flow["joint"]
    own = {
        p: engine.encrypt(joint.joint_public_key, engine.encode_party(layout, p, split[p]))
        for p in PARTIES
    }
    foreign = engine.encrypt(
        other_key_set.public_key, engine.encode_party(layout, "applicant", split["applicant"])
    )
    with pytest.raises(engine.KeyTagError):
        engine.evaluate(flow["keys"], {**own, "applicant": foreign}, 1, layout)
    with pytest.raises(engine.KeyTagError):
        engine.check_blob("ciphertext", foreign[0], joint.key_tag)
    other_tag = engine.key_tag_of(other_key_set.public_key)
    assert other_tag != joint.key_tag
    with pytest.raises(engine.KeyTagError):
        engine.partial_decrypt(flow["shares"]["bank"], flow["output"], other_tag)
    with pytest.raises(engine.KeyTagError):
        engine.round2(flow["shares"]["bank"], joint.joint_eval_mult_round1, other_tag)
    with pytest.raises(engine.KeyTagError):
        engine.combine_round2(list(flow["round2"].values()), other_tag)


def test_malformed_and_misplaced_bytes_raise_invalid_blob_error(flow, layout):
    joint = flow["joint"]
    ciphertext = flow["ciphertexts"]["applicant"][0]
    bad_blobs = [
        b"",
        b"not a blob at all",
        ciphertext[:4] + b"\x00" * 200,  # a ciphertext header, garbage body
        ciphertext[: len(ciphertext) // 2],  # truncated
        joint.joint_public_key,  # a public key where a ciphertext belongs
    ]
    vectors = {p: dict(c) for p, c in flow["ciphertexts"].items()}
    for bad in bad_blobs:
        with pytest.raises(engine.InvalidBlobError):
            engine.evaluate(
                flow["keys"],
                {**vectors, "applicant": {**vectors["applicant"], 0: bad}},
                N_ROWS,
                layout,
            )
        with pytest.raises(engine.InvalidBlobError):
            engine.partial_decrypt(flow["shares"]["bank"], bad, joint.key_tag)
        with pytest.raises(engine.InvalidBlobError):
            engine.fuse_slots([bad, flow["partials"]["bank"], flow["partials"]["credit_bureau"]])
    for bad in (b"", ciphertext, joint.joint_public_key[:1000]):
        with pytest.raises(engine.InvalidBlobError):
            engine.encrypt(bad, {0: np.zeros(8, dtype=np.int64)})
        with pytest.raises(engine.InvalidBlobError):
            engine.join_round1("bank", bad, bad, bad)
        with pytest.raises(engine.InvalidBlobError):
            engine.combine_round2([bad, bad, bad], joint.key_tag)
    with pytest.raises(engine.InvalidBlobError):
        engine.key_tag_of(b"\x00" * 64)
    # What a server checks on upload, before storing anything.
    engine.check_blob("ciphertext", ciphertext, joint.key_tag)
    engine.check_blob("rotation_keys", joint.joint_rotation, joint.key_tag)
    for kind, bad in [("ciphertext", joint.joint_public_key), ("mult_key", b"3P"), ("nope", b"")]:
        with pytest.raises(engine.InvalidBlobError):
            engine.check_blob(kind, bad)


def test_a_ciphertext_of_other_parameters_is_refused_even_with_a_forged_tag(flow, layout):
    import openfhe

    other = engine._make_context("FIXED_NOISE_MULTIPARTY")  # ring dimension 8192
    keys = other.KeyGen()
    ciphertext = other.Encrypt(keys.publicKey, other.MakePackedPlaintext([1] * 8))
    ciphertext.SetKeyTag(flow["joint"].key_tag)
    blob = (
        engine._MAGIC
        + bytes([engine._KINDS["ciphertext"], 0])
        + openfhe.Serialize(ciphertext, openfhe.BINARY)
    )
    with pytest.raises(engine.InvalidBlobError, match="other encryption parameters"):
        engine.check_blob("ciphertext", blob, flow["joint"].key_tag)
    vectors = {p: dict(c) for p, c in flow["ciphertexts"].items()}
    with pytest.raises(engine.InvalidBlobError):
        engine.evaluate(flow["keys"], {**vectors, "applicant": {0: blob}}, N_ROWS, layout)


def test_structural_errors_raise_invalid_input_error(flow, layout):
    vectors = {p: dict(c) for p, c in flow["ciphertexts"].items()}
    missing = {**vectors, "credit_bureau": {}}
    with pytest.raises(engine.InvalidInputError):
        engine.evaluate(flow["keys"], missing, N_ROWS, layout)
    with pytest.raises(engine.InvalidInputError):
        engine.evaluate(flow["keys"], vectors, engine.max_blocks(layout) + 1, layout)
    with pytest.raises(engine.InvalidInputError):
        engine.encode_party(layout, "bank", [[1, 2]])  # the bank has one input


def test_key_share_is_saved_owner_only_and_loads_back(flow, tmp_path):
    share = flow["shares"]["credit_bureau"]
    path = share.save(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert engine.PartyKeyShare.load(tmp_path / "keys", "credit_bureau") == share
    assert "secret_key=<" in repr(share)  # the bytes never show in logs
    (tmp_path / "keys" / "bank.keyshare").write_bytes(flow["output"])
    with pytest.raises(engine.InvalidBlobError):
        engine.PartyKeyShare.load(tmp_path / "keys", "bank")


def test_the_deployed_modulus_leaves_a_wide_noise_margin(flow):
    """256 held-out rows: the output still decrypts with 2^45 more noise (self-test asks 2^30)."""
    assert engine.noise_margin_bits(flow, limit=45) >= 45


def test_a_modulus_too_small_for_the_circuit_is_refused(layout):
    # Last but one in the module: it makes a context with other parameters, then restores them.
    # Three vectors (the owners' and the bank's tag): two levels of multiplication, the mask.
    assert layout.owners() == ["applicant", "credit_bureau"]
    assert [len(engine.vector_indices(layout, p)) for p in PARTIES] == [1, 1, 1]
    deployed = engine.MULTIPLICATIVE_DEPTH
    engine._make_context.cache_clear()
    try:
        engine.MULTIPLICATIVE_DEPTH = 0  # OpenFHE then picks 3 towers and ring dimension 8192
        rows = np.asarray(layout.probe["rows"], dtype=np.int64)
        small = engine.run_flow(layout, layout.split_rows(rows))
        assert small["verdicts"] == [int(v) for v in layout.probe["verdicts"]]  # it decrypts...
        assert engine.noise_margin_bits(small) < engine.MIN_NOISE_MARGIN_BITS  # ...just barely
        with pytest.raises(engine.SelfTestError, match="wrong parameters"):
            engine.self_test(layout)
    finally:
        engine.MULTIPLICATIVE_DEPTH = deployed
        engine._make_context.cache_clear()
    engine.check_parameters(layout)


def test_kept_objects_are_found_by_the_very_same_blob_only(flow):
    """keep_objects: the same bytes object gives the kept object back; equal bytes are parsed."""
    blob = flow["output"]
    engine.keep_objects(8)
    try:
        first = engine._unpack("ciphertext", blob)
        assert engine._unpack("ciphertext", blob) is first
        copy = bytes(bytearray(blob))  # equal content, another object
        assert copy is not blob
        assert engine._unpack("ciphertext", copy) is not first
        with pytest.raises(engine.InvalidBlobError, match="expected a partial blob"):
            engine._unpack("partial", blob)  # the header's kind is checked before the memo
        with pytest.raises(engine.KeyTagError):
            engine._unpack("ciphertext", blob, key_tag="another key set")
        packed = engine._pack("ciphertext", first)
        assert engine._unpack("ciphertext", packed) is first  # what it serialized, it keeps
    finally:
        engine.keep_objects(0)
    assert engine._unpack("ciphertext", blob) is not first  # off: parsed every time
