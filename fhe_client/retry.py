"""Bounded retries: call a step again after the errors that say "try again", within a budget.

``call_with_retries`` is the one loop behind the client library's automatic retries (a 503 that
the server marks transient: a replica or the session store went away) and behind
``backend.wait_while_busy`` (a full queue, store or quota, for programs that queue on purpose).
Both wait at most a given number of seconds in all and report how long they waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Backoff when the server did not say how long to wait: 0.5 s, 1 s, 2 s, then 4 s at most.
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 4.0


@dataclass(frozen=True)
class Waited(Generic[T]):
    """What a step returned after retries, and what the retries cost.

    Attributes:
        value: what the step returned.
        waited: seconds spent sleeping between attempts.
        attempts: calls of the step in all (1: no retry).
    """

    value: T
    waited: float
    attempts: int


def backoff(first: float = FIRST_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS) -> Iterator[float]:
    """Exponential backoff delays: ``first``, twice that, ... never above ``cap``."""
    delay = first
    while True:
        yield min(delay, cap)
        delay *= 2


def call_with_retries(
    step: Callable[[], T],
    wait_for: Callable[[Exception, float], float | None],
    max_wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Waited[T]:
    """Call ``step``; after an error that ``wait_for`` accepts, sleep and call it again.

    Args:
        step: the call to make.
        wait_for: given the error and the next backoff delay, the seconds to wait before the
            next attempt, or None when the error must be raised at once.
        max_wait: most seconds to sleep in all (a longer wait is cut to what is left).
        sleep: the sleeping function (tests pass a fake).

    Returns:
        The step's value with the seconds waited and the attempts made.

    Raises:
        Exception: the step's last error, with ``waited`` (seconds) and ``attempts`` set on it.
    """
    waited, attempts, delays = 0.0, 0, backoff()
    while True:
        attempts += 1
        try:
            return Waited(step(), waited, attempts)
        except Exception as error:
            wait = wait_for(error, next(delays))
            if wait is None or waited >= max_wait:
                error.waited, error.attempts = waited, attempts  # type: ignore[attr-defined]
                raise
            wait = max(0.0, min(wait, max_wait - waited))
            sleep(wait)
            waited += wait
