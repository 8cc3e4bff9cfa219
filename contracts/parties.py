"""The parties of an application, the result's recipients and the fields each party holds."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):  # noqa: UP042 (enum.StrEnum is Python 3.11+)
    """``enum.StrEnum`` that also runs on Python 3.10, the three-party party program's interpreter.

    A member is its value as a string, in ``str()`` and in formatting.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Party(StrEnum):
    """The parties, in the circuit's argument order and the three-party key-generation order."""

    applicant = "applicant"
    bank = "bank"
    credit_bureau = "credit_bureau"


PARTIES: tuple[str, ...] = tuple(party.value for party in Party)
"""("applicant", "bank", "credit_bureau"): the order of the circuit's inputs and of key chains."""

LEAD: str = PARTIES[0]
"""The party that starts the three-party key chain and sends the key-confirmation challenge."""

RECIPIENTS: tuple[str, ...] = (Party.applicant.value, Party.bank.value)
"""Who learns the verdict in the three-party mode (the bank decides); each tags the evaluation."""

APPLICANT_FIELDS: tuple[str, ...] = (
    "own_car",
    "own_property",
    "mobile_phone",
    "num_children",
    "household_size",
    "total_income",
    "age",
    "income_type",
    "education_type",
    "family_status",
    "occupation_type",
    "housing_type",
)
BANK_FIELDS: tuple[str, ...] = ("account_age",)
CREDIT_BUREAU_FIELDS: tuple[str, ...] = ("employed", "years_employed")
PARTY_FIELDS: dict[str, tuple[str, ...]] = {
    Party.applicant.value: APPLICANT_FIELDS,
    Party.bank.value: BANK_FIELDS,
    Party.credit_bureau.value: CREDIT_BUREAU_FIELDS,
}
"""Each party's raw fields: what it alone knows and sends (preprocessed and encrypted)."""

BOOLEAN_FIELDS: tuple[str, ...] = ("own_car", "own_property", "mobile_phone", "employed")
