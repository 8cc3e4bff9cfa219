"""The two-lookup form (development/two_lookups.py): found only where it is exact, on every input.

The clear tests need no keys: the form's verdicts must equal the tree's on the whole input
domain. The simulation test compiles the deployed tree's module in that form and simulates it
on every input (concrete's ``simulate``: no keys, no encryption).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import settings
from development.fhe_tree import LinearComparison, QuantizedTree, ThresholdComparison
from development.two_lookups import (
    MAX_LOOKUP_BITS,
    domain_rows,
    find_two_lookup_form,
    tree_variables,
)

SLICES = {"applicant": (0, 1), "bank": (1, 1), "credit_bureau": (1, 8)}


def deployed_tree() -> QuantizedTree:
    """The deployed model's tree (development/artifacts/reference_tree.json)."""
    return QuantizedTree.from_json(json.loads(settings.REFERENCE_TREE_PATH.read_text()))


def small_tree(leaf_paths: list[list[tuple[int, int]]], leaf_class: int = 1) -> QuantizedTree:
    """A tree on a quantized applicant input (column 0), a 0/1 input (1), a one-hot of 6 (2-7).

    Comparisons: 0: x0 <= 3; 1: x1 is 0 (1 - x1); 2: the one-hot's state is 0 or 1; 3: x0 <= 5.
    """
    comparisons = [
        ThresholdComparison(column=0, threshold=3),
        LinearComparison(weights=((1, -1),), constant=1),
        LinearComparison(weights=((2, 1), (3, 1)), constant=0),
        ThresholdComparison(column=0, threshold=5),
    ]
    return QuantizedTree(
        comparisons=comparisons,
        leaf_class=leaf_class,
        leaf_paths=leaf_paths,
        n_columns=8,
        column_max=[7, 1, 1, 1, 1, 1, 1, 1],
        n_bits=3,
        party_slices=SLICES,
        onehot_groups=[(2, 8)],
    )


def everywhere(tree: QuantizedTree) -> np.ndarray:
    """Every input row of the tree's variables."""
    return domain_rows(tree, tree_variables(tree))


def test_the_deployed_tree_is_two_lookups_of_four_bits_exact_on_every_input() -> None:
    tree = deployed_tree()
    form = find_two_lookup_form(tree)
    assert form is not None and form.lookups == 2
    rows = everywhere(tree)
    assert len(rows) == 8 * 2 * 6  # the quantized input, employed, the years-employed bin
    np.testing.assert_array_equal(form.verdicts(rows), tree.predict_clear(rows))
    assert len(form.table) <= 2**MAX_LOOKUP_BITS and 2 * form.threshold <= 2**MAX_LOOKUP_BITS
    assert set(tree.predict_clear(rows).tolist()) == {0, 1}


def test_nested_approvals_give_two_lookups() -> None:
    # Approve when x0 > 5; or 3 < x0 <= 5 and the one-hot state is 0 or 1; or 3 < x0 <= 5, any
    # other state and x1 = 1. The approved states, for each (x0, x1), are nested.
    tree = small_tree(
        [
            [(0, -1), (3, -1)],
            [(0, -1), (3, 1), (2, 1)],
            [(0, -1), (3, 1), (2, -1), (1, -1)],
        ]
    )
    form = find_two_lookup_form(tree)
    rows = everywhere(tree)
    assert form is not None and form.lookups == 2
    assert set(tree.predict_clear(rows).tolist()) == {0, 1}
    np.testing.assert_array_equal(form.verdicts(rows), tree.predict_clear(rows))


def test_a_tree_of_few_inputs_is_one_lookup() -> None:
    # Only x0 and x1 are read (16 values together): one lookup on their packed value.
    tree = small_tree([[(0, 1), (1, 1)], [(0, -1), (1, -1)]])
    form = find_two_lookup_form(tree)
    assert form is not None and form.lookups == 1
    rows = everywhere(tree)
    np.testing.assert_array_equal(form.verdicts(rows), tree.predict_clear(rows))


def test_no_form_when_the_approved_sets_cross_or_the_lookup_is_too_wide() -> None:
    # x0 <= 3 approves the one-hot states 0-1, x0 > 3 the others: not nested, and x0 with the
    # one-hot (48 values) is too wide for one lookup.
    crossing = small_tree([[(0, 1), (2, 1)], [(0, -1), (2, -1)]])
    assert find_two_lookup_form(crossing) is None
    # Two quantized inputs (64 values) and no 0/1 or one-hot input: too wide.
    wide = QuantizedTree(
        comparisons=[ThresholdComparison(0, 3), ThresholdComparison(1, 4)],
        leaf_class=1,
        leaf_paths=[[(0, 1), (1, 1)]],
        n_columns=2,
        column_max=[7, 7],
        n_bits=3,
        party_slices={"applicant": (0, 1), "bank": (1, 2), "credit_bureau": (2, 2)},
    )
    assert find_two_lookup_form(wide) is None
    with pytest.raises(ValueError, match="two-lookup form"):
        wide.module("lookups")
    # Twelve 6-bit inputs: refused by their count of values, before any packing (2**72 values
    # would overflow the packing weights).
    many = QuantizedTree(
        comparisons=[ThresholdComparison(c, 30) for c in range(12)],
        leaf_class=1,
        leaf_paths=[[(c, 1) for c in range(12)]],
        n_columns=12,
        column_max=[63] * 12,
        n_bits=6,
        party_slices={"applicant": (0, 12), "bank": (12, 12), "credit_bureau": (12, 12)},
    )
    assert find_two_lookup_form(many) is None


@pytest.mark.slow
def test_the_deployed_module_simulates_the_tree_on_every_input() -> None:
    tree = deployed_tree()
    rows = everywhere(tree)
    slices = tree.party_slices

    def split(matrix: np.ndarray) -> list[np.ndarray]:
        return [matrix[..., slice(*slices[p])] for p in settings.PARTIES]

    batch = 16
    batches = [rows[(np.arange(batch) + i) % len(rows)] for i in range(0, len(rows), batch)]
    c0 = slices["credit_bureau"][0]
    explain_set = [(*split(row)[:2], rows[i : i + 6, c0:]) for i, row in enumerate(rows[:-6])]
    module = tree.module("lookups").compile(
        {
            "predict": [tuple(split(row)) for row in rows],
            "predict_batch": [tuple(split(b)) for b in batches],
            "explain": explain_set,
        }
    )
    assert module.predict.programmable_bootstrap_count == 2
    assert module.predict_batch.programmable_bootstrap_count == 2 * batch
    clear = tree.predict_clear(rows)
    simulated = [int(module.predict.simulate(*split(row))) for row in rows]
    assert simulated == clear.tolist()
    for b in batches:
        verdicts = np.asarray(module.predict_batch.simulate(*split(b))).reshape(-1)
        assert verdicts.tolist() == tree.predict_clear(b).tolist()
    for i in range(0, len(rows) - 6, 7):
        applicant, bank, _ = split(rows[i])
        candidates = rows[i + 1 : i + 7, c0:]
        verdicts = np.asarray(module.explain.simulate(applicant, bank, candidates)).reshape(-1)
        joined = np.concatenate([np.repeat(rows[i : i + 1, :c0], 6, axis=0), candidates], axis=1)
        assert verdicts.tolist() == tree.predict_clear(joined).tolist()
