"""Benchmark of the three-party (threshold BFV) engine: times, blob sizes and traffic per party.

Run in the three-party environment from the repository root (``make bench-threeparty``)::

    OMP_NUM_THREADS=1 .venv-threeparty/bin/python -m development.bench_threeparty [--runs 5]

For each choice of rotation keys (index 1 only, and 1, 2, 4), ``--runs`` times: the whole
protocol for one application in this process (``threeparty.engine.run_flow``: the three key
rounds, the server's sums, each party's encryption, the evaluation, the three partial decryptions
and the fusion, parties one after the other), then, with that run's keys, the evaluation of a
batch of held-out rows (256, and a full ciphertext of ``max_blocks`` rows), checked against the
clear verdicts of tests/threeparty/data/heldout_rows.json. Figures are medians over the runs.

Traffic per party is what the protocol makes each party send and receive (payload bytes, the
engine's blobs; the HTTP flow adds its framing and the sealed boxes' 48 bytes per partial):

- applicant (lead): up its round-1 blobs, its round-2 share, its ciphertexts and its partial
  decryption for the bank; down the joint round-1 key, the joint public key, the output and the
  two others' partial decryptions;
- bank: down the applicant's public key and round-1 shares, the joint round-1 key, the joint
  public key if it encrypts anything, the output and two partial decryptions; up its round-1
  blobs, round-2 share, ciphertexts (none: the tree tests none of its inputs) and its partial
  decryption for the applicant;
- credit bureau: down the bank's public key, the applicant's round-1 shares, the joint round-1
  key and the output (its public key is the joint one); up its round-1 blobs, round-2 share,
  ciphertexts and its partial decryptions for the applicant and the bank.

Then the whole flow as the product runs it (``--stages processes``): a real three-party server
(``uvicorn threeparty.server:app``) and the three parties as three separate OS processes
(``python -m threeparty``, ``OMP_NUM_THREADS=1``, each with its own key folder), started at once
and timed from their start to the last one's exit (process start-up included), in predict and in
explain mode, after one warm-up run; with each party's own ``seconds`` and bytes up/down from its
``done`` line. ``--stages processes`` alone keeps the engine figures of the existing results file.

Then a bank's portfolio (``--stages portfolio``): the data set's first 2,048 applications in one
batch session, each party's process reading a CSV of its own columns and the recipients writing
each verdict (``--csv``/``--out``), timed from the processes' start to the last exit, every
verdict checked against the clear tree.

Results: development/bench_threeparty_results.json and .md (the README table comes from it).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from contracts import examples
from fhe_server.launcher import ServerProcess
from threeparty import PARTIES, engine, processes, protocol
from threeparty.layout import Layout, load_layout
from threeparty.party import (
    clear_verdicts,
    create_session,
    delete_session,
    party_fields,
    read_rows,
)

DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "applications.csv"
FIXTURE_PATH = Path(__file__).resolve().parent.parent / "tests/threeparty/data/heldout_rows.json"
OUT_DIR = Path(__file__).resolve().parent
CHOICES: dict[str, tuple[int, ...]] = {"rotation 1": (1,), "rotations 1,2,4": (1, 2, 4)}
MB = 1e6
TARGET_FLOW_S = 6.0
TARGET_TRAFFIC_MB = 70.0
STRETCH_TRAFFIC_MB = 30.0
STAGES = ("engine", "processes", "portfolio")
FLOW_MODES = ("predict", "explain")
# Sessions in memory only: the benchmark's server keeps nothing between runs.
SERVER_ENV = {"OMP_NUM_THREADS": "1", "THREEPARTY_STORE_DIR": ""}
PORTFOLIO_SIZE = protocol.MAX_APPLICATIONS
TARGET_PORTFOLIO_S = 6.0
PROCESS_WARMUPS = 1
PARTY_WAIT_SECONDS = 120.0
PROCESS_FIELDS: dict[str, dict[str, Any]] = examples.EXAMPLE_FIELDS


def traffic(flow: dict[str, Any], layout: Layout) -> dict[str, dict[str, int]]:
    """Bytes each party sends ("up") and receives ("down") in one flow (see the docstring)."""
    r1, joint, partials = flow["round1"], flow["joint"], flow["partials"]
    output = len(flow["output"])
    result = {}
    for index, party in enumerate(PARTIES):
        own = r1[party]
        up = len(own.public_key) + len(own.eval_mult) + len(own.rotation)
        up += len(flow["round2"][party]) + sum(len(c) for c in flow["ciphertexts"][party].values())
        up += sum(len(partials[party]) for r in protocol.RECIPIENTS if r != party)
        down = len(joint.joint_eval_mult_round1) + output
        if index > 0:  # the chain: the previous public key and the lead's shares
            lead = r1[PARTIES[0]]
            down += len(r1[PARTIES[index - 1]].public_key)
            down += len(lead.eval_mult) + len(lead.rotation)
        if index < len(PARTIES) - 1 and layout.party_vectors(party):
            down += len(joint.joint_public_key)
        if party in protocol.RECIPIENTS:
            down += sum(len(partials[p]) for p in PARTIES if p != party)
        result[party] = {"up": up, "down": down}
    return result


def sizes(flow: dict[str, Any]) -> dict[str, int]:
    """Bytes of each kind of blob."""
    lead = flow["round1"]["applicant"]
    return {
        "public key": len(flow["joint"].joint_public_key),
        "round-1 eval-mult share": len(lead.eval_mult),
        "rotation-key shares": len(lead.rotation),
        "round-2 share": len(flow["round2"]["applicant"]),
        "relinearization key": len(flow["keys"].relinearization),
        "joint rotation keys": len(flow["keys"].rotation),
        "ciphertext": len(flow["output"]),
        "partial decryption": len(flow["partials"]["bank"]),
        "secret key share": len(flow["shares"]["bank"].secret_key),
    }


def evaluate_batch(
    flow: dict[str, Any], layout: Layout, rows: np.ndarray, expected: list[int]
) -> float:
    """Seconds to evaluate ``rows`` in one ciphertext with the flow's keys; checks the verdicts."""
    split = layout.split_rows(rows)
    joint = flow["joint"]
    tags = {"applicant": 3, "bank": 11}  # the recipients' tags, as the parties multiply them in
    ciphertexts = {
        p: engine.encrypt(
            joint.joint_public_key, engine.tagged_vectors(layout, p, split[p], tags.get(p, 1))
        )
        for p in PARTIES
    }
    start = time.perf_counter()
    output = engine.evaluate(flow["keys"], ciphertexts, len(rows), layout)
    seconds = time.perf_counter() - start
    partials = [engine.partial_decrypt(flow["shares"][p], output, joint.key_tag) for p in PARTIES]
    verdicts = engine.fuse(partials, len(rows), layout, tags["applicant"] * tags["bank"])
    assert verdicts == expected, "the batch's verdicts differ from the clear tree"
    return seconds


def measure(indices: tuple[int, ...], runs: int, layout: Layout) -> dict[str, Any]:
    """Medians of ``runs`` flows and batch evaluations with the given rotation keys."""
    fixture = json.loads(FIXTURE_PATH.read_text())
    rows, verdicts = np.array(fixture["rows"]), fixture["verdicts"]
    full = engine.max_blocks(layout)
    repeats = -(-full // len(rows))
    full_rows = np.tile(rows, (repeats, 1))[:full]
    full_verdicts = (verdicts * repeats)[:full]
    steps: dict[str, list[float]] = {}
    flow = None
    for _ in range(runs):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        flow = engine.run_flow(
            layout, layout.split_rows(rows[:1]), rotation_indices=indices, timings=timings
        )
        timings["whole flow (one application)"] = time.perf_counter() - start
        assert flow["verdicts"] == verdicts[:1]
        timings[f"evaluate batch of {len(rows)}"] = evaluate_batch(flow, layout, rows, verdicts)
        timings[f"evaluate batch of {full} (full ciphertext)"] = evaluate_batch(
            flow, layout, full_rows, full_verdicts
        )
        for step, seconds in timings.items():
            steps.setdefault(step, []).append(seconds)
    assert flow is not None
    return {
        "rotation_indices": list(indices),
        "seconds": {step: statistics.median(values) for step, values in steps.items()},
        "bytes": sizes(flow),
        "traffic": traffic(flow, layout),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def measure_processes(runs: int, layout: Layout) -> dict[str, Any]:
    """The whole flow with the three parties as three OS processes and a real server, per mode.

    Each run creates a session, starts the three party processes at once (fresh key folders),
    waits for all three to exit and deletes the session; the recipients' verdicts must equal the
    clear tree's.
    """
    expected = {mode: bool(clear_verdicts(PROCESS_FIELDS, mode, layout)[0]) for mode in FLOW_MODES}
    result: dict[str, Any] = {"runs": runs, "warmups": PROCESS_WARMUPS, "modes": {}}
    loads = [os.getloadavg()[0]]
    with ServerProcess("threeparty.server:app", env=SERVER_ENV) as server:
        for mode in FLOW_MODES:
            walls: list[float] = []
            own: list[float] = []
            moved: dict[str, dict[str, list[float]]] = {
                r: {"up": [], "down": []} for r in protocol.ROLES
            }
            for index in range(PROCESS_WARMUPS + runs):
                with tempfile.TemporaryDirectory() as keys_root:
                    known = processes.identities(Path(keys_root))  # once per party, not timed
                    roster = {r: known[r]["verify_key"] for r in protocol.ROLES}
                    invitations = create_session(server.url, roster, mode)["invitations"]
                    start = time.perf_counter()
                    done = processes.run_parties(
                        server.url,
                        invitations,
                        PROCESS_FIELDS,
                        Path(keys_root),
                        PARTY_WAIT_SECONDS,
                        known,
                    )
                    seconds = time.perf_counter() - start
                    # The server holds a few sessions only.
                    delete_session(server.url, Path(keys_root) / "bank", invitations["bank"])
                for role, run in done.items():
                    assert run.returncode == 0, (role, run.lines[-1:], run.stderr[-2000:])
                for role in protocol.RECIPIENTS:
                    verdict = done[role].step("verdict")
                    assert verdict is not None and verdict["approved"] is expected[mode], role
                if index < PROCESS_WARMUPS:
                    continue
                walls.append(seconds)
                finished = {role: run.step("done") or {} for role, run in done.items()}
                own.append(finished["applicant"]["seconds"])
                for role, line in finished.items():
                    moved[role]["up"].append(line["bytes_up"])
                    moved[role]["down"].append(line["bytes_down"])
                loads.append(os.getloadavg()[0])
            result["modes"][mode] = {
                "whole_flow_seconds": _spread(walls),
                "applicant_seconds": _spread(own),
                "traffic": {
                    r: {way: statistics.median(v) for way, v in ways.items()}
                    for r, ways in moved.items()
                },
            }
    result["load_average_1min"] = _spread(loads)
    result["measured"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return result


def _portfolio_csvs(folder: Path, size: int) -> dict[str, Any]:
    """The data set's first ``size`` applications, one CSV of its own columns per party."""
    with open(DATA_PATH, newline="") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), size))
    fields = {}
    for role in protocol.ROLES:
        columns = party_fields(role)
        with open(folder / f"{role}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: row[c] for c in columns} for row in rows)
        fields[role] = read_rows(folder / f"{role}.csv", role)
    return fields


def measure_portfolio(runs: int, layout: Layout, size: int = PORTFOLIO_SIZE) -> dict[str, Any]:
    """A portfolio of ``size`` applications, CSV to CSV, three party processes, a real server.

    Timed from the three processes' start to the last one's exit (identities made before, as a
    party makes its own once); every written verdict must be the clear tree's.
    """
    walls, loads = [], [os.getloadavg()[0]]
    with ServerProcess("threeparty.server:app", env=SERVER_ENV) as server:
        for index in range(PROCESS_WARMUPS + runs):
            with tempfile.TemporaryDirectory() as root:
                folder = Path(root)
                fields = _portfolio_csvs(folder, size)
                known = processes.identities(folder / "keys")
                roster = {r: known[r]["verify_key"] for r in protocol.ROLES}
                invitations = create_session(server.url, roster, "batch", size)["invitations"]
                start = time.perf_counter()
                started = {
                    role: processes.start_party(
                        server.url,
                        role,
                        invitations[role],
                        {},
                        folder / "keys" / role,
                        PARTY_WAIT_SECONDS,
                        processes.peers_of(role, known),
                        [
                            "--csv",
                            str(folder / f"{role}.csv"),
                            "--out",
                            str(folder / f"{role}.out"),
                        ],
                    )
                    for role in protocol.ROLES
                }
                done = {role: processes.finish_party(p, role) for role, p in started.items()}
                seconds = time.perf_counter() - start
                delete_session(server.url, folder / "keys" / "bank", invitations["bank"])
                for role, run in done.items():
                    assert run.returncode == 0, (role, run.lines[-1:], run.stderr[-2000:])
                expected = clear_verdicts(fields, "batch", layout)
                for role in protocol.RECIPIENTS:
                    with open(folder / f"{role}.out", newline="") as handle:
                        got = [row["approved"] == "true" for row in csv.DictReader(handle)]
                    assert got == [bool(v) for v in expected], role
            if index >= PROCESS_WARMUPS:
                walls.append(seconds)
                loads.append(os.getloadavg()[0])
    wall = _spread(walls)
    return {
        "applications": size,
        "runs": runs,
        "whole_seconds": wall,
        "applications_per_second": size / wall["median"],
        "load_average_1min": _spread(loads),
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def portfolio_markdown(measured: dict[str, Any]) -> list[str]:
    """The portfolio stage's lines of the Markdown results."""
    wall, load = measured["whole_seconds"], measured["load_average_1min"]
    return [
        "",
        f"Portfolio: {measured['applications']} applications in one evaluation, CSV to CSV, "
        f"three party processes and a real server (medians of {measured['runs']} runs, "
        f"min-max; measured {measured['measured']}, 1-minute load average "
        f"{load['min']:.1f}-{load['max']:.1f}): {wall['median']:.2f} s "
        f"({wall['min']:.2f}-{wall['max']:.2f}), "
        f"{measured['applications_per_second']:.0f} applications/s "
        f"(target <= {TARGET_PORTFOLIO_S:g} s: "
        f"{'met' if wall['median'] <= TARGET_PORTFOLIO_S else 'MISSED'})",
    ]


def processes_markdown(measured: dict[str, Any]) -> list[str]:
    """The process stage's lines of the Markdown results."""
    load = measured["load_average_1min"]
    lines = [
        "",
        f"Whole flow, three party processes over HTTP to a real server (process start-up "
        f"included; medians of {measured['runs']} runs after {measured['warmups']} warm-up, "
        f"min-max; measured {measured['measured']}, 1-minute load average "
        f"{load['min']:.1f}-{load['max']:.1f})",
        "",
        "| mode | whole flow (s) | applicant's own seconds | traffic MB up / down: applicant, "
        "bank, credit bureau |",
        "|---|---:|---:|---|",
    ]
    for mode, figures in measured["modes"].items():
        wall, own = figures["whole_flow_seconds"], figures["applicant_seconds"]
        moved = ", ".join(
            f"{t['up'] / MB:.1f} / {t['down'] / MB:.1f}" for t in figures["traffic"].values()
        )
        lines.append(
            f"| {mode} | {wall['median']:.2f} ({wall['min']:.2f}-{wall['max']:.2f}; "
            f"{'met' if wall['median'] <= TARGET_FLOW_S else 'MISSED'}) | "
            f"{own['median']:.2f} ({own['min']:.2f}-{own['max']:.2f}) | {moved} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (the README copies them)."""
    choices = results["choices"]
    names = list(choices)
    lines = [
        f"Three-party engine benchmark ({results['machine']}, OMP_NUM_THREADS="
        f"{results['omp_num_threads']}, medians of {results['runs']} runs, openfhe "
        f"{results['openfhe']}, ring dimension {results['ring_dimension']})",
        "",
        "| step (seconds) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for step in choices[names[0]]["seconds"]:
        cells = [f"{choices[n]['seconds'][step]:.3f}" for n in names]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "| blob (MB) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for blob in choices[names[0]]["bytes"]:
        cells = [f"{choices[n]['bytes'][blob] / MB:.2f}" for n in names]
        lines.append(f"| {blob} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| engine-level traffic of the protocol without its checks (MB up / down / total; the "
        "processes stage counts the party programs' real traffic) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for party in PARTIES:
        cells = []
        for n in names:
            t = choices[n]["traffic"][party]
            cells.append(
                f"{t['up'] / MB:.1f} / {t['down'] / MB:.1f} / {(t['up'] + t['down']) / MB:.1f}"
            )
        lines.append(f"| {party} | " + " | ".join(cells) + " |")
    if "processes" in results:
        lines += processes_markdown(results["processes"])
    if "portfolio" in results:
        lines += portfolio_markdown(results["portfolio"])
    lines += ["", "Targets: whole flow <= 6 s; traffic per party <= 70 MB (stretch 30 MB)."]
    measured = None
    if "processes" in results:  # the real traffic of the deployed choice (rotation 1)
        moved = next(iter(results["processes"]["modes"].values()))["traffic"]
        measured = max(t["up"] + t["down"] for t in moved.values()) / MB
    for n in names:
        flow_s = choices[n]["seconds"]["whole flow (one application)"]
        worst = max(t["up"] + t["down"] for t in choices[n]["traffic"].values()) / MB
        if measured is not None and n == names[0]:
            worst = measured
        lines.append(
            f"- {n}: flow {flow_s:.2f} s ({'met' if flow_s <= TARGET_FLOW_S else 'MISSED'}); "
            f"largest party traffic {worst:.1f} MB "
            f"({'met' if worst <= TARGET_TRAFFIC_MB else 'MISSED'}; stretch "
            f"{'met' if worst <= STRETCH_TRAFFIC_MB else 'missed'})"
        )
    return "\n".join(lines) + "\n"


def main(
    runs: int = 5, out_dir: Path = OUT_DIR, stages: tuple[str, ...] = STAGES
) -> dict[str, Any]:
    """Measure the stages asked; write the JSON and Markdown results; return them.

    Without the engine stage, the engine figures of the existing results file are kept.
    """
    layout = load_layout()
    json_path = out_dir / "bench_threeparty_results.json"
    results: dict[str, Any] = {}
    if "engine" in stages:
        engine.self_test(layout)  # a warm-up that also checks the known answer
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "openfhe": version("openfhe"),
            "ring_dimension": engine.slot_count(),
            "runs": runs,
            "deployed_rotation_indices": list(engine.ROTATION_INDICES),
            "choices": {name: measure(indices, runs, layout) for name, indices in CHOICES.items()},
        }
    else:
        results = json.loads(json_path.read_text())
    if "processes" in stages:
        results["processes"] = measure_processes(runs, layout)
    if "portfolio" in stages:
        results["portfolio"] = measure_portfolio(runs, layout)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (out_dir / "bench_threeparty_results.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated stages to measure: engine, processes, portfolio (default all)",
    )
    arguments = parser.parse_args()
    chosen = tuple(stage.strip() for stage in arguments.stages.split(",") if stage.strip())
    if not chosen or not set(chosen) <= set(STAGES):
        parser.error(f"--stages takes some of: {', '.join(STAGES)}")
    main(runs=arguments.runs, stages=chosen)
