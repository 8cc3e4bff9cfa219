"""The shape of one error status of a contract: every refusal is a status with a JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

Code = TypeVar("Code", bound=str)


@dataclass(frozen=True)
class ErrorStatus(Generic[Code]):
    """One error of a contract.

    Attributes:
        status: the HTTP status code.
        code: its stable name (the client library's ``ClientError.code``).
        meaning: when the server answers it (OpenAPI's description of the response).
        summary: what it means to a client, in the client's error message
            ("HTTP <status>: <summary> (<detail>)"); empty when the client has no wording of its
            own for it.
    """

    status: int
    code: Code
    meaning: str
    summary: str = ""
