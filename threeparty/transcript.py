"""Party identities and the signed transcript of a three-party session.

The server is not trusted: everything a party uploads is signed by that party's long-term
identity key (Ed25519, PyNaCl), and every party checks every signature before it uses anything.

- An *identity* is an Ed25519 signing key kept in the party's own folder (``identity.key``, 0600);
  its public *verify key* (32 bytes) is what the session's roster lists, and its *fingerprint*
  (``fingerprint``) is what people compare out of band.
- A *statement* says who did which step of which session and what it built on: the session id,
  the role, the step, the SHA-256 of each blob it uploads, and ``refs``, the hashes of the
  material it used (another party's public key, the challenge it decrypted, the partial it will
  reveal...). It is canonical JSON, signed under a domain-separation prefix; the signed
  *envelope* is what the server stores and relays (``{"statement": {...}, "signature": hex}``).
- ``Transcript`` is a party's verified view: it checks each envelope against the roster (right
  key, right session, right role and step) and then each downloaded blob against the hash its
  statement signed. Anything that does not check raises ``TranscriptError`` naming what was
  tampered with.

This module imports nothing heavy (no openfhe): the server and the page's process use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from contracts.parties import PARTIES
from threeparty import protocol

STATEMENT_VERSION = "3pty/2"
STATEMENT_PREFIX = b"threeparty statement v2\x00"
JOIN_PREFIX = b"threeparty join v2\x00"
IDENTITY_FILE = "identity.key"
VERIFY_KEY_BYTES = 32
FINGERPRINT_HEX = 20


class TranscriptError(Exception):
    """A statement, signature, roster or blob that does not check.

    Attributes:
        code: "bad_signature", "wrong_roster", "tampered", "replayed", "bad_chain" or
            "bad_statement".
    """

    def __init__(self, message: str, code: str):
        """Build the error."""
        super().__init__(message)
        self.code = code


def digest(data: bytes) -> str:
    """SHA-256 of ``data`` as hex (what statements sign for each blob)."""
    return hashlib.sha256(bytes(data)).hexdigest()


def fingerprint(verify_key: bytes) -> str:
    """A verify key's fingerprint for comparison out of band: 20 hex digits in groups of 4."""
    text = hashlib.sha256(b"threeparty fingerprint\x00" + bytes(verify_key)).hexdigest()
    text = text[:FINGERPRINT_HEX]
    return "-".join(text[i : i + 4] for i in range(0, FINGERPRINT_HEX, 4))


def normalize_fingerprint(value: str) -> str:
    """A fingerprint as typed (any case, with or without dashes or spaces) in canonical form.

    A full verify key (64 hex digits) is accepted too and turned into its fingerprint.

    Raises:
        ValueError: when ``value`` is neither.
    """
    text = "".join(ch for ch in value.strip().lower() if ch not in "- :")
    if len(text) == 2 * VERIFY_KEY_BYTES and _is_hex(text):
        return fingerprint(bytes.fromhex(text))
    if len(text) != FINGERPRINT_HEX or not _is_hex(text):
        raise ValueError(
            f"a fingerprint is {FINGERPRINT_HEX} hex digits (xxxx-xxxx-xxxx-xxxx-xxxx), "
            f"or a verify key of {2 * VERIFY_KEY_BYTES}; got {value!r}"
        )
    return "-".join(text[i : i + 4] for i in range(0, FINGERPRINT_HEX, 4))


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdef" for ch in text)


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (sorted keys, no spaces, ASCII)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def roster_digest(roster: Mapping[str, str]) -> str:
    """SHA-256 of the roster ({role: verify key hex}), which every round-1 statement signs."""
    return digest(canonical({role: roster[role] for role in PARTIES}))


def join_message(session_id: str, role: str, token_digest: str) -> bytes:
    """What a party signs to redeem its invitation for the credential ``token_digest``."""
    return JOIN_PREFIX + canonical({"session": session_id, "role": role, "token": token_digest})


@dataclass(frozen=True)
class Identity:
    """A party's long-term signing key (secret: it stays in the party's folder).

    Attributes:
        signing_key: the Ed25519 signing key.
    """

    signing_key: SigningKey

    def __repr__(self) -> str:
        return f"Identity(fingerprint={self.fingerprint!r})"

    @property
    def verify_key(self) -> bytes:
        """The public verify key (32 bytes), for the roster."""
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        """The verify key's fingerprint."""
        return fingerprint(self.verify_key)

    @classmethod
    def load_or_create(cls, directory: Path) -> Identity:
        """Read ``directory/identity.key``, or make one (file 0600, folder 0700).

        Raises:
            OSError: when the folder cannot be made or the file read.
            ValueError: when the file is not a 32-byte key.
        """
        directory = Path(directory)
        path = directory / IDENTITY_FILE
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ValueError(f"{path} is not an identity key (32 bytes)")
            return cls(SigningKey(seed))
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = SigningKey.generate()
        temporary = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(bytes(key))
        os.replace(temporary, path)
        return cls(key)

    def sign(self, statement: Mapping[str, Any]) -> dict[str, Any]:
        """The signed envelope of ``statement``."""
        signed = self.signing_key.sign(STATEMENT_PREFIX + canonical(dict(statement)))
        return {"statement": dict(statement), "signature": signed.signature.hex()}

    def sign_join(self, session_id: str, role: str, token_digest: str) -> str:
        """The signature (hex) that redeems an invitation."""
        return self.signing_key.sign(join_message(session_id, role, token_digest)).signature.hex()

    def join_request(
        self, session_id: str, role: str, invitation: str, token_digest: str
    ) -> dict[str, str]:
        """The JSON body of ``protocol.JOIN`` that redeems ``role``'s invitation (its secret)."""
        return {
            "role": role,
            "invitation": invitation,
            "token_digest": token_digest,
            "signature": self.sign_join(session_id, role, token_digest),
        }

    def signed_step(
        self,
        session_id: str,
        role: str,
        step: str,
        blobs: Mapping[str, bytes],
        refs: Mapping[str, str] | None = None,
    ) -> bytes:
        """The body of a ``protocol.STEP`` upload: the blobs and the signed statement over them."""
        statement = make_statement(session_id, role, step, blobs, refs)
        envelope = canonical(self.sign(statement))
        return protocol.pack({**blobs, protocol.STATEMENT_BLOB: envelope})


def make_statement(
    session_id: str,
    role: str,
    step: str,
    blobs: Mapping[str, bytes],
    refs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A statement: who did ``step`` of which session, the hashes of its blobs, what it used."""
    return {
        "version": STATEMENT_VERSION,
        "session": session_id,
        "role": role,
        "step": step,
        "blobs": {name: digest(data) for name, data in sorted(blobs.items())},
        "refs": dict(sorted((refs or {}).items())),
    }


def verify_signature(verify_key: bytes, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Check an envelope's signature; return its statement.

    Raises:
        TranscriptError: bad_statement (malformed) or bad_signature.
    """
    try:
        statement = envelope["statement"]
        signature = bytes.fromhex(envelope["signature"])
        message = STATEMENT_PREFIX + canonical(statement)
    except (KeyError, TypeError, ValueError) as error:
        raise TranscriptError(f"a malformed signed statement ({error})", "bad_statement") from None
    if not isinstance(statement, dict):
        raise TranscriptError("a malformed signed statement", "bad_statement")
    try:
        VerifyKey(bytes(verify_key)).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        who = statement.get("role", "?")
        raise TranscriptError(
            f"the {who}'s statement for step {statement.get('step', '?')!r} has a signature "
            "that does not verify with its roster key (forged or altered)",
            "bad_signature",
        ) from None
    return statement


def verify_join(verify_key: bytes, session_id: str, role: str, token: str, signature: str) -> bool:
    """Whether ``signature`` (hex) redeems ``role``'s invitation for ``token`` (a digest)."""
    try:
        VerifyKey(bytes(verify_key)).verify(
            join_message(session_id, role, token), bytes.fromhex(signature)
        )
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


class Transcript:
    """A party's verified view of a session's signed statements.

    Args:
        session_id: the session.
        roster: {role: verify key (32 bytes)}, already checked against the fingerprints the
            party was given out of band (``check_roster``).
    """

    def __init__(self, session_id: str, roster: Mapping[str, bytes]):
        """Start an empty view."""
        self.session_id = session_id
        self.roster = {role: bytes(key) for role, key in roster.items()}
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}

    def has(self, role: str, step: str) -> bool:
        """Whether ``role``'s statement for ``step`` is verified."""
        return (role, step) in self._verified

    def statement(self, role: str, step: str) -> dict[str, Any]:
        """A verified statement.

        Raises:
            KeyError: when it is not (yet) verified.
        """
        return self._verified[(role, step)]

    def absorb(self, envelopes: Mapping[str, Mapping[str, Any]]) -> None:
        """Verify every envelope of a status's ``transcript`` ({role: {step: envelope}}).

        A statement verified once must stay the same: a server that later shows another one
        for the same role and step is caught.

        Raises:
            TranscriptError: on any envelope that does not check.
        """
        for role, steps in envelopes.items():
            if role not in self.roster:
                raise TranscriptError(f"a statement from an unknown role {role!r}", "tampered")
            for step, envelope in steps.items():
                statement = verify_signature(self.roster[role], envelope)
                if statement.get("version") != STATEMENT_VERSION:
                    raise TranscriptError(
                        f"the {role}'s statement for {step!r} has another version", "bad_statement"
                    )
                if statement.get("session") != self.session_id:
                    raise TranscriptError(
                        f"the {role}'s statement for {step!r} was made for another session "
                        "(replayed)",
                        "replayed",
                    )
                if statement.get("role") != role or statement.get("step") != step:
                    raise TranscriptError(
                        f"a statement shown as the {role}'s {step!r} is the "
                        f"{statement.get('role')}'s {statement.get('step')!r} (moved)",
                        "tampered",
                    )
                known = self._verified.get((role, step))
                if known is not None and known != statement:
                    raise TranscriptError(
                        f"the server now shows another {role}'s statement for {step!r}",
                        "tampered",
                    )
                self._verified[(role, step)] = statement

    def check_blob(self, role: str, step: str, name: str, data: bytes) -> bytes:
        """Return ``data`` if it is the blob ``name`` that ``role`` signed for ``step``.

        Raises:
            TranscriptError: tampered, when the bytes differ from what was signed.
            KeyError: when the statement is not verified yet.
        """
        expected = self.statement(role, step)["blobs"].get(name)
        if expected is None or digest(data) != expected:
            raise TranscriptError(
                f"the {role}'s {name} ({step}) the server handed over is not the one the "
                f"{role} signed (tampered)",
                "tampered",
            )
        return data

    def ref(self, role: str, step: str, name: str) -> str:
        """A hash a verified statement refers to (``refs[name]``).

        Raises:
            TranscriptError: bad_statement when it is missing.
        """
        value = self.statement(role, step)["refs"].get(name)
        if not isinstance(value, str):
            raise TranscriptError(
                f"the {role}'s statement for {step!r} lacks {name!r}", "bad_statement"
            )
        return value

    def digest_of(self, steps: Mapping[str, str] | None = None) -> str:
        """SHA-256 over the verified statements (all, or {role: step} pairs), in a fixed order."""
        keys = sorted(self._verified) if steps is None else sorted(steps.items())
        return digest(canonical([self._verified[key] for key in keys]))


def check_roster(
    roster: Mapping[str, str], own_role: str, own_key: bytes, expected: Mapping[str, str]
) -> dict[str, bytes]:
    """Check a session's roster against what the party knows out of band.

    Args:
        roster: the session's roster as the server shows it ({role: verify key hex}).
        own_role: the checking party's role.
        own_key: its own verify key.
        expected: {role: fingerprint} of the two other parties, from out of band.

    Returns:
        {role: verify key bytes}.

    Raises:
        TranscriptError: wrong_roster, naming the role whose key is not the expected one.
    """
    keys: dict[str, bytes] = {}
    for role in PARTIES:
        try:
            key = bytes.fromhex(str(roster[role]))
        except (KeyError, ValueError):
            raise TranscriptError(
                f"the session's roster has no key for the {role}", "wrong_roster"
            ) from None
        if len(key) != VERIFY_KEY_BYTES:
            raise TranscriptError(f"the roster's key for the {role} is malformed", "wrong_roster")
        keys[role] = key
    if keys[own_role] != bytes(own_key):
        raise TranscriptError(
            f"the session's roster lists another key for this party ({own_role}): it was not "
            "created with this party's identity",
            "wrong_roster",
        )
    for role in PARTIES:
        if role == own_role:
            continue
        if role not in expected:
            raise TranscriptError(
                f"no fingerprint given for the {role}: compare it out of band and pass it",
                "wrong_roster",
            )
        if fingerprint(keys[role]) != normalize_fingerprint(expected[role]):
            raise TranscriptError(
                f"the {role}'s key in the session's roster has fingerprint "
                f"{fingerprint(keys[role])}, not the {normalize_fingerprint(expected[role])} "
                "given out of band",
                "wrong_roster",
            )
    return keys
