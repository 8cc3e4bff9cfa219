"""A bank's portfolio in single-key mode: every application of a CSV scored, CSV to CSV.

One key set is generated (or taken back from the key folder of an interrupted run) and used by
one server session (``--sessions N``: N sessions sharing it). Applications are decided 16 at a
time (``contracts.single_key.BATCH_ROWS``) by one call of the module's ``predict_batch``: each
party's rows are encrypted here, the server runs the tree on all of them in one FHE run (the
bootstrap key's per-call preparation and the call's overhead paid once, the bootstraps of 16
rows spread over both cores) and only this process (the key holder) decrypts, so each
application keeps the privacy of a single one; a last batch shorter than ``SINGLES_BELOW`` is
decided one application at a time, which costs less than a run padded to 16. With
``explain``, each refused application is then sent on its own and explained exactly like one
application (``score_application``). The session's keys are prepared once and stay warm for the
whole portfolio. With two sessions the client's encryption and decryption of one batch overlap
the server's run of another, but each session's first call prepares its own copy of the keys on
the server, so this only pays on a server with a free core and a long portfolio (see the README,
"A bank's portfolio"). Keep N at most the server's ``FHE_KEY_CACHE_SIZE`` (2 by default), or the
sessions evict each other's prepared keys.

Each batch's verdicts are appended to the output CSV as soon as they are decrypted
(``portfolio_csv``); a rerun with the same ``--out`` scores only the applications not there yet,
with the keys left in the key folder. Once every application is written, the file is put in
application order and the keys are deleted. The command is ``credit_portfolio`` (``python -m
credit_portfolio``, installed as ``credit-portfolio``): it reads the settings and passes the
server, the key folder and the deployment files in; this module reads none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from concrete import fhe

from contracts.single_key import BATCH_ROWS
from fhe_client.client import CreditScoringClient
from fhe_client.errors import ServerError
from fhe_client.explanation import explain_application
from fhe_client.keys import KEYS_FILE_NAME, generate_key_file, load_client_specs
from fhe_client.portfolio_csv import (
    Application,
    Verdict,
    VerdictsFile,
)
from fhe_client.retry import retry_while_busy

DEFAULT_SESSIONS = 1
# A batch shorter than this is decided one application at a time: a batch run costs about the
# same for 1 as for 16 applications (the rest is padding), about 0.35 s here with its upload,
# against about 0.1 s per single decision (three uploads, predict, fetch).
SINGLES_BELOW = 4
# In the key folder: where a new key set is generated, and each session's link to the key set.
NEW_KEYS_DIR = ".new"
SESSION_DIR_PREFIX = "session-"
Progress = Callable[[int, int], None]
"""Called with (applications written, applications in the CSV) after each batch."""


@dataclass(frozen=True)
class PortfolioResult:
    """What a call of ``score_portfolio`` did.

    Attributes:
        total: applications in the portfolio.
        scored: applications scored by this call.
        skipped: applications already in the output file (an earlier run).
        complete: whether every application is now in the output file.
        seconds: wall time of the scoring, from the key preparation to the last verdict.
        reused_keys: whether the keys of an interrupted run were used again.
    """

    total: int
    scored: int
    skipped: int
    complete: bool
    seconds: float
    reused_keys: bool


class SharedKeys:
    """One key set in ``key_dir/keys``, handed to each session's client through a hard link."""

    def __init__(self, key_dir: Path, client_specs_path: Path) -> None:
        """Point at the key folder (nothing read or generated yet; see ``prepare``).

        Args:
            key_dir: the key folder.
            client_specs_path: the FHE module's client specs.
        """
        self.key_dir = Path(key_dir)
        self.client_specs_path = Path(client_specs_path)
        self._evaluation_keys: bytes | None = None

    @property
    def path(self) -> Path:
        """The key set's file."""
        return self.key_dir / KEYS_FILE_NAME

    def prepare(self) -> bool:
        """Load the key set left in the folder, or generate and save a new one.

        Returns:
            Whether an existing key set was loaded.
        """
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.is_file():
            client = fhe.Client(load_client_specs(self.client_specs_path))
            try:
                client.keys.load(str(self.path))
                self._evaluation_keys = client.evaluation_keys.serialize()
                return True
            except RuntimeError:  # not a key set of this model: generate a new one
                pass
        # Generated beside the folder's key file, then renamed over it: never half a key set.
        fresh = self.key_dir / NEW_KEYS_DIR
        self._evaluation_keys = generate_key_file(fresh, self.client_specs_path)
        os.replace(fresh / KEYS_FILE_NAME, self.path)
        fresh.rmdir()
        return False

    def link_into(self, session_dir: Path) -> bytes:
        """A ``KeyGenerator``: put the key set in a session's folder, no new keys."""
        if self._evaluation_keys is None:
            raise RuntimeError("prepare the keys first")
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = session_dir / KEYS_FILE_NAME
        target.unlink(missing_ok=True)
        os.link(self.path, target)
        return self._evaluation_keys

    def remove(self) -> None:
        """Delete the key set and the sessions' links; the folder too if nothing else is in it."""
        self.path.unlink(missing_ok=True)
        for own in [self.key_dir / NEW_KEYS_DIR, *self.key_dir.glob(f"{SESSION_DIR_PREFIX}*")]:
            shutil.rmtree(own, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.key_dir.rmdir()


def default_key_dir(out_path: Path, keys_root: Path) -> Path:
    """The key folder of a portfolio: the same for every run writing the same output file.

    Args:
        out_path: the verdicts CSV.
        keys_root: the folder of the client's key folders (the command's is the settings'
            ``client_keys_dir``).
    """
    digest = hashlib.sha256(str(Path(out_path).resolve()).encode()).hexdigest()[:16]
    return Path(keys_root) / f"portfolio-{digest}"


def score_application(
    client: CreditScoringClient, index: int, application: Application, explain: bool
) -> Verdict:
    """Score one application with a client whose session is open (and explain a refusal).

    Raises:
        ClientError: (a subclass) if the server refuses or fails.
    """
    client.send_applicant(**application["applicant"])
    client.send_bank(**application["bank"])
    client.send_credit_bureau(**application["credit_bureau"])
    retry_while_busy(client.predict)
    approved = client.decrypt_verdict()
    if not explain:
        return Verdict(index, approved)
    explanation = retry_while_busy(lambda: explain_application(client))
    years = explanation.years_employed if explanation.outcome == "years_needed" else None
    return Verdict(index, approved, explanation.outcome, years or "")


def score_batch(
    client: CreditScoringClient, batch: Sequence[tuple[int, Application]], explain: bool
) -> list[Verdict]:
    """Decide up to ``BATCH_ROWS`` applications in one FHE run (and explain the refusals).

    The verdicts come from one ``predict_batch`` call; a refused application to be explained is
    then sent on its own (its three inputs, predict, explain), as ``score_application`` does,
    and that run's verdict must agree with the batch's. Fewer than ``SINGLES_BELOW``
    applications (a portfolio's last batch) are decided one by one instead, which costs less
    than a batch run padded to ``BATCH_ROWS``.

    Raises:
        ClientError: (a subclass) if the server refuses or fails.
    """
    if len(batch) < SINGLES_BELOW:
        return [score_application(client, index, app, explain) for index, app in batch]
    approved = retry_while_busy(lambda: client.decide_batch([a for _, a in batch]))
    verdicts = []
    for (index, application), verdict in zip(batch, approved, strict=True):
        if not explain:
            verdicts.append(Verdict(index, verdict))
        elif verdict:
            verdicts.append(Verdict(index, True, "already_approved"))
        else:
            alone = score_application(client, index, application, explain=True)
            if alone.approved:
                raise ServerError(
                    f"application {index}: the batch and the single run disagree",
                    code="bad_response",
                )
            verdicts.append(alone)
    return verdicts


def _work(
    client: CreditScoringClient,
    jobs: queue.SimpleQueue[list[tuple[int, Application]]],
    results: queue.SimpleQueue[list[Verdict] | BaseException],
    stop: threading.Event,
    explain: bool,
) -> None:
    """One session's thread: score batches from ``jobs`` until none is left or stopped."""
    while not stop.is_set():
        try:
            batch = jobs.get_nowait()
        except queue.Empty:
            return
        try:
            results.put(score_batch(client, batch, explain))
        except BaseException as error:  # handed to the main thread, which raises it
            results.put(error)
            return


def score_portfolio(
    server_url: str,
    applications: Sequence[Application],
    out_path: Path,
    *,
    key_dir: Path,
    client_specs_path: Path,
    preprocessing_path: Path,
    explain: bool = False,
    sessions: int = DEFAULT_SESSIONS,
    limit: int | None = None,
    on_progress: Progress | None = None,
) -> PortfolioResult:
    """Score every application not yet in ``out_path`` and append each verdict to it.

    Args:
        server_url: the FHE server's base URL.
        applications: {party: fields} per application (``portfolio_csv.read_applications``).
        out_path: the verdicts CSV, created or continued.
        key_dir: the key folder (the command's default: ``default_key_dir``); its keys are used
            again if an interrupted run left them, and they are deleted once the portfolio is done
            (the folder too, if nothing else is in it).
        client_specs_path: the FHE module's client specs (``deployment_files/client_specs.json``).
        preprocessing_path: each party's preprocessing (``deployment_files/preprocessing.json``).
        explain: also explain each refusal (one more FHE run per refused application).
        sessions: server sessions scoring at once (each one application at a time).
        limit: score at most this many applications in this call.
        on_progress: called after each batch's verdicts are written.

    Returns:
        What was done.

    Raises:
        PortfolioInputError: ``out_path`` is not a verdicts CSV of this portfolio.
        ClientError: (a subclass) the server refused or failed; every verdict decrypted
            before is written.
    """
    started = time.perf_counter()
    output = VerdictsFile(out_path)
    done = output.open(len(applications))
    skipped = len(done)
    todo = [i for i in range(len(applications)) if i not in done][:limit]
    keys = SharedKeys(key_dir, client_specs_path)
    reused = False
    try:
        if todo:
            reused = keys.prepare()

            def new_client(number: int) -> CreditScoringClient:
                return CreditScoringClient(
                    server_url,
                    keys.key_dir / f"{SESSION_DIR_PREFIX}{number}",
                    client_specs_path=client_specs_path,
                    preprocessing_path=preprocessing_path,
                    key_generator=keys.link_into,
                    resume_lost_sessions=True,
                )

            _score(new_client, applications, todo, output, done, explain, sessions, on_progress)
    finally:
        output.close()
    complete = len(done) == len(applications)
    if complete:
        output.rewrite_sorted(done.values())
        keys.remove()
    return PortfolioResult(
        total=len(applications),
        scored=len(done) - skipped,
        skipped=skipped,
        complete=complete,
        seconds=time.perf_counter() - started,
        reused_keys=reused,
    )


def _score(
    new_client: Callable[[int], CreditScoringClient],
    applications: Sequence[Application],
    todo: list[int],
    output: VerdictsFile,
    done: dict[int, Verdict],
    explain: bool,
    sessions: int,
    on_progress: Progress | None,
) -> None:
    """Open the sessions, run their threads and write each batch's verdicts as they come."""
    jobs: queue.SimpleQueue[list[tuple[int, Application]]] = queue.SimpleQueue()
    batches = [todo[i : i + BATCH_ROWS] for i in range(0, len(todo), BATCH_ROWS)]
    for batch in batches:
        jobs.put([(index, applications[index]) for index in batch])
    results: queue.SimpleQueue[list[Verdict] | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    clients: list[CreditScoringClient] = []
    threads: list[threading.Thread] = []
    failure: BaseException | None = None
    try:
        for number in range(max(1, min(sessions, len(batches)))):
            client = new_client(number)
            clients.append(client)
            retry_while_busy(client.generate_keys)
        for client in clients:
            thread = threading.Thread(
                target=_work, args=(client, jobs, results, stop, explain), daemon=True
            )
            thread.start()
            threads.append(thread)
        failure = _collect(results, len(batches), output, done, len(applications), on_progress)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        drained = _drain(results, output, done)
        failure = failure or drained
        for client in clients:
            client.close()  # deletes the server session and the session's link to the keys
    if failure is not None:
        raise failure


def _collect(
    results: queue.SimpleQueue[list[Verdict] | BaseException],
    expected: int,
    output: VerdictsFile,
    done: dict[int, Verdict],
    total: int,
    on_progress: Progress | None,
) -> BaseException | None:
    """Write verdicts as the threads hand them over; return the first failure (or None)."""
    for _ in range(expected):
        while True:
            try:
                item = results.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive
                break
            except queue.Empty:
                continue
        if isinstance(item, BaseException):
            return item
        for verdict in item:
            output.append(verdict)
            done[verdict.application] = verdict
        if on_progress is not None:
            on_progress(len(done), total)
    return None


def _drain(
    results: queue.SimpleQueue[list[Verdict] | BaseException],
    output: VerdictsFile,
    done: dict[int, Verdict],
) -> BaseException | None:
    """Write the verdicts still queued once the threads stopped; return a failure among them."""
    failure = None
    while not results.empty():
        item = results.get()
        if isinstance(item, BaseException):
            failure = failure or item
            continue
        for verdict in item:
            output.append(verdict)
            done[verdict.application] = verdict
    return failure
