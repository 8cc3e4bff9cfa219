"""Server CPU per warm decision, as a server sees it: one predict, then a pause, and again.

``python -m development.profile_decision`` runs the deployed circuit on one key set in a child
process per OpenMP setting (libomp's default ``KMP_BLOCKTIME=200`` and the server's ``0``, see
``fhe_server/concrete_runtime.py``), one warm predict every ``--pause`` seconds, and prints each
child's CPU-seconds per decision (all its threads) and median wall time. With ``--perf`` (Debian:
``apt-get install linux-perf``) it also records the server's own setting with ``perf`` and prints
where a decision's CPU goes: bootstraps, the key switches, the per-call conversion of the
bootstrap key to the Fourier domain (concrete builds a ``RuntimeContext`` for every call), the
OpenMP barriers, the rest. With ``--fresh`` it also times new sessions, as each one costs: the
client's key generation, the server's deserialization of the keys and its first predict on them
(which expands the seeded keys), with ``--perf`` the frames of that that can be named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
SETTINGS = {"libomp default (200 ms spin)": "200", "server (KMP_BLOCKTIME=0)": "0"}
# perf's "children" share of these frames, by what they are.
PERF_FRAMES = {
    "warm": {
        "bootstraps": "memref_bootstrap_lwe_u64",
        "key switches": "concrete_cpu_keyswitch_lwe_ciphertext_u64",
        "bootstrap key to the Fourier domain, every call": "RuntimeContext::RuntimeContext",
        "OpenMP barrier waits": "__kmp_hyper_barrier",
    },
    # Rust frames of a fresh session unwind poorly (most samples land in pulp's vectorized
    # closures), so these are the frames that can be named.
    "fresh": {
        "bootstrap keys to the Fourier domain": "FourierGgswCiphertext",
        "concrete's software random generator": "SoftwareRandomGenerator",
        "page faults (memory for the expanded keys)": "asm_exc_page_fault",
        "OpenMP waits": "__kmp_wait_template",
    },
}
# About one fresh round's time beside its pause (key generation, preparation, first predict).
FRESH_ROUND_SECONDS = 1.2


def child(decisions: int, pause: float, ready: Path | None, phase: str = "warm") -> None:
    """Run in the child: decisions with pauses; print one JSON line of figures.

    ``phase`` "warm": one key set, warm predicts. "fresh": each round a new key set, as a new
    session costs: the client's key generation, the server's deserialization of the keys and
    its first predict on them (which expands the seeded keys).
    """
    from concrete import fhe

    import settings
    from backend import party_preprocessor
    from contracts.examples import EXAMPLE_FIELDS
    from contracts.parties import PARTIES
    from fhe_server.model import FHEModel

    model = FHEModel.load(settings.DEPLOYMENT_DIR)
    client = fhe.Client(fhe.ClientSpecs.deserialize(settings.CLIENT_SPECS_PATH.read_bytes()))
    quantized = [party_preprocessor(p).transform(EXAMPLE_FIELDS[p]) for p in PARTIES]

    def new_session() -> tuple[Any, list[Any], dict[str, float]]:
        """Keys, inputs and the first predict on them, each part timed."""
        start = time.perf_counter()
        client.keygen(force=True)
        keygen = time.perf_counter() - start
        values = client.encrypt(*quantized, function_name="predict")
        start = time.perf_counter()
        keys = model.evaluation_keys(client.evaluation_keys.serialize())
        prepare = time.perf_counter() - start
        inputs = [model.value(p, v.serialize()) for p, v in zip(PARTIES, values, strict=True)]
        start = time.perf_counter()
        model.run("predict", inputs, keys)  # the first run on a key set expands its keys
        first = time.perf_counter() - start
        return keys, inputs, {"keygen": keygen, "prepare": prepare, "first_predict": first}

    keys, inputs, _ = new_session()
    time.sleep(pause)
    if ready is not None:
        ready.write_text(str(os.getpid()))
        time.sleep(1.0)
    walls: dict[str, list[float]] = {}
    cpu = time.process_time()
    for _ in range(decisions):
        if phase == "fresh":
            keys, inputs, parts = new_session()
        else:
            start = time.perf_counter()
            model.run("predict", inputs, keys)
            parts = {"predict": time.perf_counter() - start}
        for name, seconds in parts.items():
            walls.setdefault(name, []).append(seconds)
        time.sleep(pause)
    line = {
        "cpu_per_decision": (time.process_time() - cpu) / decisions,
        "wall_median": statistics.median(walls.get("predict", walls.get("first_predict", [0]))),
        "medians": {name: statistics.median(values) for name, values in walls.items()},
        "blocktime": os.environ.get("KMP_BLOCKTIME"),
    }
    print(json.dumps(line), flush=True)


def run_child(
    blocktime: str, decisions: int, pause: float, perf: bool, phase: str = "warm"
) -> dict:
    """One child process with ``KMP_BLOCKTIME=blocktime``; with ``perf``, its profile too."""
    env = {**os.environ, "KMP_BLOCKTIME": blocktime, "PYTHONPATH": str(REPO_DIR)}
    with tempfile.TemporaryDirectory() as folder:
        ready = Path(folder) / "ready"
        command = [sys.executable, "-m", "development.profile_decision", "--child"]
        command += ["--decisions", str(decisions), "--pause", str(pause), "--phase", phase]
        if perf:
            command += ["--ready", str(ready)]
        process = subprocess.Popen(
            command, cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, text=True
        )
        shares: dict[str, float] = {}
        if perf:
            while not ready.exists() and process.poll() is None:
                time.sleep(0.2)
            data = Path(folder) / "perf.data"
            # Shorter than the child's loop (each decision adds its own time to the pauses):
            # perf stops on its own then, while the child still runs.
            seconds = decisions * (pause if phase == "warm" else pause + FRESH_ROUND_SECONDS)
            subprocess.run(
                ["perf", "record", "-F", "250", "--call-graph", "dwarf,8192", "-o", str(data),
                 "-p", ready.read_text(), "--", "sleep", f"{seconds:.1f}"],
                check=True, capture_output=True,
            )  # fmt: skip
            report = subprocess.run(
                ["perf", "report", "-i", str(data), "--children", "--sort", "sym", "--stdio"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            for name, frame in PERF_FRAMES[phase].items():
                found = [
                    float(line.split("%")[0])
                    for line in report.splitlines()
                    if frame in line and line.strip()[:1].isdigit()
                ]
                shares[name] = max(found, default=0.0)
        out, _ = process.communicate(timeout=600)
    result = json.loads(out.strip().splitlines()[-1])
    result["perf_children_percent"] = shares
    return result


def main() -> None:
    """Parse the arguments; run the children (or be one); print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between decisions")
    parser.add_argument("--perf", action="store_true", help="also profile with Linux perf")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="also profile new sessions: key generation, key preparation, first predict",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--phase", choices=("warm", "fresh"), default="warm", help=argparse.SUPPRESS
    )
    parser.add_argument("--ready", type=Path, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.decisions, arguments.pause, arguments.ready, arguments.phase)
        return
    print(f"load average {os.getloadavg()[0]:.1f}; one warm predict every {arguments.pause} s")
    for name, blocktime in SETTINGS.items():
        found = run_child(blocktime, arguments.decisions, arguments.pause, False)
        print(
            f"{name}: {found['cpu_per_decision']:.3f} CPU-s per decision, "
            f"wall median {found['wall_median']:.3f} s"
        )
    if arguments.perf:
        found = run_child("0", arguments.decisions, arguments.pause, True)
        for name, share in found["perf_children_percent"].items():
            print(f"  {name}: {share:.0f} % of the CPU samples")
    if arguments.fresh:
        found = run_child("0", arguments.decisions, arguments.pause, arguments.perf, "fresh")
        medians = ", ".join(f"{name} {s:.3f} s" for name, s in found["medians"].items())
        print(
            f"new sessions: {found['cpu_per_decision']:.3f} CPU-s per session (medians: {medians})"
        )
        for name, share in found["perf_children_percent"].items():
            print(f"  {name}: {share:.0f} % of the CPU samples")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
