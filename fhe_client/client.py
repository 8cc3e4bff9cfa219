"""The single-key client library: ``CreditScoringClient``, one application at a time.

It generates the FHE keys locally, uploads only the evaluation keys, encrypts and sends each
party's inputs separately, triggers the FHE run, fetches and decrypts the verdict and runs the
explain step; ``decide_batch`` decides up to 16 applications in one call (a portfolio's step).
Every path it reads is an argument (the client specs, the preprocessing, the key
folder): it reads no setting and no environment variable; ``backend`` passes the repository's.

This module is longer than 500 lines because ``CreditScoringClient`` is one class whose steps
share one lock and one session state (half of its lines are the public methods' docstrings);
splitting it would spread that state over modules.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import numpy as np
from concrete import fhe

from contracts.parties import PARTIES
from contracts.single_key import (
    BATCH_PATH,
    BATCH_ROWS,
    EXECUTION_TIME_HEADER,
    EXPLAIN_PATH,
    INPUT_PATH,
    OUTPUT_PATH,
    PREDICT_PATH,
)
from fhe_client.errors import (
    ServerError,
    SessionNotFoundError,
    StepOrderError,
    parse_seconds,
)
from fhe_client.keys import KEYS_FILE_NAME, KeyGenerator, generate_key_file, load_client_specs
from fhe_client.preprocessing import PartyPreprocessor, load_party_preprocessor
from fhe_client.transport import DEFAULT_RETRY_SECONDS, DEFAULT_TIMEOUT, ServerSession

EVALUATION_KEY_PREVIEW_BYTES = 512


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
        client_specs_path: the FHE module's client specs (``deployment_files/client_specs.json``).
        preprocessing_path: each party's preprocessing (``deployment_files/preprocessing.json``).
        key_dir: folder holding this client's secret keys (created by generate_keys, removed by
            close).
        resume_lost_sessions: when the server no longer knows the session (it expired, or the
            server's store restarted empty), open a new session with the same keys, upload the
            ciphertexts sent so far again and repeat the step, instead of raising
            SessionNotFoundError (off by default: the page asks for new keys).
        retry_seconds: how long in all a request is repeated while the server answers a
            transient failure (``fhe_client.transport.ServerSession.retry_seconds``).
    """

    def __init__(
        self,
        server_url: str,
        key_dir: Path,
        *,
        client_specs_path: Path,
        preprocessing_path: Path,
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
            client_specs_path: see the class's attributes.
            preprocessing_path: see the class's attributes.
            transport: httpx transport (tests pass a mock server).
            timeout: HTTP time-outs.
            resume_lost_sessions: see the class's attributes.
            key_generator: generates and saves a key set in a folder and returns the serialized
                evaluation keys (default ``generate_key_file`` with ``client_specs_path``, in
                this process).
            retry_seconds: see the class's attributes.
        """
        self.client_specs_path = Path(client_specs_path)
        self.preprocessing_path = Path(preprocessing_path)
        self._key_generator = key_generator or partial(
            generate_key_file, client_specs_path=self.client_specs_path
        )
        self.key_dir = Path(key_dir)
        self.resume_lost_sessions = resume_lost_sessions
        self._session = ServerSession(
            server_url, transport=transport, timeout=timeout, retry_seconds=retry_seconds
        )
        self._lock = threading.RLock()
        self._fhe: fhe.Client | None = None
        self._evaluation_key_preview: bytes | None = None
        self._evaluation_key_size: int | None = None
        self._reset_inputs()

    # -- settings and read-only state for a page -------------------------------------------
    @property
    def server_url(self) -> str:
        """The server's base URL."""
        return self._session.server_url

    @property
    def retry_seconds(self) -> float:
        """See the class's attributes."""
        return self._session.retry_seconds

    @retry_seconds.setter
    def retry_seconds(self, seconds: float) -> None:
        self._session.retry_seconds = seconds

    @property
    def session_id(self) -> str | None:
        """The server session's id (None before generate_keys or after close)."""
        return self._session.session_id

    @property
    def _token(self) -> str | None:
        """The server session's bearer token (tests read it)."""
        return self._session.token

    @property
    def has_keys(self) -> bool:
        """Whether keys exist and the evaluation keys were accepted by the server."""
        return self._fhe is not None and self._session.session_id is not None

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
            self._session.delete()
            self._reset_inputs()
            self._fhe = None
            self._evaluation_key_preview = None
            self._evaluation_key_size = None

            # The key generation may run in another process (the page's worker pool): it saves
            # the key set in key_dir and hands back the evaluation keys to upload.
            evaluation_keys = self._key_generator(self.key_dir)
            client = fhe.Client(load_client_specs(self.client_specs_path))
            client.keys.load(str(self.key_dir / KEYS_FILE_NAME))
            self._session.open(evaluation_keys)
            self._fhe = client
            self._evaluation_key_preview = evaluation_keys[:EVALUATION_KEY_PREVIEW_BYTES]
            self._evaluation_key_size = len(evaluation_keys)

    def send_applicant(self, **fields: Any) -> None:
        """Preprocess, encrypt and send the applicant's fields.

        Args:
            **fields: own_car, own_property, mobile_phone (bool), num_children, household_size,
                total_income, age (numbers), income_type, education_type, family_status,
                occupation_type, housing_type (canonical category values, as in
                ``settings.CATEGORY_VALUES``).

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
            years_employed: one of the years-employed bins (``settings.YEARS_EMPLOYED_BINS``).

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
            missing = tuple(p for p in PARTIES if p not in self._ciphertexts)
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
            preprocessor = self._preprocessor("credit_bureau")
            bins = preprocessor.categories("years_employed")
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
            self._explain_fhe_execution_time = parse_seconds(
                response.headers.get(EXECUTION_TIME_HEADER)
            )
            start = bins.index(sent_bin)
            for index in range(start, len(bins)):
                if verdicts[index] == 1:
                    return bins[index]
            return None

    def decide_batch(self, applications: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[bool]:
        """Decide up to ``BATCH_ROWS`` applications in one server call (a portfolio's step).

        Each party's rows are preprocessed and encrypted here with this client's key; the
        server runs the tree on all of them at once (the module's ``predict_batch``) and only
        this client decrypts the verdicts. A shorter list is padded with copies of its first
        application, whose verdicts are dropped. The session's one-application state (inputs
        sent, verdict) is not touched.

        Args:
            applications: 1 to ``BATCH_ROWS`` applications, each {party: fields} with the
                fields the ``send_*`` methods take.

        Returns:
            Each application's verdict (True: approved), in order.

        Raises:
            ValueError: if there are no applications or more than ``BATCH_ROWS``.
            InvalidFieldError: before anything is encrypted, if a field is missing or invalid.
            StepOrderError: if generate_keys has not succeeded.
            ServerError: (a subclass) if the server refuses or fails.
        """
        if not 1 <= len(applications) <= BATCH_ROWS:
            raise ValueError(
                f"a batch holds 1 to {BATCH_ROWS} applications, not {len(applications)}"
            )
        with self._lock:
            rows = [
                np.stack([self._preprocessor(p).transform(dict(a[p])) for a in applications])
                for p in PARTIES
            ]
            session_id = self._require_session()
            padding = BATCH_ROWS - len(applications)
            rows = [np.concatenate([r, np.repeat(r[:1], padding, axis=0)]) for r in rows]
            encrypted = self._fhe_client().encrypt(*rows, function_name="predict_batch")
            response = self._request(
                "POST",
                BATCH_PATH.format(session_id=session_id),
                content=b"".join(value.serialize() for value in encrypted),
                expected=(200,),
            )
            data = response.content
            verdicts = np.asarray(self._decrypt(data, function_name="predict_batch")).reshape(-1)
            if verdicts.shape != (BATCH_ROWS,) or not set(verdicts.tolist()) <= {0, 1}:
                raise ServerError(
                    f"the encrypted batch output did not decrypt to {BATCH_ROWS} 0/1 verdicts",
                    code="bad_response",
                )
            self._batch_fhe_execution_time = parse_seconds(
                response.headers.get(EXECUTION_TIME_HEADER)
            )
            return [bool(v) for v in verdicts[: len(applications)]]

    @property
    def batch_fhe_execution_time(self) -> float | None:
        """The server's FHE time of the last ``decide_batch`` (None before one)."""
        return self._batch_fhe_execution_time

    def close(self) -> None:
        """Delete the server session (best effort) and the local keys; never raises.

        The client can be used again afterwards, starting with generate_keys.
        """
        with self._lock:
            self._session.delete()
            self._reset_inputs()
            self._fhe = None
            self._evaluation_key_preview = None
            self._evaluation_key_size = None
            shutil.rmtree(self.key_dir, ignore_errors=True)
            self._session.close()

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
        self._batch_fhe_execution_time: float | None = None

    def _send(self, party: str, fields: dict[str, Any]) -> None:
        """Check, quantize, encrypt and upload one party's fields."""
        with self._lock:
            quantized = self._preprocessor(party).transform(fields)
            session_id = self._require_session()
            position = PARTIES.index(party)
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
        session_id = self._session.session_id
        if self._fhe is None or session_id is None:
            raise StepOrderError(
                "generate the keys (and open a server session) first", code="order_keys_first"
            )
        return session_id

    def _preprocessor(self, party: str) -> PartyPreprocessor:
        """One party's preprocessor, from ``preprocessing_path`` (cached)."""
        return load_party_preprocessor(self.preprocessing_path, party)

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

    def _request(
        self, method: str, path: str, *, expected: tuple[int, ...], content: bytes | None = None
    ) -> httpx.Response:
        """Send one request of the current session (``ServerSession.request``).

        When the server lost the session, it is resumed if ``resume_lost_sessions`` (and keys
        exist); else every party's inputs are forgotten and SessionNotFoundError raised.
        """
        resume = self._resume if self.resume_lost_sessions and self._fhe is not None else None
        try:
            return self._session.request(
                method, path, content=content, expected=expected, resume=resume
            )
        except SessionNotFoundError:
            if self._session.session_id is None:
                self._reset_inputs()
            raise

    def _resume(self, lost: str, path: str) -> None:
        """Open a new session with the same keys and upload again what ``path`` needs.

        The ciphertexts sent so far are uploaded again (and predict run again before fetching a
        verdict); nothing is encrypted again.
        """
        session_id = self._session.open(self._fhe_client().evaluation_keys.serialize())
        for party, ciphertext in self._ciphertexts.items():
            self._request(
                "PUT",
                INPUT_PATH.format(session_id=session_id, party=party),
                content=ciphertext,
                expected=(200, 204),
            )
        if self._predicted and path == OUTPUT_PATH.format(session_id=lost):
            self._request("POST", PREDICT_PATH.format(session_id=session_id), expected=(200,))
