"""Bounded retries: call a step again after the errors that say "try again", within a budget.

``call_with_retries`` is the one loop behind the client library's automatic retries (a 503 that
the server marks transient: a replica or the session store went away) and behind
``wait_while_busy`` (a full queue, store or quota, for programs that queue on purpose).
Both wait at most a given number of seconds in all and report how long they waited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from fhe_client.errors import ServerBusyError

logger = logging.getLogger(__name__)

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


def wait_while_busy(
    step: Callable[[], T],
    max_wait: float = 120.0,
    default_wait: float = 1.0,
    attempts: int | None = None,
) -> Waited[T]:
    """Call a client step; while the server answers busy (503 or 429), wait and call it again.

    Each wait is the server's Retry-After (``default_wait`` seconds when it gave none): a full
    FHE queue, a full session store or this client's session quota. For programs that queue
    work on purpose (the benchmark's concurrent clients); the page shows the busy message to the
    person instead.

    Args:
        step: the call, e.g. ``client.predict``.
        max_wait: most seconds to wait in all.
        default_wait: seconds to wait when the server did not say.
        attempts: most calls in all (None: as many as ``max_wait`` allows).

    Returns:
        What ``step`` returned, with the seconds waited and the calls made.

    Raises:
        ServerBusyError: the server was still busy at the last attempt; its ``waited`` and
            ``attempts`` attributes say how long the helper waited and how often it called.
    """
    made = 0

    def wait_for(error: Exception, delay: float) -> float | None:
        nonlocal made
        made += 1
        if not isinstance(error, ServerBusyError) or (attempts is not None and made >= attempts):
            return None
        return error.retry_after or default_wait

    return call_with_retries(step, wait_for, max_wait)


def retry_while_busy(
    step: Callable[[], T],
    attempts: int = 20,
    default_wait: float = 1.0,
    max_wait: float = 600.0,
) -> T:
    """As ``wait_while_busy``, returning only the step's value (the wait is logged).

    Raises:
        ServerBusyError: the server was still busy after ``attempts`` calls or ``max_wait``
            seconds of waiting.
        ValueError: if ``attempts`` is below 1.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    result = wait_while_busy(step, max_wait, default_wait, attempts)
    if result.waited:
        logger.info("busy server: waited %.1f s over %d calls", result.waited, result.attempts)
    return result.value
