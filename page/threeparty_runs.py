"""A three-party run from the page's process: three party processes, their JSON lines.

The threshold engine (OpenFHE) runs in ``.venv-threeparty`` (Python 3.12 or 3.10); this module
imports neither it nor anything heavy of ``threeparty``: ``threeparty.processes`` starts each party
(``python -m threeparty ...``, built by the pure ``threeparty.command``) as it does for the tests
and the benchmark. Each party
is a separate OS process of ``.venv-threeparty/bin/python`` with its own key folder under the
page's keys folder, removed when the run ends. Every time-out comes from ``ThreePartyConfig``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

import settings
from contracts.parties import PARTIES
from contracts.threeparty import SESSION, SESSIONS
from contracts.wire import bearer
from page.config import TP_PYTHON, ThreePartyConfig
from threeparty import command
from threeparty.processes import identities, start_party

ROLES = PARTIES  # the three roles, in key-generation order
MODE = "explain"  # one evaluation gives the verdict (block 0) and the six years-employed bins
YES = "yes"  # the employed radio's value for "yes" (page.sections.inputs.YES)
PROBE_TIMEOUT_SECONDS = ThreePartyConfig.probe_timeout


def unavailable_reason(
    python: Path | None = None, timeout: float = PROBE_TIMEOUT_SECONDS
) -> tuple[str, str] | None:
    """Why the mode cannot run here: (translation key, detail), or None when it can.

    Args:
        python: the engine's interpreter (default ``TP_PYTHON``); checked once per path.
        timeout: seconds for ``python -c "import openfhe"``.
    """
    return _unavailable_reason(python or TP_PYTHON, timeout)


@lru_cache(maxsize=4)
def _unavailable_reason(python: Path, timeout: float) -> tuple[str, str] | None:
    if not python.exists():
        return "tp_missing_env", str(python)
    try:
        probe = subprocess.run(
            [str(python), "-c", "import openfhe"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=command.party_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return "tp_no_openfhe", str(error)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return "tp_no_openfhe", lines[-1] if lines else f"exit code {probe.returncode}"
    return None


@dataclass
class FlowState:
    """What the three processes have reported so far."""

    events: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {role: {} for role in ROLES}
    )
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def add(self, role: str, event: dict[str, Any]) -> None:
        """Record one JSON line of a party (an error: its code and message)."""
        if event.get("step") == "error":
            self.errors[role] = (str(event.get("code")), str(event.get("message", "error")))
        self.events[role][str(event.get("step"))] = event


def party_fields(
    applicant_values: Sequence[Any], bank_values: Sequence[Any], bureau_values: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """Each party's fields from the page's components (``page.sections.inputs.layout``'s order).

    Args:
        applicant_values: assets, children, household, income, age, then the five categories.
        bank_values: account age.
        bureau_values: employed (radio: "yes"/"no"), years employed.
    """
    assets, children, household, income, age, *categories = applicant_values
    owned = set(assets or ())
    applicant = {name: name in owned for name in ("own_car", "own_property", "mobile_phone")}
    whole = {"num_children": children, "household_size": household, "age": age}
    applicant.update({k: int(round(v)) if isinstance(v, float) else v for k, v in whole.items()})
    applicant["total_income"] = income
    applicant.update(dict(zip(settings.APPLICANT_FIELDS[7:], categories, strict=True)))
    (account_age,) = bank_values
    employed, years = bureau_values
    bank = {
        "account_age": int(round(account_age)) if isinstance(account_age, float) else account_age
    }
    bureau = {"employed": employed == YES if isinstance(employed, str) else employed}
    bureau["years_employed"] = years
    return {"applicant": applicant, "bank": bank, "credit_bureau": bureau}


def _read_lines(role: str, stream: Any, events: queue.Queue[tuple[str, Any]]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            events.put((role, json.loads(line)))
    events.put((role, None))


def _delete_session(config: ThreePartyConfig, url: str, keys_root: Path, session_id: str) -> None:
    """Delete the session with the token the applicant's process chose (best effort)."""
    with contextlib.suppress(httpx.HTTPError, OSError):
        token = (keys_root / "applicant" / f"session-{session_id}" / "token").read_text()
        httpx.delete(
            url + SESSION.format(sid=session_id),
            headers=bearer(token),
            timeout=config.delete_timeout,
        )


def run_parties(
    config: ThreePartyConfig, url: str, fields: dict[str, dict[str, Any]], keys_root: Path
) -> Iterator[FlowState]:
    """Create a session, run the three party processes, yield the state after each event.

    Each party's process makes its identity key in its own folder (``identities``); the session
    is created for the roster of their verify keys, and each party gets the two others'
    fingerprints (in a real deployment, compared out of band). The key folders
    (``keys_root``/<role>) and the session are removed at the end, whatever happens; processes
    still running then are killed.

    Raises:
        TimeoutError: the run took longer than ``config.flow_timeout``.
        httpx.HTTPError: the server refused the session.
    """
    known = identities(keys_root, python=config.python, timeout=config.identity_timeout)
    roster = {role: known[role]["verify_key"] for role in ROLES}
    created = httpx.post(
        url + SESSIONS, json={"mode": MODE, "roster": roster}, timeout=config.request_timeout
    )
    created.raise_for_status()
    invitations = created.json()["invitations"]
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    processes: dict[str, subprocess.Popen[str]] = {}
    state = FlowState(fingerprints={role: known[role]["fingerprint"] for role in ROLES})
    try:
        for role in ROLES:
            peers = {other: known[other]["fingerprint"] for other in ROLES if other != role}
            process = start_party(
                url,
                role,
                invitations[role],
                fields[role],
                keys_root / role,
                config.party_wait,
                peers,
                python=config.python,
                stderr=subprocess.DEVNULL,
            )
            processes[role] = process
            threading.Thread(
                target=_read_lines, args=(role, process.stdout, events), daemon=True
            ).start()
        open_streams = set(ROLES)
        deadline = time.monotonic() + config.flow_timeout
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                role, event = events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError from None
            if event is None:
                open_streams.discard(role)
                continue
            state.add(role, event)
            yield state
        for role, process in processes.items():
            if process.wait(timeout=config.exit_timeout) != 0 and role not in state.errors:
                state.errors[role] = ("exit", f"exit code {process.returncode}")
        yield state
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        _delete_session(config, url, keys_root, created.json()["session_id"])
        shutil.rmtree(keys_root, ignore_errors=True)
