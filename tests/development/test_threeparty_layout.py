"""The three-party mode's slot layout (Python 3.11: the derivation needs concrete).

The layout in deployment_files and the Python 3.10 suite's fixture must be exactly what
``development.threeparty_layout`` derives from the reference tree and the held-out split, and the
layout's clear evaluation (the server's arithmetic on the parties' encoded vectors, no FHE) must
give ``development.reference.clear_verdict`` on every held-out row.
"""

import json

import numpy as np
import pytest

from development import reference, threeparty_layout
from threeparty.layout import LAYOUT_PATH, Layout, load_layout


@pytest.fixture(scope="module")
def dataset():
    return threeparty_layout.held_out()


def test_committed_layout_and_fixture_equal_the_derivation(dataset):
    derived = threeparty_layout.derive(dataset)
    assert json.loads(LAYOUT_PATH.read_text()) == derived.to_json()
    committed_fixture = json.loads(threeparty_layout.FIXTURE_PATH.read_text())
    assert committed_fixture == threeparty_layout.fixture(dataset)
    assert load_layout() == Layout.from_json(derived.to_json())


def test_layout_clear_evaluation_equals_clear_verdict_on_all_held_out_rows(dataset):
    layout = load_layout()
    rows = dataset.q_test
    assert len(rows) == 6000
    verdicts = layout.clear_verdicts(layout.split_rows(rows))
    expected = threeparty_layout.clear_verdicts(dataset, range(len(rows)))
    np.testing.assert_array_equal(verdicts, expected)
    assert 0 < verdicts.mean() < 1


def test_explain_candidates_in_one_layout_evaluation_equal_clear_verdict(dataset):
    layout = load_layout()
    candidates = np.array(layout.explain_candidates["rows"])
    for position in range(20):
        parties = dataset.raw_parties(position)
        split = layout.split_rows(dataset.q_test[position])
        blocks = {
            "applicant": np.repeat(split["applicant"], len(candidates), axis=0),
            "bank": np.repeat(split["bank"], len(candidates), axis=0),
            "credit_bureau": candidates,
        }
        expected = [
            reference.clear_verdict(
                parties["applicant"], parties["bank"], {"employed": True, "years_employed": y}
            )
            for y in layout.explain_candidates["years_employed"]
        ]
        assert layout.clear_verdicts(blocks).tolist() == [int(v) for v in expected]
