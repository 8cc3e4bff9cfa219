"""The client library's HTTP side: one server session, its requests, retries and resumption.

``ServerSession`` holds the connection to the FHE server and the current session's id and
token. A request is sent once more if the connection closed before the answer, repeated with
backoff while the server answers a transient failure, and turned into the typed error of the
contract's table otherwise (``fhe_client.errors``). When the server lost the session, a
``Resume`` given by the caller opens a new one and uploads again what it needs; without one, the
session is forgotten and ``SessionNotFoundError`` raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from contracts.single_key import (
    ADMISSION_PATH,
    REFUSAL_DETAIL_HEADER,
    REFUSAL_STATUS_HEADER,
    SESSION_PATH,
    SESSIONS_PATH,
    TRANSIENT_STATUSES,
)
from contracts.wire import CONTENT_TYPE_HEADER, OCTET_STREAM, bearer
from fhe_client.errors import (
    ClientError,
    ServerError,
    ServerUnreachableError,
    SessionNotFoundError,
    error_for_status,
)
from fhe_client.retry import MAX_DELAY_SECONDS, call_with_retries

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=120.0, pool=10.0)
DEFAULT_RETRY_SECONDS = 30.0
"""Seconds a request may wait in all, repeated after transient failures, before it is raised."""
CLOSE_TIMEOUT = httpx.Timeout(5.0)
CLOSE_RETRY_SECONDS = 5.0
"""A DELETE at close is repeated after transient failures for at most this long (closing is
best effort and must not hold the caller; an undeleted session still expires)."""

Resume = Callable[[str, str], None]
"""Called as ``resume(lost_session_id, path)`` when the server lost the session: opens a new one
(``ServerSession.open``) and uploads again what ``path`` needs."""


def error_from_response(response: httpx.Response) -> ServerError:
    """Build the typed error matching a non-success HTTP response.

    Args:
        response: the server's answer.

    Returns:
        The error of the contract's table for its status, with the server's ``detail``.
    """
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        detail = response.text[:200] or response.reason_phrase
    return error_for_status(response.status_code, str(detail), response.headers)


def refusal_from_admission(response: httpx.Response) -> ServerError | None:
    """The refusal that ``GET /admission`` announced, or None if a creation would be admitted.

    The server answers 204 (admitted) or 403 with the refusal's own status (429: this client's
    quota; 503: the server holds as many sessions as it can), detail and Retry-After in headers.
    Anything else (a server without the route, an error of the question itself) is no refusal:
    the creation itself then gets the server's answer.

    Args:
        response: the answer to ``GET /admission``.

    Returns:
        The typed error the creation would have got, or None.
    """
    refusal = response.headers.get(REFUSAL_STATUS_HEADER, "")
    if response.status_code != 403 or not refusal.isdigit():
        return None
    detail = response.headers.get(REFUSAL_DETAIL_HEADER) or "a new session is refused now"
    return error_for_status(int(refusal), detail, response.headers)


def transient_wait(error: Exception, delay: float) -> float | None:
    """Seconds to wait before repeating a request that failed transiently (None: raise).

    Args:
        error: what the request raised.
        delay: the next backoff delay.
    """
    if not isinstance(error, ServerError) or not error.transient:
        return None
    return min(getattr(error, "retry_after", None) or delay, MAX_DELAY_SECONDS)


class ServerSession:
    """The connection to one FHE server and the current session on it (not thread-safe alone).

    Attributes:
        server_url: the server's base URL.
        retry_seconds: how long in all a request is repeated (with backoff) while the server
            answers a transient failure (a replica or the session store went away); every
            request of the library is safe to repeat, so the caller sees a delay, not an error.
    """

    def __init__(
        self,
        server_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        """Build a session holder (no request yet).

        Args:
            server_url: the server's base URL.
            transport: httpx transport (tests pass a mock server).
            timeout: HTTP time-outs.
            retry_seconds: see the class's attributes.
        """
        self.server_url = server_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._transport = transport
        self._timeout = timeout
        self._http: httpx.Client | None = None
        self._resuming = False
        self.session_id: str | None = None
        self.token: str | None = None

    def open(self, evaluation_keys: bytes) -> str:
        """POST the evaluation keys; the new session becomes the current one.

        Args:
            evaluation_keys: the serialized evaluation keys.

        Returns:
            The new session's id.

        It first asks ``GET /admission`` (no body): a refusal (quota, a full server) is raised
        as the creation's own would be, without sending the keys (about 25 MB); a transient one is
        repeated within ``retry_seconds`` like any transient failure.

        Raises:
            ServerError: (a subclass) if the server refuses the keys or answers no id and token.
        """
        self._check_admission()
        response = self.request(
            "POST", SESSIONS_PATH, content=evaluation_keys, expected=(200, 201), authenticated=False
        )
        try:
            body = response.json()
            self.session_id, self.token = str(body["session_id"]), str(body["token"])
        except (ValueError, KeyError, TypeError) as error:
            raise ServerError(
                "the server's answer to POST /sessions has no session_id and token",
                code="bad_response",
                status_code=response.status_code,
            ) from error
        return self.session_id

    def _check_admission(self) -> None:
        """Raise the refusal ``GET /admission`` announces (after retrying a transient one)."""

        def attempt() -> httpx.Response:
            response = self._send_once("GET", ADMISSION_PATH, {})
            refusal = refusal_from_admission(response)
            if refusal is not None and refusal.transient:
                raise refusal
            return response

        result = call_with_retries(attempt, transient_wait, self.retry_seconds)
        refusal = refusal_from_admission(result.value)
        if refusal is not None:
            raise refusal

    def forget(self) -> None:
        """Forget the current session (without telling the server)."""
        self.session_id, self.token = None, None

    def delete(self) -> None:
        """DELETE the current session if any, then forget it; failures are logged, not raised."""
        session_id = self.session_id
        if session_id is None:
            return
        try:
            self.request(
                "DELETE",
                SESSION_PATH.format(session_id=session_id),
                expected=(200, 204, 404),
                timeout=CLOSE_TIMEOUT,
                retry_seconds=min(self.retry_seconds, CLOSE_RETRY_SECONDS),
            )
        except ClientError as error:
            logger.warning("could not delete server session %s: %s", session_id, error)
        finally:
            self.forget()

    def close(self) -> None:
        """Close the HTTP connections (the session is kept; see ``delete``)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        expected: tuple[int, ...],
        authenticated: bool = True,
        timeout: httpx.Timeout | None = None,
        retry_seconds: float | None = None,
        resume: Resume | None = None,
    ) -> httpx.Response:
        """Send one request; return the response if its status is expected, else raise.

        A transient failure (see ``ServerError.transient``) is repeated, with backoff, for up to
        ``retry_seconds`` in all (default: the session's ``retry_seconds``).

        Args:
            method: the HTTP method.
            path: the path (a template of ``contracts.single_key``, formatted).
            content: the body (sent as application/octet-stream), if any.
            expected: the statuses of success.
            authenticated: send the session's bearer token.
            timeout: this request's time-outs (default: the session's).
            retry_seconds: this request's retry budget (default: the session's).
            resume: when the server lost the session: open a new one and repeat the request
                there (None: forget the session and raise ``SessionNotFoundError``).

        Raises:
            ServerError: (a subclass) on an unexpected status or an unreachable server.
        """
        headers = {}
        if content is not None:
            headers[CONTENT_TYPE_HEADER] = OCTET_STREAM
        if authenticated:
            headers.update(bearer(str(self.token)))
        kwargs: dict[str, Any] = {"content": content, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout

        def attempt() -> httpx.Response:
            response = self._send_once(method, path, kwargs)
            status = response.status_code
            if status not in expected and status in (*TRANSIENT_STATUSES, 503):
                error = error_from_response(response)
                if error.transient:
                    raise error
            return response

        budget = self.retry_seconds if retry_seconds is None else retry_seconds
        result = call_with_retries(attempt, transient_wait, budget)
        if result.waited:
            logger.info("%s %s answered after %.1f s of retries", method, path, result.waited)
        response = result.value
        if response.status_code in expected:
            return response
        error = error_from_response(response)
        if isinstance(error, SessionNotFoundError) and authenticated:
            if resume is not None and not self._resuming:
                return self._resume(resume, method, path, content, expected, timeout)
            # The session is gone for good (deleted or expired): new keys are needed.
            self.forget()
        raise error

    def _resume(
        self,
        resume: Resume,
        method: str,
        path: str,
        content: bytes | None,
        expected: tuple[int, ...],
        timeout: httpx.Timeout | None,
    ) -> httpx.Response:
        """The server lost the session: ``resume`` opens a new one; repeat the request there.

        A second loss while resuming is raised as usual.
        """
        lost = str(self.session_id)
        self._resuming = True
        try:
            resume(lost, path)
            session_id = str(self.session_id)
            logger.info("the server lost session %s; resumed as %s", lost[:8], session_id[:8])
            return self.request(
                method,
                path.replace(lost, session_id),
                content=content,
                expected=expected,
                timeout=timeout,
            )
        finally:
            self._resuming = False

    def _http_client(self) -> httpx.Client:
        if self._http is None or self._http.is_closed:
            self._http = httpx.Client(
                base_url=self.server_url, timeout=self._timeout, transport=self._transport
            )
        return self._http

    def _send_once(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        """Send a request (once more if the connection closed before the answer)."""
        try:
            try:
                response = self._http_client().request(method, path, **kwargs)
            except httpx.RemoteProtocolError:
                # Typically the server closed a kept-alive connection (its idle timeout) just as
                # the request left on it. Sending once more on a new connection is safe on every
                # route: a PUT replaces, predict and explain recompute, and a session opened twice
                # would only expire unused.
                logger.info("connection closed by the server before an answer; sending again")
                response = self._http_client().request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise ServerUnreachableError(
                f"no answer from the FHE server at {self.server_url} in time ({method} {path})",
                code="timeout",
            ) from error
        except httpx.TransportError as error:
            raise ServerUnreachableError(
                f"cannot reach the FHE server at {self.server_url} ({error.__class__.__name__})"
            ) from error
        return response
