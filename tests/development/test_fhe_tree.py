"""The tree compiler (development/fhe_tree.py) on small scikit-learn trees of synthetic data.

For each input encoding (quantized, 0/1, one-hot) and each matched leaf class (0 and 1), a
small tree is fitted on features that stand for Concrete ML's quantized features; the circuit
gets the quantized values as they are, the 0/1 values as raw levels and the categories as
one-hot columns. The clear evaluation must equal scikit-learn's prediction on every input the
circuit can receive, and the FHE simulation of ``predict`` and ``explain`` (concrete's
``simulate``: no keys, no encryption) must equal the clear evaluation.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

import settings
from development.fhe_tree import (
    LinearComparison,
    QuantizedTree,
    ThresholdComparison,
    comparison_from_json,
)
from development.two_lookups import find_two_lookup_form

N_BITS = 3
TOP = 2**N_BITS - 1
# Concrete ML's quantized value of each raw level of a 0/1 and of a 4-level categorical feature
# (what the tree's thresholds compare): not 0..n, so that the levels' mapping matters.
BINARY_LEVELS = [1, 6]
ONEHOT_LEVELS = [0, 2, 5, 7]
PARTIES = ("applicant", "bank", "credit_bureau")
FEATURES_PER_PARTY = (2, 1, 1)
N_ROWS = 600
SIMULATED_ROWS = 10
EXPLAIN_CANDIDATES = 3
BATCH = 4  # rows per predict_batch call


@dataclass
class Case:
    """A fitted tree and the inputs of its circuit.

    Attributes:
        tree: the compiled-to-matrices tree.
        sklearn: the fitted scikit-learn tree.
        to_model: circuit rows -> the model's feature rows (what scikit-learn sees).
        domain: every circuit row the clients can send (or a large sample of them).
    """

    tree: QuantizedTree
    sklearn: DecisionTreeClassifier
    to_model: Any
    domain: np.ndarray


def _layout(encoding: str) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Features (``from_sklearn``'s format) of one encoding: 2 applicant, 1 bank, 1 bureau."""
    features: list[dict[str, Any]] = []
    slices: dict[str, tuple[int, int]] = {}
    column = 0
    for party, count in zip(PARTIES, FEATURES_PER_PARTY, strict=True):
        start = column
        for _ in range(count):
            if encoding == "quantized":
                features.append({"encoding": "quantized", "column": column})
                column += 1
            elif encoding == "binary":
                features.append({"encoding": "binary", "column": column, "q_levels": BINARY_LEVELS})
                column += 1
            else:
                features.append({"encoding": "onehot", "column": column, "q_levels": ONEHOT_LEVELS})
                column += len(ONEHOT_LEVELS)
        slices[party] = (start, column)
    return features, slices


def _model_rows(features: list[dict[str, Any]], circuit: np.ndarray) -> np.ndarray:
    """The model's quantized feature values of circuit rows."""
    columns = []
    for feature in features:
        c = feature["column"]
        if feature["encoding"] == "quantized":
            columns.append(circuit[:, c])
        elif feature["encoding"] == "binary":
            columns.append(np.asarray(feature["q_levels"])[circuit[:, c]])
        else:
            level = np.argmax(circuit[:, c : c + len(feature["q_levels"])], axis=1)
            columns.append(np.asarray(feature["q_levels"])[level])
    return np.stack(columns, axis=1)


def _domain(features: list[dict[str, Any]]) -> np.ndarray:
    """Every circuit row the clients can send: each feature's levels, one-hot where one-hot."""
    choices = []
    for feature in features:
        if feature["encoding"] == "quantized":
            choices.append([[v] for v in range(TOP + 1)])
        elif feature["encoding"] == "binary":
            choices.append([[0], [1]])
        else:
            width = len(feature["q_levels"])
            choices.append([list(np.eye(width, dtype=np.int64)[v]) for v in range(width)])
    rows = [sum(parts, []) for parts in itertools.product(*choices)]
    return np.array(rows, dtype=np.int64)


def _labels(model_x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy rule on the model's features, true for about 30 % of the rows.

    Its trees have more leaves of one class than of the other, so the matched class (the one
    with fewer leaves) follows the labels: flipped labels give the other leaf class.
    """
    score = model_x[:, 0] + 0.7 * model_x[:, 1] - 0.5 * model_x[:, 2] + 0.4 * model_x[:, 3]
    return (score + rng.normal(0, 0.5, len(score)) > np.quantile(score, 0.7)).astype(np.int64)


def build_case(encoding: str, leaf_class: int, labels: str = "rule") -> Case:
    """Fit a small tree on random inputs of one encoding whose matched leaves are ``leaf_class``.

    With ``labels="rule"`` the labels follow a noisy rule of the inputs (a depth-4 tree; the
    labels are flipped if needed to get the leaf class asked for). With ``labels="noise"``
    85 % of the rows are of class ``1 - leaf_class`` whatever the inputs, and the leaves are
    large (50 rows at least), so that every leaf predicts that class.
    """
    features, slices = _layout(encoding)
    domain = _domain(features)
    rng = np.random.default_rng(7)
    circuit_x = domain[rng.integers(0, len(domain), N_ROWS)]
    model_x = _model_rows(features, circuit_x)
    if labels == "rule":
        y = _labels(model_x, rng)
        options: dict[str, int] = {"max_depth": 4}
    else:
        majority = 1 - leaf_class
        y = np.where(rng.random(N_ROWS) < 0.85, majority, 1 - majority)
        options = {"max_depth": 2, "min_samples_leaf": 50}
    for attempt in (y, 1 - y):
        sklearn = DecisionTreeClassifier(random_state=0, **options).fit(model_x, attempt)
        tree = QuantizedTree.from_sklearn(sklearn, features, n_bits=N_BITS, party_slices=slices)
        if tree.leaf_class == leaf_class:
            break
    assert tree.leaf_class == leaf_class, "the data did not give a tree of that leaf class"
    return Case(
        tree=tree,
        sklearn=sklearn,
        to_model=lambda rows: _model_rows(features, rows),
        domain=domain,
    )


def _split(tree: QuantizedTree, row: np.ndarray) -> list[np.ndarray]:
    return [row[..., slice(*tree.party_slices[p])] for p in PARTIES]


def _compile(tree: QuantizedTree, rows: np.ndarray, form: str = "paths") -> Any:
    """Compile the module of one form on ``rows`` (which hold every input's extremes)."""
    predict_set = [tuple(_split(tree, row)) for row in rows]
    explain_set = []
    for i, row in enumerate(rows):
        a, b, _ = _split(tree, row)
        picks = [rows[(i + k) % len(rows)] for k in range(EXPLAIN_CANDIDATES)]
        explain_set.append((a, b, np.stack([_split(tree, r)[2] for r in picks])))
    batch_set = [
        tuple(_split(tree, rows[[(i + k) % len(rows) for k in range(BATCH)]]))
        for i in range(len(rows))
    ]
    inputsets = {"predict": predict_set, "predict_batch": batch_set, "explain": explain_set}
    return tree.module(form).compile(inputsets)


def _simulation_rows(case: Case) -> np.ndarray:
    """Rows to simulate: the domain's first and last rows (extremes) and a random sample."""
    rng = np.random.default_rng(11)
    count = min(SIMULATED_ROWS, len(case.domain))
    sample = case.domain[rng.choice(len(case.domain), count, replace=False)]
    return np.concatenate([case.domain[:1], case.domain[-1:], sample])


def _check_simulation(case: Case) -> None:
    """Both forms where the tree has the two-lookup form, else the general one."""
    forms = ["paths"] + (["lookups"] if find_two_lookup_form(case.tree) is not None else [])
    for form in forms:
        _check_form(case, form)


def _check_form(case: Case, form: str) -> None:
    tree = case.tree
    rows = _simulation_rows(case)
    module = _compile(tree, rows, form)
    clear = tree.predict_clear(rows)
    simulated = [int(module.predict.simulate(*_split(tree, row))) for row in rows]
    assert simulated == clear.tolist()
    c0 = tree.party_slices["credit_bureau"][0]
    for i in range(0, len(rows), 5):
        a, b, _ = _split(tree, rows[i])
        picks = rows[[(i + k) % len(rows) for k in range(EXPLAIN_CANDIDATES)]]
        candidates = np.stack([_split(tree, r)[2] for r in picks])
        verdicts = np.asarray(module.explain.simulate(a, b, candidates)).reshape(-1)
        joined = np.stack([np.concatenate([rows[i][:c0], c]) for c in candidates])
        assert verdicts.tolist() == tree.predict_clear(joined).tolist()
    for i in range(0, len(rows), BATCH):
        batch = rows[[(i + k) % len(rows) for k in range(BATCH)]]
        verdicts = np.asarray(module.predict_batch.simulate(*_split(tree, batch))).reshape(-1)
        assert verdicts.tolist() == tree.predict_clear(batch).tolist()


ENCODINGS = ("quantized", "binary", "onehot")


@pytest.mark.parametrize("leaf_class", [0, 1])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_clear_evaluation_equals_sklearn_on_every_input(encoding: str, leaf_class: int) -> None:
    case = build_case(encoding, leaf_class)
    assert len(case.tree.leaf_paths) >= 2  # a real tree, not a constant
    expected = case.sklearn.predict(case.to_model(case.domain))
    assert set(expected.tolist()) == {0, 1}
    np.testing.assert_array_equal(case.tree.predict_clear(case.domain), expected)
    kinds = {type(c) for c in case.tree.comparisons}
    assert kinds == ({ThresholdComparison} if encoding == "quantized" else {LinearComparison})


@pytest.mark.slow
@pytest.mark.parametrize("leaf_class", [0, 1])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_simulation_equals_clear_evaluation(encoding: str, leaf_class: int) -> None:
    # quantized: bootstrapped comparisons on the candidates too (explain's candidate branch);
    # binary and one-hot: no bootstrapped comparison at all (only the path matching).
    _check_simulation(build_case(encoding, leaf_class))


@pytest.mark.slow
@pytest.mark.parametrize("leaf_class", [0, 1])
def test_a_tree_with_one_class_of_leaves(leaf_class: int) -> None:
    # Every leaf predicts 1 - leaf_class: siblings merge up to the root, whose one leaf has an
    # empty path; the matched class has no leaf at all (the empty slot that is never reached).
    case = build_case("quantized", leaf_class, labels="noise")
    tree = case.tree
    assert tree.leaf_paths == [] and tree.comparisons == []
    expected = case.sklearn.predict(case.to_model(case.domain))
    assert set(expected.tolist()) == {1 - leaf_class}
    np.testing.assert_array_equal(tree.predict_clear(case.domain), expected)
    _check_simulation(case)


@pytest.mark.slow
def test_mixed_encodings_like_the_deployed_model() -> None:
    features = [
        {"encoding": "quantized", "column": 0},
        {"encoding": "binary", "column": 1, "q_levels": BINARY_LEVELS},
        {"encoding": "quantized", "column": 2},
        {"encoding": "onehot", "column": 3, "q_levels": ONEHOT_LEVELS},
    ]
    slices = {"applicant": (0, 2), "bank": (2, 3), "credit_bureau": (3, 7)}
    domain = _domain(features)
    rng = np.random.default_rng(5)
    model_x = _model_rows(features, domain)
    y = _labels(model_x, rng)
    sklearn = DecisionTreeClassifier(max_depth=5, random_state=0).fit(model_x, y)
    tree = QuantizedTree.from_sklearn(sklearn, features, n_bits=N_BITS, party_slices=slices)
    assert {type(c) for c in tree.comparisons} == {ThresholdComparison, LinearComparison}
    np.testing.assert_array_equal(tree.predict_clear(domain), sklearn.predict(model_x))
    _check_simulation(Case(tree, sklearn, lambda rows: _model_rows(features, rows), domain))


def test_json_keeps_the_reference_format() -> None:
    text = settings.REFERENCE_TREE_PATH.read_text(encoding="utf-8")
    data = json.loads(text)
    tree = QuantizedTree.from_json(data)
    assert all(isinstance(c, ThresholdComparison | LinearComparison) for c in tree.comparisons)
    assert json.dumps(tree.to_json(), indent=1) + "\n" == text
    assert QuantizedTree.from_json(json.loads(json.dumps(tree.to_json()))) == tree
    with pytest.raises(ValueError, match="not a comparison"):
        comparison_from_json({"column": 1, "weights": []})


def test_integer_inputs_make_fractional_thresholds_whole() -> None:
    # scikit-learn splits between integers (x <= 2.5): the circuit compares x <= 2.
    x = np.array([[0], [1], [2], [3], [4], [5]])
    y = np.array([0, 0, 0, 1, 1, 1])
    sklearn = DecisionTreeClassifier(max_depth=1).fit(x, y)
    features = [{"encoding": "quantized", "column": 0}]
    slices = {"applicant": (0, 1), "bank": (1, 1), "credit_bureau": (1, 1)}
    tree = QuantizedTree.from_sklearn(sklearn, features, n_bits=N_BITS, party_slices=slices)
    assert tree.comparisons == [ThresholdComparison(column=0, threshold=2)]
    assert tree.predict_clear(np.arange(TOP + 1)[:, None]).tolist() == [0, 0, 0] + [1] * 5
