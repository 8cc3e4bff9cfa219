"""The key kit: one real client key set that encrypts applications and decrypts the answers.

``Kit`` is what the tests that talk raw HTTP to the server use instead of the client library
(``CARD`` and ``WIRE`` are the committed model card and the sizes of what a kit sends). The root
conftest gives each test module one kit as the ``kit`` fixture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from concrete import fhe

import settings
from backend import PartyPreprocessor
from tests.support.applications import CANDIDATE_ROWS, Profile

CARD: dict[str, Any] = json.loads(settings.MODEL_CARD_PATH.read_text(encoding="utf-8"))
WIRE: dict[str, dict[str, Any]] = CARD["wire_format"]


@dataclass
class Kit:
    """One client key set (secret key in memory) and helpers to encrypt and decrypt with it."""

    client: Any
    evaluation_keys: bytes
    preprocessors: dict[str, PartyPreprocessor] = field(default_factory=PartyPreprocessor.load_all)

    @classmethod
    def generate(cls) -> Kit:
        """Generate a new key set from the committed client specs."""
        specs = fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes())
        client = fhe.Client(specs)
        client.keygen(force=True)
        return cls(client=client, evaluation_keys=client.evaluation_keys.serialize())

    def encrypt(self, profile: Profile) -> dict[str, bytes]:
        """The three parties' serialized ciphertexts of a profile."""
        parts = profile.parts()
        quantized = [self.preprocessors[p].transform(parts[p]) for p in settings.PARTIES]
        values = self.client.encrypt(*quantized, function_name="predict")
        return {p: v.serialize() for p, v in zip(settings.PARTIES, values, strict=True)}

    def encrypt_candidates(self, rows: list[dict[str, Any]] = CANDIDATE_ROWS) -> bytes:
        """The serialized ciphertext of explain's candidate credit-bureau rows."""
        quantized = np.stack([self.preprocessors["credit_bureau"].transform(r) for r in rows])
        _, _, candidates = self.client.encrypt(None, None, quantized, function_name="explain")
        return candidates.serialize()

    def decrypt(self, data: bytes, function_name: str = "predict") -> Any:
        """Decrypt a serialized output of ``function_name``."""
        return self.client.decrypt(fhe.Value.deserialize(data), function_name=function_name)
