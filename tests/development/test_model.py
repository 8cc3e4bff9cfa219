"""The model pipeline: data, per-party preprocessing, the committed FHE module vs the clear tree."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from concrete import fhe

import settings
from backend import InvalidFieldError, PartyPreprocessor
from development.data_report import parties_of
from development.fhe_tree import QuantizedTree
from development.generate_data import generate
from development.reference import clear_explain, clear_verdict, quantized_row
from development.train import (
    build,
    circuit_rows,
    feature_slices,
    float_features,
    library_versions,
)

N_REAL_ROWS = 4


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(settings.MODEL_CARD_PATH.read_text())


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(settings.DATA_PATH)


@pytest.fixture(scope="module")
def fhe_pair() -> tuple[fhe.Server, fhe.Client, fhe.EvaluationKeys]:
    """The committed server artifact and a client with fresh keys from the committed specs."""
    server = fhe.Server.load(settings.SERVER_ARTIFACT_PATH)
    client = fhe.Client(fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes()))
    client.keygen(force=True)
    keys = fhe.EvaluationKeys.deserialize(client.evaluation_keys.serialize())
    return server, client, keys


def test_generator_is_deterministic_and_has_the_schema() -> None:
    first, second = generate(2_000, seed=7), generate(2_000, seed=7)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(generate(2_000, seed=8))
    expected = [f for p in settings.PARTIES for f in settings.PARTY_FIELDS[p]] + ["approved"]
    assert sorted(first.columns) == sorted(expected)
    for field, values in settings.CATEGORY_VALUES.items():
        assert set(first[field]) <= set(values), field
    assert len(settings.OCCUPATION_TYPES) == 18
    for field in settings.BOOLEAN_FIELDS:
        assert first[field].dtype == bool


def test_committed_data_matches_the_generator_and_the_rules(data: pd.DataFrame) -> None:
    assert len(data) >= 20_000
    regenerated = generate(settings.N_ROWS, settings.SEED)
    pd.testing.assert_frame_equal(data, regenerated, check_dtype=False)
    assert 0.40 <= data["approved"].mean() <= 0.70
    by_bin = data.groupby("years_employed")["approved"].mean()[settings.YEARS_EMPLOYED_BINS]
    assert by_bin.is_monotonic_increasing
    assert data[data.employed]["approved"].mean() > data[~data.employed]["approved"].mean()


def test_each_party_preprocesses_only_its_own_fields(data: pd.DataFrame) -> None:
    preprocessors = PartyPreprocessor.load_all()
    for party, fields in settings.PARTY_FIELDS.items():
        assert [f.field for f in preprocessors[party].features] == list(fields)
    # Shuffling every other party's columns leaves a party's features unchanged.
    x = float_features(data.head(300))
    rng = np.random.default_rng(0)
    for party, (start, stop) in feature_slices().items():
        shuffled = data.head(300).copy()
        for other in settings.PARTIES:
            if other != party:
                for field in settings.PARTY_FIELDS[other]:
                    shuffled[field] = rng.permutation(shuffled[field].to_numpy())
        np.testing.assert_array_equal(float_features(shuffled)[:, start:stop], x[:, start:stop])
    # A party's preprocessor refuses another party's fields.
    applicant, bank, _ = parties_of(data.iloc[0])
    with pytest.raises(InvalidFieldError):
        preprocessors["bank"].transform({**bank, "total_income": applicant["total_income"]})


def test_invalid_values_are_refused() -> None:
    bureau = PartyPreprocessor.load_all()["credit_bureau"]
    for bad in (
        {"employed": "maybe", "years_employed": "0-2"},
        {"employed": True, "years_employed": "99"},
    ):
        with pytest.raises(InvalidFieldError):
            bureau.transform(bad)
    bank = PartyPreprocessor.load_all()["bank"]
    for bad in (-1, 10_000, float("nan"), "12"):
        with pytest.raises(InvalidFieldError):
            bank.transform({"account_age": bad})


def assert_same_up_to_float_rounding(rebuilt: object, committed: object, where: str = "") -> None:
    """Equal JSON trees, floats compared to 1e-9 relative (their last digits are machine-specific).

    numpy picks CPU-specific code paths, so a float such as a quantizer's scale can differ in its
    last digits between machines; what the model does with it (the quantized inputs, the circuit,
    the verdicts) is compared exactly by the caller.
    """
    if isinstance(committed, float) or isinstance(rebuilt, float):
        assert isinstance(rebuilt, int | float) and isinstance(committed, int | float), where
        assert math.isclose(rebuilt, committed, rel_tol=1e-9, abs_tol=1e-12), (
            f"{where}: {rebuilt!r} != {committed!r}"
        )
    elif isinstance(committed, dict):
        assert isinstance(rebuilt, dict) and rebuilt.keys() == committed.keys(), where
        for key in committed:
            assert_same_up_to_float_rounding(rebuilt[key], committed[key], f"{where}/{key}")
    elif isinstance(committed, list):
        assert isinstance(rebuilt, list) and len(rebuilt) == len(committed), where
        for index, (a, b) in enumerate(zip(rebuilt, committed, strict=True)):
            assert_same_up_to_float_rounding(a, b, f"{where}[{index}]")
    else:
        assert rebuilt == committed, f"{where}: {rebuilt!r} != {committed!r}"


def test_float_rounding_comparison_tolerates_last_digits_only() -> None:
    committed = {"scale": 0.4888309526949846, "levels": [1, 2], "name": "total_income"}
    assert_same_up_to_float_rounding({**committed, "scale": 0.48883095269498433}, committed)
    for wrong in (
        {**committed, "scale": 0.4889},
        {**committed, "levels": [1, 3]},
        {**committed, "name": "age"},
        {"scale": 0.4888309526949846, "levels": [1, 2]},
    ):
        with pytest.raises(AssertionError):
            assert_same_up_to_float_rounding(wrong, committed)


def test_committed_artifacts_match_the_pipeline(card: dict, data: pd.DataFrame) -> None:
    """A rebuild gives the committed model: same quantized inputs, same circuit, same verdicts.

    The preprocessing's floats are compared up to rounding in their last digits, which depend on
    the machine (numpy's CPU-specific code paths); everything the model computes from them is
    compared exactly.
    """
    assert card["versions"] == library_versions()
    built = build(
        data, n_bits=card["parameters"]["n_bits"], max_depth=card["parameters"]["max_depth"]
    )
    committed_spec = json.loads(settings.PREPROCESSING_PATH.read_text())
    assert_same_up_to_float_rounding(built["spec"], committed_spec, "preprocessing")
    assert_same_up_to_float_rounding(
        built["ranges"], json.loads(settings.FIELD_RANGES_PATH.read_text()), "field_ranges"
    )
    # The quantized inputs: the committed preprocessing and the rebuilt one give the same integers
    # on every row of the data.
    np.testing.assert_array_equal(circuit_rows(committed_spec, built["x"]), built["q"])
    # The circuit: the rebuilt quantized tree is the committed one, comparison for comparison.
    committed_tree = json.loads(settings.REFERENCE_TREE_PATH.read_text())
    assert built["tree"].to_json() == committed_tree
    # The verdicts on the probe set stored in the model card.
    probe = np.array(card["probe"]["rows"])
    np.testing.assert_array_equal(built["q"][built["idx_test"][: len(probe)]], probe)
    assert built["tree"].predict_clear(probe).tolist() == card["probe"]["predictions"]
    committed = QuantizedTree.from_json(committed_tree)
    assert committed.predict_clear(probe).tolist() == card["probe"]["predictions"]
    assert card["metrics"]["agreement_simulated"] == 1.0
    assert card["metrics"]["agreement_real_fhe"] == 1.0


def test_fhe_predict_and_explain_equal_the_clear_model(fhe_pair, data: pd.DataFrame) -> None:
    server, client, keys = fhe_pair
    rows = data.sample(N_REAL_ROWS, random_state=3)
    for _, row in rows.iterrows():
        applicant, bank, bureau = parties_of(row)
        q = quantized_row(applicant, bank, bureau)
        slices = QuantizedTree.from_json(json.loads(settings.REFERENCE_TREE_PATH.read_text()))
        (a0, a1), (b0, b1), (c0, c1) = (slices.party_slices[p] for p in settings.PARTIES)
        args = client.encrypt(q[a0:a1], q[b0:b1], q[c0:c1], function_name="predict")
        out = server.run(*args, evaluation_keys=keys, function_name="predict")
        assert bool(client.decrypt(out, function_name="predict")) == clear_verdict(
            applicant, bank, bureau
        )

        # explain reuses the applicant and bank ciphertexts encrypted for predict.
        pre = PartyPreprocessor.load_all()["credit_bureau"]
        candidates = np.stack(
            [
                pre.transform({"employed": True, "years_employed": y})
                for y in settings.YEARS_EMPLOYED_BINS
            ]
        )
        _, _, encrypted_candidates = client.encrypt(None, None, candidates, function_name="explain")
        out = server.run(
            args[0], args[1], encrypted_candidates, evaluation_keys=keys, function_name="explain"
        )
        verdicts = client.decrypt(out, function_name="explain").tolist()
        expected = [
            clear_verdict(applicant, bank, {"employed": True, "years_employed": y})
            for y in settings.YEARS_EMPLOYED_BINS
        ]
        assert [bool(v) for v in verdicts] == expected


def test_explain_has_a_flip_for_many_refused_applicants(data: pd.DataFrame) -> None:
    refused = []
    for _, row in data.head(400).iterrows():
        applicant, bank, bureau = parties_of(row)
        if not clear_verdict(applicant, bank, bureau):
            refused.append(clear_explain(applicant, bank, bureau))
    flipped = sum(r is not None for r in refused)
    assert len(refused) > 50
    assert flipped / len(refused) >= 0.3
