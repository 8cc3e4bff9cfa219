"""One example application: each party's fields, shared by the programs, benchmarks and tests.

The party programs' documentation, the three-party benchmark and flow tests, and the decision
profile all use it, so that a field renamed in ``contracts.parties`` is renamed here once.
"""

from __future__ import annotations

from typing import Any

EXAMPLE_APPLICANT: dict[str, Any] = {
    "own_car": False,
    "own_property": True,
    "mobile_phone": True,
    "num_children": 1,
    "household_size": 3,
    "total_income": 90000,
    "age": 38,
    "income_type": "Commercial associate",
    "education_type": "Higher education",
    "family_status": "Married",
    "occupation_type": "Managers",
    "housing_type": "House / apartment",
}
"""An applicant's fields."""

EXAMPLE_FIELDS: dict[str, dict[str, Any]] = {
    "applicant": EXAMPLE_APPLICANT,
    "bank": {"account_age": 12},
    "credit_bureau": {"employed": False, "years_employed": "0-2"},
}
"""Each party's fields of the example application (the clear tree refuses it: not employed)."""
