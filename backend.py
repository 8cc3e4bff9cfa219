"""Client side of the encrypted credit-card approval service (no Gradio here).

Each party turns its own raw fields into quantized integers with ``PartyPreprocessor`` (read from
``deployment_files/preprocessing.json``), without seeing any other party's fields.

``CreditScoringClient`` is the client library: it generates the FHE keys locally, uploads only the
evaluation keys, encrypts and sends each party's inputs separately, triggers the FHE run, fetches
and decrypts the verdict and runs the explain step. The functions at the end of the module
(``keygen_send``, ``pre_process_encrypt_send_applicant``, ...) are the thin wrappers the Gradio page
calls; a batch job can use the class directly::

    client = new_client(settings.ClientSettings())  # FHE_SERVER_URL, FHE_CLIENT_KEYS_DIR
    try:
        client.generate_keys()
        client.send_applicant(**applicant_fields)
        client.send_bank(account_age=30)
        client.send_credit_bureau(employed=True, years_employed="2-5")
        client.predict()
        approved = client.decrypt_verdict()
        years = None if approved else client.explain()
    finally:
        client.close()
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from concrete import fhe

import settings
from fhe_client.preprocessing import (  # noqa: F401  (re-exported)
    ClientError,
    FeatureSpec,
    InvalidFieldError,
    PartyPreprocessor,
)
from fhe_client.retry import MAX_DELAY_SECONDS, Waited, call_with_retries
from fhe_server.protocol import (
    CONTENT_TYPE_HEADER,
    EXECUTION_TIME_HEADER,
    EXPLAIN_PATH,
    INPUT_PATH,
    OCTET_STREAM,
    OUTPUT_PATH,
    PREDICT_PATH,
    RETRY_AFTER_HEADER,
    SESSION_PATH,
    SESSIONS_PATH,
    TRANSIENT_HEADER,
    ErrorCode,
    bearer,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Errors of the client library
# ---------------------------------------------------------------------------------------------
class ServerError(ClientError):
    """The server refused a request, could not be reached, or a step was asked out of order.

    Attributes:
        status_code: the HTTP status the server answered, or None (unreachable, or raised locally).
        transient: the failure was transient (502, 504, or a 503 marked so: a replica or the
            session store went away, nothing changed); the library retries those by itself.
    """

    code = "server_error"
    transient = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, code=code, **details)
        self.status_code = status_code


class AuthenticationError(ServerError):
    """401: the session token is missing or wrong."""

    code = ErrorCode.unauthorized


class SessionNotFoundError(ServerError):
    """404: the server does not know the session (never opened, deleted or expired)."""

    code = ErrorCode.not_found


class StepOrderError(ServerError):
    """409 from the server, or a step asked locally before the steps it needs.

    Local codes: "order_keys_first", "order_inputs_first" (details: ``parties``, the missing ones),
    "order_run_first", "order_decrypt_first"; "order_server" when the server answered 409.
    """

    code = ErrorCode.order_server


class PayloadTooLargeError(ServerError):
    """413: a body was over the server's size limit."""

    code = ErrorCode.too_large


class InvalidPayloadError(ServerError):
    """422: the server could not read the bytes sent (or an unknown party)."""

    code = ErrorCode.invalid_payload


class ServerBusyError(ServerError):
    """503: the server's FHE queue is full.

    Attributes:
        retry_after: seconds the server asks to wait before retrying (None if it did not say).
    """

    code = ErrorCode.busy

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.retry_after = retry_after


class TooManySessionsError(ServerBusyError):
    """429: this client (IP address) opened as many sessions as the server's quota allows.

    A kind of ``ServerBusyError``: ``retry_after`` says when the oldest of them leaves the quota's
    window, and ``retry_while_busy`` waits for it like for a full queue.
    """

    code = ErrorCode.too_many_sessions


class ServerUnreachableError(ServerError):
    """No answer from the server (connection refused, DNS, timeout); code "timeout" on timeouts."""

    code = "unreachable"


# Every ``code`` the library can raise (a page keeps one translated message per code).
ERROR_CODES = frozenset(
    {
        ClientError.code,
        InvalidFieldError.code,
        ServerError.code,
        "bad_response",
        AuthenticationError.code,
        SessionNotFoundError.code,
        StepOrderError.code,
        "order_keys_first",
        "order_inputs_first",
        "order_run_first",
        "order_decrypt_first",
        PayloadTooLargeError.code,
        InvalidPayloadError.code,
        ServerBusyError.code,
        TooManySessionsError.code,
        ServerUnreachableError.code,
        "timeout",
    }
)

_STATUS_ERRORS: dict[int, type[ServerError]] = {
    401: AuthenticationError,
    404: SessionNotFoundError,
    409: StepOrderError,
    413: PayloadTooLargeError,
    422: InvalidPayloadError,
    429: TooManySessionsError,
    503: ServerBusyError,
}
_STATUS_MEANING = {
    401: "the session token was refused",
    404: "the server does not know this session (it may have expired): generate new keys",
    409: "the server refused a step asked out of order",
    413: "the data sent is larger than the server accepts",
    422: "the server could not read the data sent",
    429: "this client has opened as many sessions as the server allows",
    503: "the server is busy",
}


def _error_from_response(response: httpx.Response) -> ServerError:
    """Build the typed error matching a non-success HTTP response."""
    status = response.status_code
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        detail = response.text[:200] or response.reason_phrase
    detail = str(detail)
    meaning = _STATUS_MEANING.get(status, "the server answered an error")
    message = f"HTTP {status}: {meaning} ({detail})"
    error_class = _STATUS_ERRORS.get(status, ServerError)
    if issubclass(error_class, ServerBusyError):
        error: ServerError = error_class(
            message,
            retry_after=_parse_seconds(response.headers.get(RETRY_AFTER_HEADER)),
            status_code=status,
            detail=detail,
        )
    else:
        error = error_class(message, status_code=status, detail=detail)
    error.transient = status in (502, 504) or (
        status == 503 and TRANSIENT_HEADER in response.headers
    )
    return error


def _transient_wait(error: Exception, delay: float) -> float | None:
    """Seconds to wait before repeating a request that failed transiently (None: raise)."""
    if not isinstance(error, ServerError) or not error.transient:
        return None
    return min(getattr(error, "retry_after", None) or delay, MAX_DELAY_SECONDS)


def _parse_seconds(value: str | None) -> float | None:
    """Seconds from a header (Retry-After's delta-seconds form), None if absent or unreadable."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# ---------------------------------------------------------------------------------------------
# The client library
# ---------------------------------------------------------------------------------------------
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=120.0, pool=10.0)
# Seconds a request may wait in all, repeated after transient failures, before it is raised.
DEFAULT_RETRY_SECONDS = 30.0
CLOSE_TIMEOUT = httpx.Timeout(5.0)
# A DELETE at close() is repeated after transient failures for at most this long (close() is
# best effort and must not hold the caller; an undeleted session still expires).
CLOSE_RETRY_SECONDS = 5.0
KEYS_FILE_NAME = "keys"
EVALUATION_KEY_PREVIEW_BYTES = 512


@lru_cache(maxsize=1)
def client_specs() -> fhe.ClientSpecs:
    """The FHE module's client specs (read once from deployment_files/client_specs.json)."""
    return fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())


@lru_cache(maxsize=1)
def _preprocessing_spec() -> dict[str, Any]:
    """The preprocessing JSON (read once); each party builds its preprocessor from its own part."""
    return json.loads(settings.PREPROCESSING_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=len(settings.PARTIES))
def party_preprocessor(party: str) -> PartyPreprocessor:
    """Return one party's preprocessor (cached), built only from that party's part of the spec."""
    return PartyPreprocessor.from_spec(party, _preprocessing_spec())


KeyGenerator = Callable[[Path], bytes]


def generate_key_file(key_dir: Path) -> bytes:
    """Generate a new key set and save it, secret key included, as ``key_dir/keys`` (mode 0600).

    A module-level function so that a worker process can run it (the page does, so that the
    ~1 s of key generation, which holds the interpreter lock, never stalls other sessions).

    Returns:
        The serialized evaluation keys (what the server needs; no secret key in them).
    """
    client = fhe.Client(client_specs())
    client.keygen(force=True)
    key_dir = Path(key_dir)
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_path = key_dir / KEYS_FILE_NAME
    keys_path.unlink(missing_ok=True)
    client.keys.save(keys_path)
    os.chmod(keys_path, 0o600)
    return client.evaluation_keys.serialize()


class CreditScoringClient:
    """Client of the encrypted credit-card approval server, for one application at a time.

    The secret key is generated here, saved under ``key_dir`` and never sent; only the evaluation
    keys are uploaded. Each party's inputs are preprocessed, encrypted and sent separately (in this
    client all three with the same key set). Methods must be called in order: generate_keys, the
    three sends (any order), predict, decrypt_verdict, then optionally explain; steps asked too
    early raise StepOrderError without contacting the server. Sending a party again invalidates
    the last run. The object is thread-safe (one lock) and can be reused after close().

    Attributes:
        server_url: the server's base URL.
        key_dir: folder holding this client's secret keys (created by generate_keys, removed by
            close).
        resume_lost_sessions: when the server no longer knows the session (it expired, or the
            server's store restarted empty), open a new session with the same keys, upload the
            ciphertexts sent so far again and repeat the step, instead of raising
            SessionNotFoundError (off by default: the page asks for new keys).
        retry_seconds: how long in all a request is repeated (with backoff) while the server
            answers a transient failure (a replica or the session store went away); every
            request of the library is safe to repeat, so the caller sees a delay, not an error.
    """

    def __init__(
        self,
        server_url: str,
        key_dir: Path,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        resume_lost_sessions: bool = False,
        key_generator: KeyGenerator | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        """Build a client (no key, no request yet).

        Args:
            server_url: the server's base URL.
            key_dir: folder for this client's key set (created by generate_keys).
            transport: httpx transport (tests pass a mock server).
            timeout: HTTP time-outs.
            resume_lost_sessions: see the class's attributes.
            key_generator: generates and saves a key set in a folder and returns the serialized
                evaluation keys (default ``generate_key_file``, in this process).
            retry_seconds: see the class's attributes.
        """
        self._key_generator = key_generator or generate_key_file
        self.server_url = server_url.rstrip("/")
        self.key_dir = Path(key_dir)
        self.resume_lost_sessions = resume_lost_sessions
        self.retry_seconds = retry_seconds
        self._resuming = False
        self._transport = transport
        self._timeout = timeout
        self._http: httpx.Client | None = None
        self._lock = threading.RLock()
        self._fhe: fhe.Client | None = None
        self._session_id: str | None = None
        self._token: str | None = None
        self._evaluation_key_preview: bytes | None = None
        self._evaluation_key_size: int | None = None
        self._reset_inputs()

    # -- read-only state for a page -------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        """The server session's id (None before generate_keys or after close)."""
        return self._session_id

    @property
    def has_keys(self) -> bool:
        """Whether keys exist and the evaluation keys were accepted by the server."""
        return self._fhe is not None and self._session_id is not None

    @property
    def evaluation_key_preview(self) -> bytes | None:
        """The first bytes of the serialized evaluation keys that were uploaded (for display)."""
        return self._evaluation_key_preview

    @property
    def evaluation_key_size(self) -> int | None:
        """Size in bytes of the serialized evaluation keys that were uploaded."""
        return self._evaluation_key_size

    @property
    def sent_parties(self) -> frozenset[str]:
        """Parties whose inputs the server holds for the current keys."""
        return frozenset(self._ciphertexts)

    @property
    def ciphertexts(self) -> Mapping[str, bytes]:
        """The last ciphertext sent for each party (party -> serialized bytes), read-only."""
        return MappingProxyType(dict(self._ciphertexts))

    @property
    def fhe_execution_time(self) -> float | None:
        """The server's FHE execution time of the last predict, in seconds."""
        return self._fhe_execution_time

    @property
    def encrypted_output(self) -> bytes | None:
        """The last encrypted verdict fetched from the server."""
        return self._encrypted_output

    @property
    def verdict(self) -> bool | None:
        """The last decrypted verdict (True = likely approved), None if not decrypted yet."""
        return self._verdict

    @property
    def encrypted_explain_output(self) -> bytes | None:
        """The last encrypted explain output (one verdict per years-employed bin)."""
        return self._encrypted_explain_output

    @property
    def explain_fhe_execution_time(self) -> float | None:
        """The server's FHE execution time of the last explain, in seconds (if it said)."""
        return self._explain_fhe_execution_time

    # -- steps ----------------------------------------------------------------------------
    def generate_keys(self) -> None:
        """Generate new keys locally, save them in key_dir and open a server session.

        Only the evaluation keys are uploaded (POST /sessions); the secret key stays in key_dir.
        Any previous session of this client is deleted first and every later step is reset.

        Raises:
            ServerError: (a subclass) if the server refuses the keys or cannot be reached.
        """
        with self._lock:
            self._delete_server_session()
            self._reset_inputs()
            self._fhe = None
            self._evaluation_key_preview = None
            self._evaluation_key_size = None

            # The key generation may run in another process (the page's worker pool): it saves
            # the key set in key_dir and hands back the evaluation keys to upload.
            evaluation_keys = self._key_generator(self.key_dir)
            client = fhe.Client(client_specs())
            client.keys.load(str(self.key_dir / KEYS_FILE_NAME))
            session_id, token = self._open_session(evaluation_keys)
            self._fhe = client
            self._session_id, self._token = session_id, token
            self._evaluation_key_preview = evaluation_keys[:EVALUATION_KEY_PREVIEW_BYTES]
            self._evaluation_key_size = len(evaluation_keys)

    def send_applicant(self, **fields: Any) -> None:
        """Preprocess, encrypt and send the applicant's fields.

        Args:
            **fields: own_car, own_property, mobile_phone (bool), num_children, household_size,
                total_income, age (numbers), income_type, education_type, family_status,
                occupation_type, housing_type (canonical category values of settings.py).

        Raises:
            InvalidFieldError: before anything is encrypted, if a field is missing or invalid.
            StepOrderError: if generate_keys has not succeeded.
            ServerError: (a subclass) if the server refuses the ciphertext.
        """
        self._send("applicant", fields)

    def send_bank(self, account_age: float) -> None:
        """Preprocess, encrypt and send the bank's field.

        Args:
            account_age: age of the applicant's bank account, in months.

        Raises:
            InvalidFieldError: before anything is encrypted, if the value is invalid.
            StepOrderError: if generate_keys has not succeeded.
            ServerError: (a subclass) if the server refuses the ciphertext.
        """
        self._send("bank", {"account_age": account_age})

    def send_credit_bureau(self, employed: bool, years_employed: str) -> None:
        """Preprocess, encrypt and send the credit bureau's fields.

        Args:
            employed: whether the applicant is employed.
            years_employed: one of settings.YEARS_EMPLOYED_BINS.

        Raises:
            InvalidFieldError: before anything is encrypted, if a value is invalid.
            StepOrderError: if generate_keys has not succeeded.
            ServerError: (a subclass) if the server refuses the ciphertext.
        """
        self._send("credit_bureau", {"employed": employed, "years_employed": years_employed})

    def predict(self) -> float:
        """Ask the server to run the decision tree on the three encrypted inputs.

        Returns:
            The server's FHE execution time in seconds.

        Raises:
            StepOrderError: if keys or one of the three parties' inputs are missing.
            ServerError: (a subclass) on a server error (e.g. ServerBusyError).
        """
        with self._lock:
            session_id = self._require_session()
            missing = tuple(p for p in settings.PARTIES if p not in self._ciphertexts)
            if missing:
                raise StepOrderError(
                    f"send every party's inputs before running FHE (missing: {', '.join(missing)})",
                    code="order_inputs_first",
                    parties=missing,
                )
            self._clear_run()
            response = self._request(
                "POST", PREDICT_PATH.format(session_id=session_id), expected=(200,)
            )
            try:
                seconds = float(response.json()["fhe_execution_time"])
            except (ValueError, KeyError, TypeError) as error:
                raise ServerError(
                    "the server's answer to predict has no fhe_execution_time",
                    code="bad_response",
                    status_code=response.status_code,
                ) from error
            self._predicted = True
            self._fhe_execution_time = seconds
            return seconds

    def decrypt_verdict(self) -> bool:
        """Fetch the encrypted verdict (GET /output) and decrypt it with the local secret key.

        Returns:
            True if the application is likely approved.

        Raises:
            StepOrderError: if predict has not run since the inputs were last sent.
            ServerError: (a subclass) on a server error, or code "bad_response" when the bytes
                received do not decrypt to a verdict.
        """
        with self._lock:
            session_id = self._require_session()
            if not self._predicted:
                raise StepOrderError(
                    "run FHE (predict) before fetching and decrypting the verdict",
                    code="order_run_first",
                )
            response = self._request(
                "GET", OUTPUT_PATH.format(session_id=session_id), expected=(200,)
            )
            data = response.content
            decrypted = self._decrypt(data, function_name="predict")
            value = int(np.asarray(decrypted).reshape(-1)[0])
            if value not in (0, 1):
                raise ServerError(
                    f"the encrypted verdict decrypted to {value}, not 0 or 1",
                    code="bad_response",
                )
            self._encrypted_output = data
            self._verdict = value == 1
            return self._verdict

    def explain(self) -> str | None:
        """Find the fewest years employed that would most likely lead to approval.

        Scores, in ONE server round trip, the six credit-bureau rows (employed = yes, each
        years-employed bin) against the applicant's and bank's ciphertexts already on the server,
        then decrypts the six verdicts locally. No server call when the decrypted verdict is
        already approval.

        Returns:
            The smallest bin at or above the one sent whose verdict is approval (employed = yes);
            the sent bin itself when the decrypted verdict is already approval; None if no bin
            leads to approval.

        Raises:
            StepOrderError: if the verdict has not been decrypted since the inputs were sent.
            ServerError: (a subclass) on a server error.
        """
        with self._lock:
            session_id = self._require_session()
            if self._verdict is None:
                raise StepOrderError(
                    "fetch and decrypt the verdict before asking for an explanation",
                    code="order_decrypt_first",
                )
            sent_bin = str(self._sent_fields["credit_bureau"]["years_employed"])
            if self._verdict:
                return sent_bin
            bins = settings.YEARS_EMPLOYED_BINS
            preprocessor = party_preprocessor("credit_bureau")
            candidates = np.stack(
                [preprocessor.transform({"employed": True, "years_employed": b}) for b in bins]
            )
            encrypted = self._fhe_client().encrypt(None, None, candidates, function_name="explain")
            response = self._request(
                "POST",
                EXPLAIN_PATH.format(session_id=session_id),
                content=encrypted[2].serialize(),
                expected=(200,),
            )
            data = response.content
            verdicts = np.asarray(self._decrypt(data, function_name="explain")).reshape(-1)
            if verdicts.shape != (len(bins),) or not set(verdicts.tolist()) <= {0, 1}:
                raise ServerError(
                    "the encrypted explain output did not decrypt to one 0/1 verdict per bin",
                    code="bad_response",
                )
            self._encrypted_explain_output = data
            self._explain_fhe_execution_time = _parse_seconds(
                response.headers.get(EXECUTION_TIME_HEADER)
            )
            start = bins.index(sent_bin)
            for index in range(start, len(bins)):
                if verdicts[index] == 1:
                    return bins[index]
            return None

    def close(self) -> None:
        """Delete the server session (best effort) and the local keys; never raises.

        The client can be used again afterwards, starting with generate_keys.
        """
        with self._lock:
            self._delete_server_session()
            self._reset_inputs()
            self._fhe = None
            self._evaluation_key_preview = None
            self._evaluation_key_size = None
            shutil.rmtree(self.key_dir, ignore_errors=True)
            if self._http is not None:
                self._http.close()
                self._http = None

    # -- internals --------------------------------------------------------------------------
    def _reset_inputs(self) -> None:
        """Forget every party's inputs and the last run (new keys, close, lost session)."""
        self._ciphertexts: dict[str, bytes] = {}
        self._sent_fields: dict[str, dict[str, Any]] = {}
        self._clear_run()

    def _clear_run(self) -> None:
        """Forget the last run's results (they no longer match the inputs on the server)."""
        self._predicted = False
        self._fhe_execution_time: float | None = None
        self._encrypted_output: bytes | None = None
        self._verdict: bool | None = None
        self._encrypted_explain_output: bytes | None = None
        self._explain_fhe_execution_time: float | None = None

    def _send(self, party: str, fields: dict[str, Any]) -> None:
        """Check, quantize, encrypt and upload one party's fields."""
        with self._lock:
            quantized = party_preprocessor(party).transform(fields)
            session_id = self._require_session()
            position = settings.PARTIES.index(party)
            arguments: list[np.ndarray | None] = [None, None, None]
            arguments[position] = quantized
            encrypted = self._fhe_client().encrypt(*arguments, function_name="predict")
            ciphertext = encrypted[position].serialize()
            # Until the upload succeeds the server's copy of this party is unknown.
            self._ciphertexts.pop(party, None)
            self._sent_fields.pop(party, None)
            self._clear_run()
            self._request(
                "PUT",
                INPUT_PATH.format(session_id=session_id, party=party),
                content=ciphertext,
                expected=(200, 204),
            )
            self._ciphertexts[party] = ciphertext
            self._sent_fields[party] = dict(fields)

    def _require_session(self) -> str:
        """Return the session id, or raise StepOrderError if keys were not generated."""
        if self._fhe is None or self._session_id is None:
            raise StepOrderError(
                "generate the keys (and open a server session) first", code="order_keys_first"
            )
        return self._session_id

    def _fhe_client(self) -> fhe.Client:
        if self._fhe is None:
            raise StepOrderError("generate the keys first", code="order_keys_first")
        return self._fhe

    def _decrypt(self, data: bytes, *, function_name: str) -> Any:
        """Deserialize bytes received from the server and decrypt them with the secret key."""
        try:
            value = fhe.Value.deserialize(data)
            return self._fhe_client().decrypt(value, function_name=function_name)
        except RuntimeError as error:
            raise ServerError(
                f"the {function_name} output received ({len(data)} bytes) cannot be decrypted",
                code="bad_response",
            ) from error

    def _http_client(self) -> httpx.Client:
        if self._http is None or self._http.is_closed:
            self._http = httpx.Client(
                base_url=self.server_url, timeout=self._timeout, transport=self._transport
            )
        return self._http

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        expected: tuple[int, ...],
        authenticated: bool = True,
        timeout: httpx.Timeout | None = None,
        retry_seconds: float | None = None,
    ) -> httpx.Response:
        """Send one request; return the response if its status is expected, else raise.

        A transient failure (see ``ServerError.transient``) is repeated, with backoff, for up to
        ``retry_seconds`` in all (default: the client's ``retry_seconds``).
        """
        headers = {}
        if content is not None:
            headers[CONTENT_TYPE_HEADER] = OCTET_STREAM
        if authenticated:
            headers.update(bearer(str(self._token)))
        kwargs: dict[str, Any] = {"content": content, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout

        def attempt() -> httpx.Response:
            response = self._send_once(method, path, kwargs)
            if response.status_code not in expected and response.status_code in (502, 503, 504):
                error = _error_from_response(response)
                if error.transient:
                    raise error
            return response

        budget = self.retry_seconds if retry_seconds is None else retry_seconds
        result = call_with_retries(attempt, _transient_wait, budget)
        if result.waited:
            logger.info("%s %s answered after %.1f s of retries", method, path, result.waited)
        response = result.value
        if response.status_code in expected:
            return response
        error = _error_from_response(response)
        if isinstance(error, SessionNotFoundError) and authenticated:
            if self.resume_lost_sessions and self._fhe is not None and not self._resuming:
                return self._resume_session(
                    method, path, content=content, expected=expected, timeout=timeout
                )
            # The session is gone for good (deleted or expired): new keys are needed.
            self._session_id, self._token = None, None
            self._reset_inputs()
        raise error

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

    def _open_session(self, evaluation_keys: bytes) -> tuple[str, str]:
        """POST the evaluation keys; return the new session's id and token."""
        response = self._request(
            "POST", SESSIONS_PATH, content=evaluation_keys, expected=(200, 201), authenticated=False
        )
        try:
            body = response.json()
            return str(body["session_id"]), str(body["token"])
        except (ValueError, KeyError, TypeError) as error:
            raise ServerError(
                "the server's answer to POST /sessions has no session_id and token",
                code="bad_response",
                status_code=response.status_code,
            ) from error

    def _resume_session(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        expected: tuple[int, ...],
        timeout: httpx.Timeout | None,
    ) -> httpx.Response:
        """The server lost the session: open a new one with the same keys and repeat the request.

        The ciphertexts sent so far are uploaded again (and predict run again before fetching a
        verdict); nothing is encrypted again. A second loss while resuming is raised as usual.
        """
        lost = str(self._session_id)
        self._resuming = True
        try:
            self._session_id, self._token = self._open_session(
                self._fhe_client().evaluation_keys.serialize()
            )
            session_id = self._session_id
            logger.info("the server lost session %s; resumed as %s", lost[:8], session_id[:8])
            for party, ciphertext in self._ciphertexts.items():
                self._request(
                    "PUT",
                    INPUT_PATH.format(session_id=session_id, party=party),
                    content=ciphertext,
                    expected=(200, 204),
                )
            if self._predicted and path == OUTPUT_PATH.format(session_id=lost):
                self._request("POST", PREDICT_PATH.format(session_id=session_id), expected=(200,))
            return self._request(
                method,
                path.replace(lost, session_id),
                content=content,
                expected=expected,
                timeout=timeout,
            )
        finally:
            self._resuming = False

    def _delete_server_session(self) -> None:
        """DELETE the current server session if any; failures are logged, not raised."""
        session_id = self._session_id
        if session_id is None:
            return
        try:
            self._request(
                "DELETE",
                SESSION_PATH.format(session_id=session_id),
                expected=(200, 204, 404),
                timeout=CLOSE_TIMEOUT,
                retry_seconds=min(self.retry_seconds, CLOSE_RETRY_SECONDS),
            )
        except ClientError as error:
            logger.warning("could not delete server session %s: %s", session_id, error)
        finally:
            self._session_id, self._token = None, None


def new_client(
    client_settings: settings.ClientSettings,
    key_dir: Path | None = None,
    key_generator: KeyGenerator | None = None,
) -> CreditScoringClient:
    """Return a client of the configured server, with a fresh key folder.

    Args:
        client_settings: the client side's settings (server URL, keys directory).
        key_dir: the key folder (default: a new random one under ``client_keys_dir``).
        key_generator: see CreditScoringClient (default: key generation in this process).
    """
    return CreditScoringClient(
        server_url=client_settings.resolved_server_url(),
        key_dir=key_dir or client_settings.client_keys_dir / secrets.token_hex(16),
        key_generator=key_generator,
    )


# ---------------------------------------------------------------------------------------------
# Thin functions the Gradio page calls (the product's names)
# ---------------------------------------------------------------------------------------------
SHORT_HEX_BYTES = 32


def shorten_hex(data: bytes, total_size: int | None = None, limit: int = SHORT_HEX_BYTES) -> str:
    """Return a short hex view of (possibly a prefix of) serialized bytes, with the full size.

    Serialized ciphertexts and keys start with fixed headers; the view shows the ``limit``-byte
    window (on an 8-byte grid) with the most distinct byte values, i.e. random-looking key or
    ciphertext material rather than a header.

    Args:
        data: the bytes (or their first bytes).
        total_size: the full size when ``data`` is only a prefix.
        limit: how many bytes to show.
    """
    size = len(data) if total_size is None else total_size
    starts = range(0, max(len(data) - limit, 0) + 1, 8)
    start = max(starts, key=lambda offset: len(set(data[offset : offset + limit])))
    before = "…" if start > 0 else ""
    after = "…" if start + limit < size else ""
    return f"{before}{data[start : start + limit].hex()}{after} [{size:,} B]"


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


def keygen_send(client: CreditScoringClient) -> str:
    """Generate keys, upload the evaluation keys; return the shortened evaluation key."""
    client.generate_keys()
    return shorten_hex(client.evaluation_key_preview or b"", total_size=client.evaluation_key_size)


def pre_process_encrypt_send_applicant(client: CreditScoringClient, **fields: Any) -> str:
    """Preprocess, encrypt and send the applicant's fields; return the shortened ciphertext."""
    client.send_applicant(**fields)
    return shorten_hex(client.ciphertexts["applicant"])


def pre_process_encrypt_send_bank(client: CreditScoringClient, account_age: float) -> str:
    """Preprocess, encrypt and send the bank's field; return the shortened ciphertext."""
    client.send_bank(account_age=account_age)
    return shorten_hex(client.ciphertexts["bank"])


def pre_process_encrypt_send_credit_bureau(
    client: CreditScoringClient, employed: bool, years_employed: str
) -> str:
    """Preprocess, encrypt and send the credit bureau's fields; return the shortened ciphertext."""
    client.send_credit_bureau(employed=employed, years_employed=years_employed)
    return shorten_hex(client.ciphertexts["credit_bureau"])


def run_fhe(client: CreditScoringClient) -> float:
    """Run the decision tree on the server in FHE; return its execution time in seconds."""
    return client.predict()


def get_output_and_decrypt(client: CreditScoringClient) -> tuple[str, bool]:
    """Fetch and decrypt the verdict; return (shortened encrypted output, likely approved)."""
    verdict = client.decrypt_verdict()
    return shorten_hex(client.encrypted_output or b""), verdict


def explain_encrypt_run_decrypt(client: CreditScoringClient) -> Explanation:
    """Encrypt the six candidate rows, score them in one FHE run and decrypt the answer."""
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


_Result = TypeVar("_Result")


def wait_while_busy(
    step: Callable[[], _Result],
    max_wait: float = 120.0,
    default_wait: float = 1.0,
    attempts: int | None = None,
) -> Waited[_Result]:
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
    step: Callable[[], _Result],
    attempts: int = 20,
    default_wait: float = 1.0,
    max_wait: float = 600.0,
) -> _Result:
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
