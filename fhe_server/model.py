"""The deployed model: its files, the library-version check, wire-format checks and FHE runs."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from concrete import fhe

import settings
from contracts.parties import PARTIES
from contracts.single_key import BATCH_INPUTS, CANDIDATES
from fhe_server.concrete_runtime import start_concrete_runtime
from fhe_server.errors import InvalidPayloadError

logger = logging.getLogger("fhe_server")

SERVER_ARTIFACT_NAME = settings.SERVER_ARTIFACT_PATH.name
MODEL_CARD_NAME = settings.MODEL_CARD_PATH.name
# Room kept for the encrypted outputs when checking the disk budget before creating a session.
OUTPUT_RESERVE_BYTES = 64 * 1024


def installed_versions() -> dict[str, str]:
    """Versions of what the artifacts depend on, as installed here."""
    found = {"python": platform.python_version()}
    for package in ("concrete-python", "concrete-ml"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def version_mismatches(built: dict[str, Any], installed: dict[str, str]) -> list[str]:
    """Describe each difference between the versions the artifacts were built with and ours.

    Python must match on major.minor, concrete-python and concrete-ml exactly.
    """
    problems = []
    for name in ("python", "concrete-python", "concrete-ml"):
        want, have = str(built.get(name, "missing")), installed.get(name, "not installed")
        same = want.split(".")[:2] == have.split(".")[:2] if name == "python" else want == have
        if not same:
            problems.append(f"{name}: artifacts built with {want}, installed {have}")
    return problems


@dataclass(frozen=True)
class WireFormat:
    """Exact byte length and fixed leading bytes of one serialized input or key set."""

    length: int
    prefix: bytes

    def check(self, data: bytes, what: str) -> None:
        """Reject bytes that cannot be this object, before any native deserializer sees them.

        Raises:
            InvalidPayloadError: if the length or the header differ.
        """
        if len(data) != self.length:
            raise InvalidPayloadError(
                f"{what} must be exactly {self.length} bytes for this model, got {len(data)}"
            )
        if not data.startswith(self.prefix):
            raise InvalidPayloadError(f"{what} does not have this model's serialization header")


class FHEModel:
    """The deployed FHE module (``fhe.Server``) and its model card."""

    def __init__(self, server: Any, card: dict[str, Any]):
        """Wrap a loaded ``fhe.Server`` and its model card (use ``FHEModel.load``)."""
        self.server = server
        self.card = card
        self.wire = {
            name: WireFormat(length=int(spec["bytes"]), prefix=bytes.fromhex(spec["prefix_hex"]))
            for name, spec in card["wire_format"].items()
        }

    @classmethod
    def load(cls, deployment_dir: Path) -> FHEModel:
        """Load the server artifact and the model card, refusing anything unusable.

        Raises:
            RuntimeError: with an explanation if a file is missing or unreadable, or if the
                artifacts were built with other library versions than the installed ones.
        """
        deployment_dir = Path(deployment_dir)
        artifact, card_path = (
            deployment_dir / SERVER_ARTIFACT_NAME,
            deployment_dir / MODEL_CARD_NAME,
        )
        missing = [str(path) for path in (artifact, card_path) if not path.is_file()]
        if missing:
            raise RuntimeError(
                f"deployment files missing: {', '.join(missing)}; "
                "regenerate them with `python -m development.train`"
            )
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            built = card["versions"]
            wire = card["wire_format"]
            needed = {"evaluation_keys", CANDIDATES, *PARTIES, *BATCH_INPUTS.values()}
            if not isinstance(built, dict) or not needed <= set(wire):
                raise KeyError(f"wire_format needs {sorted(needed)}")
            for spec in wire.values():
                int(spec["bytes"]), bytes.fromhex(spec["prefix_hex"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RuntimeError(f"model card {card_path} is unreadable: {error!r}") from error
        problems = version_mismatches(built, installed_versions())
        if problems:
            raise RuntimeError(
                "refusing to start: the deployment files were built with other library versions ("
                + "; ".join(problems)
                + "). Install the versions they were built with, or rebuild them with "
                "`python -m development.train`."
            )
        # Before any circuit runs here, or the runtime's handler aborts the server on SIGPIPE.
        start_concrete_runtime()
        try:
            server = fhe.Server.load(artifact)
        except Exception as error:  # the native loader raises several types
            raise RuntimeError(
                f"cannot load the FHE server artifact {artifact}: {error}"
            ) from error
        return cls(server=server, card=card)

    def summary(self) -> dict[str, Any]:
        """What /health tells about the model."""
        return {
            "versions": self.card["versions"],
            "parameters": self.card.get("parameters", {}),
            "input_shapes": self.card.get("input_shapes", {}),
        }

    def session_reserve_bytes(self) -> int:
        """Disk space one full session can take (keys, every input and the outputs)."""
        return (
            self.wire["evaluation_keys"].length
            + sum(self.wire[party].length for party in PARTIES)
            + OUTPUT_RESERVE_BYTES
        )

    def evaluation_keys(self, data: bytes) -> Any:
        """Check and deserialize ("prepare") evaluation keys.

        Raises:
            InvalidPayloadError: if the bytes are not evaluation keys of this model.
        """
        self.wire["evaluation_keys"].check(data, "evaluation keys")
        try:
            return fhe.EvaluationKeys.deserialize(data)
        except (RuntimeError, MemoryError) as error:
            raise InvalidPayloadError("the evaluation keys do not deserialize") from error

    def value(self, name: str, data: bytes) -> Any:
        """Check and deserialize one ciphertext (``name`` is a party or "candidates").

        Raises:
            InvalidPayloadError: if the bytes are not a ciphertext of that input's shape.
        """
        what = f"the {name} ciphertext"
        self.wire[name].check(data, what)
        try:
            return fhe.Value.deserialize(data)
        except (RuntimeError, MemoryError) as error:
            raise InvalidPayloadError(f"{what} does not deserialize") from error

    def run(
        self, function_name: str, values: list[Any], evaluation_keys: Any
    ) -> tuple[bytes, float]:
        """Run one function of the module; return the serialized result and the run time.

        Raises:
            InvalidPayloadError: if the native runtime rejects the ciphertexts or keys.
        """
        start = time.perf_counter()
        try:
            result = self.server.run(
                *values, evaluation_keys=evaluation_keys, function_name=function_name
            )
        except (RuntimeError, MemoryError) as error:
            logger.warning("FHE %s rejected the session's inputs: %s", function_name, error)
            raise InvalidPayloadError(
                "the ciphertexts cannot be evaluated with this session's evaluation keys"
            ) from error
        elapsed = time.perf_counter() - start
        return result.serialize(), elapsed
