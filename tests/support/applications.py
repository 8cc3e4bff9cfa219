"""The applications the tests send: each party's raw fields, with the clear model's verdict.

- ``Profile``: one application (the applicant's, the bank's and the credit bureau's fields).
- ``EXAMPLE_PROFILE``: the example application of ``contracts.examples`` (the one the party
  programs and the benchmarks use), which the tests send when its verdict does not matter;
  ``page_values`` gives an applicant's fields as the page's Step 2.1 holds them.
- ``varied_profiles(n)``: ``n`` different applications (every field varies) whose clear verdicts
  cover both outcomes; ``refused_profile()``: the first refused one.
- ``CANDIDATE_ROWS``: the credit bureau's rows that explain evaluates (employed, each bin).
- Applications a test needs for what the clear tree does with them, each named for it:
  ``VERDICT_PROFILES`` (the server contract's), ``DATA_PROFILES`` (rows of the data set) and
  ``NEW_USER_PROFILE`` (issue 20's applicant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

import settings
from contracts.examples import EXAMPLE_FIELDS
from development.reference import clear_verdict

CANDIDATE_ROWS: list[dict[str, Any]] = [
    {"employed": True, "years_employed": years} for years in settings.YEARS_EMPLOYED_BINS
]


@dataclass(frozen=True)
class Profile:
    """One application: each party's raw fields."""

    applicant: dict[str, Any]
    bank: dict[str, Any]
    credit_bureau: dict[str, Any]

    def parts(self) -> dict[str, dict[str, Any]]:
        """The fields by party name."""
        return {"applicant": self.applicant, "bank": self.bank, "credit_bureau": self.credit_bureau}

    def verdict(self) -> bool:
        """The clear model's verdict (development.reference)."""
        return clear_verdict(self.applicant, self.bank, self.credit_bureau)


EXAMPLE_PROFILE = Profile(**{party: dict(fields) for party, fields in EXAMPLE_FIELDS.items()})
"""The example application (``contracts.examples``); the clear tree refuses it (not employed)."""


VERDICT_PROFILES = [
    EXAMPLE_PROFILE,
    Profile(
        {**EXAMPLE_PROFILE.applicant, "total_income": 150000.0},
        EXAMPLE_PROFILE.bank,
        {"employed": True, "years_employed": "2-5"},
    ),
    Profile(
        EXAMPLE_PROFILE.applicant,
        EXAMPLE_PROFILE.bank,
        {"employed": True, "years_employed": "11-18"},
    ),
]
"""The server contract's applications, whose verdicts differ: the example (refused: not
employed), the same with a higher income employed 2-5 years, and the same employed 11-18 years
(both approved). The first and the last differ in the credit bureau's input only, so replacing
that one input changes the verdict, and the first's explain candidates have both outcomes."""


def page_values(applicant: dict[str, Any]) -> tuple[Any, ...]:
    """An applicant's fields as the page's Step 2.1 components hold them, in their order.

    The three yes/no fields are one list of the ticked ones; the others follow as they are.
    """
    assets = [field for field in settings.APPLICANT_FIELDS[:3] if applicant[field]]
    return (assets, *(applicant[field] for field in settings.APPLICANT_FIELDS[3:]))


def varied_profiles(count: int, seed: int = 7) -> list[Profile]:
    """Return ``count`` distinct applications (the same list for the same seed).

    Every field varies from one profile to the next. With seed 7, the first 20 profiles have 16
    approvals and 4 refusals (the first refusal is at index 11).
    """
    rng = np.random.default_rng(seed)
    choices = settings.CATEGORY_VALUES
    profiles: list[Profile] = []
    seen: set[str] = set()
    while len(profiles) < count:
        applicant = {
            "own_car": bool(rng.integers(2)),
            "own_property": bool(rng.integers(2)),
            "mobile_phone": bool(rng.integers(2)),
            "num_children": int(rng.integers(0, 4)),
            "household_size": int(rng.integers(1, 6)),
            "total_income": float(rng.integers(12, 300) * 1000),
            "age": int(rng.integers(21, 68)),
            "income_type": str(rng.choice(choices["income_type"])),
            "education_type": str(rng.choice(choices["education_type"])),
            "family_status": str(rng.choice(choices["family_status"])),
            "occupation_type": str(rng.choice(choices["occupation_type"])),
            "housing_type": str(rng.choice(choices["housing_type"])),
        }
        applicant["household_size"] = max(applicant["household_size"], applicant["num_children"])
        profile = Profile(
            applicant=applicant,
            bank={"account_age": int(rng.integers(0, 61))},
            credit_bureau={
                "employed": bool(rng.random() < 0.85),
                "years_employed": str(rng.choice(settings.YEARS_EMPLOYED_BINS)),
            },
        )
        key = json.dumps(profile.parts(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            profiles.append(profile)
    return profiles


def refused_profile() -> Profile:
    """A varied profile whose clear verdict is a refusal (explain then runs on the server)."""
    return next(profile for profile in varied_profiles(20) if not profile.verdict())


# Rows of data/applications.csv named for what the clear tree does with them, with the verdict
# and the explanation it gives (found by searching the data with development/reference.py).
# tests/client/test_backend.py checks first that the clear reference still agrees, so a
# retrained model that changes them fails loudly there (search again then).
DATA_PROFILES: dict[str, dict[str, Any]] = {
    # data row 1: approved as sent.
    "approved": {
        "applicant": {
            "own_car": False,
            "own_property": True,
            "mobile_phone": True,
            "num_children": 0,
            "household_size": 2,
            "total_income": 82000.0,
            "age": 58,
            "income_type": "Working",
            "education_type": "Higher education",
            "family_status": "Married",
            "occupation_type": "Core staff",
            "housing_type": "House / apartment",
        },
        "bank": {"account_age": 19},
        "credit_bureau": {"employed": True, "years_employed": "11-18"},
        "verdict": True,
        "explain": "11-18",
    },
    # data row 2: refused (unemployed, 0-2 years); employed with 8-11 years flips it.
    "refused_flippable": {
        "applicant": {
            "own_car": False,
            "own_property": False,
            "mobile_phone": True,
            "num_children": 0,
            "household_size": 2,
            "total_income": 45000.0,
            "age": 52,
            "income_type": "Working",
            "education_type": "Incomplete higher",
            "family_status": "Married",
            "occupation_type": "Waiters/barmen staff",
            "housing_type": "House / apartment",
        },
        "bank": {"account_age": 49},
        "credit_bureau": {"employed": False, "years_employed": "0-2"},
        "verdict": False,
        "explain": "8-11",
    },
    # data row 0: refused (employed, 5-8 years), and no years-employed bin changes it.
    "refused_unflippable": {
        "applicant": {
            "own_car": False,
            "own_property": False,
            "mobile_phone": True,
            "num_children": 0,
            "household_size": 1,
            "total_income": 29000.0,
            "age": 25,
            "income_type": "Working",
            "education_type": "Incomplete higher",
            "family_status": "Single",
            "occupation_type": "Sales staff",
            "housing_type": "House / apartment",
        },
        "bank": {"account_age": 55},
        "credit_bureau": {"employed": True, "years_employed": "5-8"},
        "verdict": False,
        "explain": None,
    },
    # data row 3: refused as unemployed; employed with the same bin (2-5) would be approved.
    "refused_unemployed": {
        "applicant": {
            "own_car": False,
            "own_property": True,
            "mobile_phone": True,
            "num_children": 0,
            "household_size": 2,
            "total_income": 76000.0,
            "age": 42,
            "income_type": "Pensioner",
            "education_type": "Secondary",
            "family_status": "Married",
            "occupation_type": "Sales staff",
            "housing_type": "With parents",
        },
        "bank": {"account_age": 47},
        "credit_bureau": {"employed": False, "years_employed": "2-5"},
        "verdict": False,
        "explain": "2-5",
    },
}


_PAGE_DEFAULTS = settings.field_ranges()
NEW_USER_PROFILE = Profile(
    applicant={
        "own_car": False,
        "own_property": False,
        "mobile_phone": False,
        "num_children": _PAGE_DEFAULTS["num_children"]["value"],
        "household_size": _PAGE_DEFAULTS["household_size"]["value"],
        "total_income": 76000,
        "age": 42,
        "income_type": "Pensioner",
        **{field: settings.CATEGORY_VALUES[field][0] for field in settings.APPLICANT_FIELDS[8:]},
    },
    bank={"account_age": 47},
    credit_bureau={"employed": False, "years_employed": "2-5"},
)
"""Issue 20's refused unemployed applicant as the page shows it: the fields the issue names
(income 76000, age 42, a pensioner, bank 47, not employed, 2-5 years), the page's defaults for
the others (tests/page/test_browser_newuser.py enters only the named ones)."""
