"""What the three-party tests share: identities, sessions, raw signed uploads, a relay.

- ``Kit``: the three parties' identity keys (each in its own folder) and the roster.
- ``RawParty``: one party's raw HTTP access (it joins with its identity and uploads signed steps
  it builds itself), to check the server's refusals one by one.
- ``Relay``: an httpx transport in front of the real server that sees exactly what a server sees
  and can rewrite any answer: the malicious server of the attack tests.
- ``play``: the three ``PartyClient``s of a session in threads (each through the relay, if any).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from threeparty import processes, protocol
from threeparty.party import PartyClient, PartyError, delete_session
from threeparty.transcript import Identity

APPLICANT = processes.EXAMPLE_APPLICANT
FIELDS: dict[str, dict[str, Any]] = {
    "applicant": APPLICANT,
    "bank": {"account_age": 30},
    "credit_bureau": {"employed": True, "years_employed": "11-18"},
}


@dataclass
class Kit:
    """The three parties' identities, each kept in ``root``/<role> as its party keeps it."""

    root: Path
    identities: dict[str, Identity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in protocol.ROLES:
            self.identities[role] = Identity.load_or_create(self.root / role)

    @property
    def roster(self) -> dict[str, str]:
        """{role: verify key hex}."""
        return {role: i.verify_key.hex() for role, i in self.identities.items()}

    def peers(self, role: str) -> dict[str, str]:
        """The two other parties' fingerprints (what ``role`` is given out of band)."""
        return {r: i.fingerprint for r, i in self.identities.items() if r != role}


def create(url: str, kit: Kit, mode: str = "predict") -> dict[str, Any]:
    """A new session for the kit's roster (the server's answer)."""
    response = httpx.post(
        f"{url}{protocol.SESSIONS}", json={"mode": mode, "roster": kit.roster}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()


class RawParty:
    """One party's raw access to a session: it joins and uploads steps it signs itself."""

    def __init__(self, url: str, created: Mapping[str, Any], role: str, identity: Identity):
        self.role = role
        self.identity = identity
        self.session_id, self.secret = protocol.parse_session_code(created["invitations"][role])
        self.token = secrets.token_urlsafe(32)
        self.http = httpx.Client(base_url=url, timeout=120)

    def join(self, signer: Identity | None = None) -> httpx.Response:
        """Redeem the invitation (signed by ``signer``, default this party's identity)."""
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        signer = signer or self.identity
        response = self.http.post(
            protocol.JOIN.format(sid=self.session_id),
            json=signer.join_request(self.session_id, self.role, self.secret, digest),
        )
        if response.status_code == 204:
            self.http.headers["Authorization"] = f"Bearer {self.token}"
        return response

    def call(
        self,
        method: str,
        route: str,
        content: bytes | None = None,
        media_type: str = protocol.OCTET_STREAM,
        **values: str,
    ):
        headers = {"Content-Type": media_type} if content is not None else {}
        url = route.format(sid=self.session_id, **values)
        return self.http.request(method, url, content=content, headers=headers)

    def body(
        self,
        step: str,
        blobs: Mapping[str, bytes],
        refs: Mapping[str, str] | None = None,
        signer: Identity | None = None,
        session_id: str | None = None,
    ) -> bytes:
        """A step's upload: its blobs and a statement signed by ``signer`` (default: own)."""
        return (signer or self.identity).signed_step(
            session_id or self.session_id, self.role, step, blobs, refs
        )

    def put(self, step: str, blobs: Mapping[str, bytes], **kwargs: Any) -> httpx.Response:
        """Upload a signed step."""
        return self.call("PUT", protocol.STEP, self.body(step, blobs, **kwargs), step=step)

    def status(self) -> dict[str, Any]:
        return self.call("GET", protocol.STATUS).json()


def raw_parties(url: str, kit: Kit, mode: str = "predict") -> dict[str, RawParty]:
    """A new session's three raw parties, joined."""
    created = create(url, kit, mode)
    parties = {r: RawParty(url, created, r, kit.identities[r]) for r in protocol.ROLES}
    for party in parties.values():
        assert party.join().status_code == 204
    return parties


Rewrite = Callable[[httpx.Request, httpx.Response], httpx.Response | None]


class Relay(httpx.BaseTransport):
    """A malicious server: forwards every request to the real one and may rewrite its answer.

    ``rewrite(request, response)`` sees each exchange (the answer's body already read) and
    returns another response, or None to pass it on. ``seen`` keeps every exchange, as a server
    would see it.
    """

    def __init__(self, rewrite: Rewrite | None = None):
        self.rewrite = rewrite
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[httpx.Request, httpx.Response]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self.inner.handle_request(request)
        response.read()
        response.request = request
        with self.lock:
            self.seen.append((request, response))
        changed = self.rewrite(request, response) if self.rewrite else None
        return changed if changed is not None else response

    def close(self) -> None:
        """Shared by the three clients: the first to finish must not close it for the others."""


def json_response(response: httpx.Response, data: Any) -> httpx.Response:
    """The same answer with another JSON body."""
    return httpx.Response(response.status_code, json=data, request=response.request)


def bytes_response(response: httpx.Response, data: bytes) -> httpx.Response:
    """The same answer with another binary body."""
    return httpx.Response(
        response.status_code,
        content=data,
        headers={"content-type": "application/octet-stream"},
        request=response.request,
    )


def is_status(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.endswith("/status")


def is_blob(request: httpx.Request, step: str, role: str, name: str) -> bool:
    return request.method == "GET" and request.url.path.endswith(f"/steps/{step}/{role}/{name}")


@dataclass
class Outcome:
    """What each party's run gave: its result, or its error; and its JSON progress lines."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, PartyError] = field(default_factory=dict)
    crashes: dict[str, BaseException] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def steps(self, role: str) -> list[str]:
        return [event["step"] for event in self.events.get(role, [])]


def play(
    url: str,
    kit: Kit,
    created: Mapping[str, Any],
    fields: Mapping[str, Mapping[str, Any]] = FIELDS,
    relay: Relay | None = None,
    clients: Mapping[str, type[PartyClient]] | None = None,
    wait: float = 120.0,
    delete: bool = True,
) -> Outcome:
    """Run the three parties of ``created`` in threads (through ``relay`` when given).

    The session is deleted afterwards (the server holds a few only) unless ``delete`` is false.
    """
    outcome = Outcome()

    def run(role: str) -> None:
        events = outcome.events.setdefault(role, [])
        client_class = (clients or {}).get(role, PartyClient)
        try:
            with client_class(
                role,
                url,
                created["invitations"][role],
                kit.root / role,
                kit.peers(role),
                wait,
                on_progress=events.append,
                transport=relay,
            ) as client:
                outcome.results[role] = client.run(fields[role])
        except PartyError as error:
            outcome.errors[role] = error
        except Exception as error:  # a party client must never crash: the test reports it
            outcome.crashes[role] = error

    threads = [threading.Thread(target=run, args=(role,)) for role in protocol.ROLES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for role in protocol.ROLES if delete else ():
        try:
            delete_session(url, kit.root / role, created["invitations"][role])
            break
        except PartyError:
            continue
    assert not outcome.crashes, outcome.crashes
    return outcome


def statement_of(status: Mapping[str, Any], role: str, step: str) -> dict[str, Any]:
    """A copy of a signed envelope in a status's transcript."""
    return json.loads(json.dumps(status["transcript"][role][step]))
