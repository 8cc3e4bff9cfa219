"""The explain step's answer for one application: what would most likely change a refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fhe_client.client import CreditScoringClient


@dataclass(frozen=True)
class Explanation:
    """What the explain step found.

    Attributes:
        outcome: "already_approved" (no FHE run), "years_needed" (``years_employed`` is the
            fewest bin, with employed = yes, that would most likely lead to approval) or
            "no_change" (no years-employed bin alone changes the outcome).
        years_employed: the bin for "years_needed" (the sent bin for "already_approved").
        fhe_execution_time: the server's FHE time of the explain run (None if none ran).
    """

    outcome: Literal["already_approved", "years_needed", "no_change"]
    years_employed: str | None
    fhe_execution_time: float | None


def explain_application(client: CreditScoringClient) -> Explanation:
    """Explain the client's decrypted verdict (``CreditScoringClient.explain``).

    Encrypts the six candidate rows, scores them in one FHE run and decrypts the answer; no FHE
    run when the verdict is already approval.

    Args:
        client: a client whose verdict is decrypted.

    Raises:
        StepOrderError: if the verdict has not been decrypted since the inputs were sent.
        ServerError: (a subclass) on a server error.
    """
    if client.verdict:
        return Explanation(
            outcome="already_approved",
            years_employed=client.explain(),
            fhe_execution_time=None,
        )
    years = client.explain()
    return Explanation(
        outcome="no_change" if years is None else "years_needed",
        years_employed=years,
        fhe_execution_time=client.explain_fhe_execution_time,
    )
