"""Marginals of the data and the explain flip share: ``python -m development.data_report``.

Prints the approval rate by value of each field (the figures in data/README.md) and, for a sample
of 3,000 rows, how many applications the deployed quantized tree refuses and how many of those
some higher years-employed bin (with employed = yes) turns into an approval.
"""

from __future__ import annotations

import pandas as pd

import settings
from development.reference import clear_explain, clear_verdict

FIELDS = (
    "years_employed",
    "employed",
    "own_car",
    "own_property",
    "mobile_phone",
    "income_type",
    "education_type",
    "family_status",
    "housing_type",
    "num_children",
)


def parties_of(row: pd.Series) -> tuple[dict, dict, dict]:
    """Split a data row into the applicant's, bank's and credit bureau's raw fields."""
    fields = {
        party: {n: row[n].item() if hasattr(row[n], "item") else row[n] for n in names}
        for party, names in settings.PARTY_FIELDS.items()
    }
    return fields["applicant"], fields["bank"], fields["credit_bureau"]


def main() -> None:
    """Print the marginals and the flip share."""
    data = pd.read_csv(settings.DATA_PATH)
    print("rows", len(data), "approval", round(data.approved.mean(), 3))
    for field in FIELDS:
        rates = data.groupby(field).approved.agg(["mean", "size"])
        if field == "years_employed":
            rates = rates.loc[settings.YEARS_EMPLOYED_BINS]
        print(
            field,
            "; ".join(f"{i}: {r['mean']:.2f} (n={int(r['size'])})" for i, r in rates.iterrows()),
        )
    quartiles = data.groupby(pd.qcut(data.total_income, 4)).approved.mean()
    print("income quartile", "; ".join(f"{i}: {v:.2f}" for i, v in quartiles.items()))
    months = data.groupby(pd.cut(data.account_age, [-1, 12, 24, 36, 48, 60])).approved.mean()
    print("account_age", "; ".join(f"{i}: {v:.2f}" for i, v in months.items()))
    refused = flipped = 0
    for _, row in data.sample(3000, random_state=0).iterrows():
        applicant, bank, bureau = parties_of(row)
        if not clear_verdict(applicant, bank, bureau):
            refused += 1
            flipped += clear_explain(applicant, bank, bureau) is not None
    print("model-refused", refused, "flippable", flipped, round(flipped / refused, 3))


if __name__ == "__main__":
    main()
