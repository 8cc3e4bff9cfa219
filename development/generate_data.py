"""Seeded generator of the synthetic credit-card applications the model is trained on.

Every row is an application split among the three parties that own its fields (applicant, bank,
credit bureau) plus the label ``approved``. The label comes from the rules written in
``data/README.md``: a logistic score with noise in which more years employed, being employed,
higher income, a longer account history and owned assets raise the odds of approval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from settings import (
    EDUCATION_TYPES,
    FAMILY_STATUS,
    HOUSING_TYPES,
    INCOME_TYPES,
    OCCUPATION_TYPES,
    YEARS_EMPLOYED_BINS,
)

# Weight of each rule in the approval score (log-odds). Written out in data/README.md.
RULES = {
    "intercept": -3.4,
    "per_years_employed_bin": 0.75,
    "employed": 1.2,
    "per_log2_income_over_60k": 2.0,
    "per_year_of_account_age": 0.16,
    "own_car": 0.35,
    "own_property": 0.6,
    "mobile_phone": 0.1,
    "per_child_beyond_two": -0.35,
    "higher_education": 0.3,
    "student": -2.0,
    "noise_sd": 0.6,
}


def _choice(
    rng: np.random.Generator, values: list[str], weights: list[float], n: int
) -> np.ndarray:
    probabilities = np.asarray(weights, dtype=float)
    return rng.choice(
        np.asarray(values, dtype=object), size=n, p=probabilities / probabilities.sum()
    )


def generate(n_rows: int, seed: int) -> pd.DataFrame:
    """Generate ``n_rows`` synthetic applications with a fixed seed.

    Args:
        n_rows: number of applications.
        seed: seed of the random generator; the same seed gives the same frame.

    Returns:
        A frame with the applicant, bank and credit-bureau fields and the ``approved`` label.
    """
    rng = np.random.default_rng(seed)
    n = n_rows

    age = rng.integers(21, 69, size=n)
    income_type = _choice(rng, INCOME_TYPES, [52, 23, 17, 7, 1], n)
    income_type = np.where(
        age >= 60, np.where(rng.random(n) < 0.7, "Pensioner", income_type), income_type
    )
    income_type = np.where((age < 26) & (rng.random(n) < 0.15), "Student", income_type)
    education_type = _choice(rng, EDUCATION_TYPES, [68, 4, 25, 2, 1], n)
    family_status = _choice(rng, FAMILY_STATUS, [68, 13, 8, 6, 5], n)
    occupation_type = _choice(
        rng, OCCUPATION_TYPES, [17, 10, 10, 9, 6, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 2], n
    )
    housing_type = _choice(rng, HOUSING_TYPES, [86, 5, 3, 2, 2, 2], n)

    partnered = np.isin(family_status, ["Married", "Civil marriage"])
    num_children = np.minimum(rng.poisson(0.45, size=n), 5)
    household_size = np.minimum(
        1 + partnered.astype(int) + num_children + (rng.random(n) < 0.05), 8
    )

    base_income = rng.lognormal(mean=np.log(60_000), sigma=0.45, size=n)
    base_income *= np.where(education_type == "Higher education", 1.3, 1.0)
    base_income *= np.where(education_type == "Academic degree", 1.5, 1.0)
    base_income *= np.where(income_type == "Pensioner", 0.7, 1.0)
    base_income *= np.where(income_type == "Student", 0.4, 1.0)
    total_income = np.clip(np.round(base_income / 500) * 500, 12_000, 400_000)

    own_car = rng.random(n) < 0.38
    own_property = rng.random(n) < np.clip(0.35 + (age - 21) / 100, 0, 0.9)
    mobile_phone = rng.random(n) < 0.9

    account_age = np.minimum(rng.integers(0, 61, size=n), (age - 18) * 12)

    employed = np.where(income_type == "Pensioner", rng.random(n) < 0.1, rng.random(n) < 0.85)
    max_bin = np.clip(np.searchsorted([2, 5, 8, 11, 18], age - 20, side="right"), 0, 5)
    years_bin = np.minimum(rng.integers(0, 6, size=n), max_bin)
    years_employed = np.asarray(YEARS_EMPLOYED_BINS, dtype=object)[years_bin]

    score = (
        RULES["intercept"]
        + RULES["per_years_employed_bin"] * years_bin
        + RULES["employed"] * employed
        + RULES["per_log2_income_over_60k"] * np.log2(total_income / 60_000)
        + RULES["per_year_of_account_age"] * account_age / 12
        + RULES["own_car"] * own_car
        + RULES["own_property"] * own_property
        + RULES["mobile_phone"] * mobile_phone
        + RULES["per_child_beyond_two"] * np.maximum(num_children - 2, 0)
        + RULES["higher_education"]
        * np.isin(education_type, ["Higher education", "Academic degree"])
        + RULES["student"] * (income_type == "Student")
        + rng.normal(0, RULES["noise_sd"], size=n)
    )
    approved = (rng.random(n) < 1 / (1 + np.exp(-3 * score))).astype(int)

    return pd.DataFrame(
        {
            "own_car": own_car,
            "own_property": own_property,
            "mobile_phone": mobile_phone,
            "num_children": num_children.astype(int),
            "household_size": household_size.astype(int),
            "total_income": total_income.astype(float),
            "age": age.astype(int),
            "income_type": income_type.astype(str),
            "education_type": education_type.astype(str),
            "family_status": family_status.astype(str),
            "occupation_type": occupation_type.astype(str),
            "housing_type": housing_type.astype(str),
            "account_age": account_age.astype(int),
            "employed": employed,
            "years_employed": years_employed.astype(str),
            "approved": approved,
        }
    )
