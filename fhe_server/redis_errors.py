"""How the Redis store answers Redis's failures: ``store_errors`` turns them into 503s."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Concatenate, ParamSpec, TypeVar

from redis.exceptions import RedisError

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")


def store_errors(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Answer a ``RedisError`` with the 503 its type calls for, never with a 500.

    Decorates methods of the store and of objects with a ``store`` attribute (its quota); the
    store's ``refusal(error)`` chooses the answer by the exception's type.
    """

    @wraps(method)
    def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except RedisError as error:
            store = getattr(self, "store", self)
            raise store.refusal(error) from None

    return wrapper
