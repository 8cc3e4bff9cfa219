"""The applications the tests send: each party's raw fields, with the clear model's verdict.

- ``Profile``: one application (the applicant's, the bank's and the credit bureau's fields).
- ``BASE_PROFILE``: the application most tests send when its verdict does not matter.
- ``varied_profiles(n)``: ``n`` different applications (every field varies) whose clear verdicts
  cover both outcomes; ``refused_profile()``: the first refused one.
- ``CANDIDATE_ROWS``: the credit bureau's rows that explain evaluates (employed, each bin).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

import settings
from development.reference import clear_verdict

CANDIDATE_ROWS: list[dict[str, Any]] = [
    {"employed": True, "years_employed": years} for years in settings.YEARS_EMPLOYED_BINS
]

BASE_APPLICANT: dict[str, Any] = {
    "own_car": True,
    "own_property": False,
    "mobile_phone": True,
    "num_children": 0,
    "household_size": 2,
    "total_income": 57000.0,
    "age": 44,
    "income_type": "Working",
    "education_type": "Secondary",
    "family_status": "Married",
    "occupation_type": "Laborers",
    "housing_type": "House / apartment",
}
BASE_BANK: dict[str, Any] = {"account_age": 30}
BASE_CREDIT_BUREAU: dict[str, Any] = {"employed": True, "years_employed": "2-5"}


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


BASE_PROFILE = Profile(BASE_APPLICANT, BASE_BANK, BASE_CREDIT_BUREAU)


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
