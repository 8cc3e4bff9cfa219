"""Build the three-party mode's public slot layout and its test fixture (Python 3.11, concrete).

Run from the repository root (``development.train`` also calls it)::

    python -m development.threeparty_layout

1. derive the layout (``threeparty.layout.Layout.from_tree``) from the development-only quantized
   tree (development/artifacts/reference_tree.json), with the credit bureau's explain candidate
   rows (employed, each years-employed bin, through its own preprocessing) and a known-answer
   probe (the first held-out rows with their clear verdicts), and write
   deployment_files/threeparty_layout.json;
2. write tests/threeparty/data/heldout_rows.json for the Python 3.10 suite, which cannot import
   concrete: held-out circuit rows with ``development.reference.clear_verdict``'s verdicts, and
   for a few applications the clear verdicts of every explain candidate.

The held-out rows are those of ``development.train.build`` on data/applications.csv (the same
split as the model report); the rebuilt tree must equal the reference tree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import settings
from backend import PartyPreprocessor
from development import reference
from development.benchmark.dataset import Dataset, load_dataset
from threeparty.layout import LAYOUT_PATH, Layout

FIXTURE_PATH = settings.REPO_DIR / "tests" / "threeparty" / "data" / "heldout_rows.json"
N_PROBE = 16
N_FIXTURE_ROWS = 256
N_EXPLAIN_APPLICATIONS = 8


def explain_candidates() -> dict[str, Any]:
    """The credit bureau's candidate rows for explain: employed, one per years-employed bin."""
    bureau = PartyPreprocessor.load_all()["credit_bureau"]
    bins = list(settings.YEARS_EMPLOYED_BINS)
    rows = [
        bureau.transform({"employed": True, "years_employed": years}).tolist() for years in bins
    ]
    return {"years_employed": bins, "rows": [[int(v) for v in row] for row in rows]}


def held_out() -> Dataset:
    """The held-out split of ``development.train.build`` on data/applications.csv.

    Raises:
        RuntimeError: when the rebuilt tree differs from the reference tree.
    """
    return load_dataset(json.loads(settings.MODEL_CARD_PATH.read_text(encoding="utf-8")))


def clear_verdicts(dataset: Dataset, positions: range) -> list[int]:
    """``development.reference.clear_verdict`` of held-out rows (from their raw fields)."""
    return [int(reference.clear_verdict(**dataset.raw_parties(i))) for i in positions]


def derive(dataset: Dataset) -> Layout:
    """The layout of the reference tree, with explain candidates and a known-answer probe."""
    tree = json.loads(settings.REFERENCE_TREE_PATH.read_text())
    probe = {
        "rows": [[int(v) for v in row] for row in dataset.q_test[:N_PROBE]],
        "verdicts": clear_verdicts(dataset, range(N_PROBE)),
    }
    assert len(set(probe["verdicts"])) == 2, "the probe must hold both verdicts"
    return Layout.from_tree(tree, explain_candidates=explain_candidates(), probe=probe)


def fixture(dataset: Dataset) -> dict[str, Any]:
    """Held-out rows and clear verdicts for the Python 3.10 suite (see the module docstring)."""
    refused = [i for i in range(len(dataset.q_test)) if dataset.y_quant[i] == 0]
    explain = []
    for position in refused[:N_EXPLAIN_APPLICATIONS]:
        parties = dataset.raw_parties(position)
        verdicts = [
            int(
                reference.clear_verdict(
                    parties["applicant"],
                    parties["bank"],
                    {"employed": True, "years_employed": years},
                )
            )
            for years in settings.YEARS_EMPLOYED_BINS
        ]
        explain.append({"position": position, "candidate_verdicts": verdicts})
    return {
        "provenance": (
            "python -m development.threeparty_layout: the first held-out rows of "
            "development.train.build on data/applications.csv (circuit order), their verdicts "
            "by development.reference.clear_verdict on the raw fields; explain: refused rows, "
            "clear_verdict with the credit bureau's fields set to employed and each bin"
        ),
        "rows": [[int(v) for v in row] for row in dataset.q_test[:N_FIXTURE_ROWS]],
        "verdicts": clear_verdicts(dataset, range(N_FIXTURE_ROWS)),
        "explain": explain,
    }


def main(layout_path: Path = LAYOUT_PATH, fixture_path: Path = FIXTURE_PATH) -> Layout:
    """Write the layout and the fixture; return the layout."""
    dataset = held_out()
    layout = derive(dataset)
    layout_path.write_text(json.dumps(layout.to_json(), indent=1) + "\n", encoding="utf-8")
    fixture_path.parent.mkdir(parents=True, exist_ok=True)
    fixture_path.write_text(json.dumps(fixture(dataset)) + "\n", encoding="utf-8")
    matched = np.array_equal(
        layout.clear_verdicts(layout.split_rows(dataset.q_test)), dataset.y_quant
    )
    print(f"wrote {layout_path} and {fixture_path}; layout == clear tree on held-out: {matched}")
    return layout


if __name__ == "__main__":
    main()
