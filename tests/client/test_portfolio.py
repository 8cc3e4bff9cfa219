"""A bank's portfolio in single-key mode: the command end to end, CSV to CSV, against a real server.

``python -m credit_portfolio`` runs as a subprocess against ``uvicorn server:app`` with real FHE.
Every verdict (and each refusal's explanation) must be the clear tree's on the same row
(development/reference.py). The portfolio (72 applications) is scored in three runs: a first
stopped by --limit (3 applications, fewer than ``SINGLES_BELOW``: decided one by one), a second
interrupted by SIGTERM once it has written a batch, a third that finishes (the last two with two
sessions sharing the key set; batches of up to 16, one shorter than 4 one by one); no
application may be scored twice, and the final file holds each one once, in order.
"""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import backend
import credit_portfolio
import settings
from development.reference import clear_explain, clear_verdict
from fhe_client.portfolio_csv import OUTPUT_COLUMNS, Verdict, VerdictsFile
from fhe_server.launcher import REPO_DIR
from tests.support.servers import running_server

# Enough that an interruption after the first batch leaves some: two sessions have at most three
# batches of 16 in hand when the signal comes (a batch of 16 takes about 0.3 s).
APPLICATIONS = 72
DATA = REPO_DIR / "data" / "applications.csv"


def _write_portfolio(path: Path, count: int = APPLICATIONS) -> list[dict[str, str]]:
    """The first rows of the data set (with its 'approved' label column) as a portfolio CSV."""
    with open(DATA, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(itertools.islice(reader, count))
        columns = list(reader.fieldnames or ())
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _command(url: str, folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "credit_portfolio",
        "--server",
        url,
        "--csv",
        str(folder / "portfolio.csv"),
        "--out",
        str(folder / "verdicts.csv"),
        "--key-dir",
        str(folder / "keys"),
        *extra,
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=180)


def _written(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == OUTPUT_COLUMNS
        return list(reader)


def _parties(row: dict[str, str]) -> dict[str, dict]:
    """One data row's fields by party, as the clear reference takes them."""
    return {
        party: {
            feature.field: feature.parse_text(row[feature.field])
            for feature in backend.party_preprocessor(party).features
        }
        for party in settings.PARTIES
    }


def _interrupt_after_first_new_row(command: list[str], out: Path, before: int) -> int:
    """Start the command, SIGTERM it once it wrote a verdict beyond ``before``; its exit code."""
    process = subprocess.Popen(command, cwd=REPO_DIR, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if len(_written(out)) > before:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=60)
    assert "interrupted: run the same command again" in stderr, stderr[-2000:]
    return process.returncode


@pytest.mark.slow
def test_a_portfolio_scored_in_three_runs_gives_the_clear_verdicts_once_each(tmp_path):
    rows = _write_portfolio(tmp_path / "portfolio.csv")
    out = tmp_path / "verdicts.csv"
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "notes.txt").write_text("the user's own file")
    with running_server(store_dir=tmp_path / "store") as url:
        first = _run(_command(url, tmp_path, "--explain", "--limit", "3"))
        assert first.returncode == 0, first.stderr[-2000:]
        assert "3 applications scored" in first.stderr and "not complete" in first.stderr
        assert f"3/{APPLICATIONS} applications" in first.stderr  # the progress bar
        assert (tmp_path / "keys" / "keys").is_file()  # kept for the next run
        after_first = _written(out)
        assert len(after_first) == 3

        # Two sessions share the key set from here on: the pipelined path.
        two = ("--explain", "--sessions", "2")
        code = _interrupt_after_first_new_row(_command(url, tmp_path, *two), out, 3)
        after_second = _written(out)
        assert code == 130 and 3 < len(after_second) < APPLICATIONS
        assert after_second[:3] == after_first  # nothing written before is touched

        last = _run(_command(url, tmp_path, *two))
        assert last.returncode == 0, last.stderr[-2000:]
    assert "with the keys of the interrupted run" in last.stderr
    assert f"{len(after_second)} already written" in last.stderr
    assert f"{APPLICATIONS - len(after_second)} applications scored" in last.stderr
    assert "complete" in last.stderr
    assert os.listdir(tmp_path / "keys") == ["notes.txt"]  # the keys gone, nothing else

    written = _written(out)
    assert [int(r["application"]) for r in written] == list(range(APPLICATIONS))
    assert {r["application"]: r for r in after_second}.items() <= {
        r["application"]: r for r in written
    }.items()  # an application scored once keeps its first verdict
    for row, verdict in zip(rows, written, strict=True):
        parties = _parties(row)
        approved = clear_verdict(parties["applicant"], parties["bank"], parties["credit_bureau"])
        assert verdict["approved"] == str(approved).lower(), (row, verdict)
        if approved:
            assert verdict["explanation"] == "already_approved"
            continue
        years = clear_explain(parties["applicant"], parties["bank"], parties["credit_bureau"])
        assert verdict["explanation"] == ("no_change" if years is None else "years_needed")
        assert verdict["fewest_years_employed"] == (years or "")
    assert 0 < sum(r["approved"] == "true" for r in written) < APPLICATIONS


def _main(command: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The command's main() in this process (no FHE runs: every check comes first)."""
    code = credit_portfolio.main(command[3:])
    return code, capsys.readouterr().err


def test_a_bad_csv_exits_2_naming_the_row_and_field_and_keeps_what_was_written(tmp_path, capsys):
    rows = _write_portfolio(tmp_path / "portfolio.csv", 6)
    out = tmp_path / "verdicts.csv"
    kept = ",".join(OUTPUT_COLUMNS) + "\n0,true,,\n1,false,,\n"
    out.write_text(kept)
    # No server listens on port 9: every check comes before any request.
    command = _command("http://127.0.0.1:9", tmp_path)

    rows[4]["age"] = "old"
    with open(tmp_path / "portfolio.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, stderr = _main(command, capsys)
    assert code == 2 and "application 4 (line 6): age must be a number, got 'old'" in stderr

    with open(tmp_path / "portfolio.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "colour"])
        writer.writeheader()
        writer.writerows({**row, "colour": "red"} for row in rows[:4])
    code, stderr = _main(command, capsys)
    assert code == 2 and "unknown column(s) ['colour']" in stderr

    columns = [c for c in rows[0] if c != "account_age"]
    with open(tmp_path / "portfolio.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[:4])
    code, stderr = _main(command, capsys)
    assert code == 2 and "missing column(s) ['account_age']" in stderr

    _write_portfolio(tmp_path / "portfolio.csv", 1)  # fewer rows than the verdicts name
    code, stderr = _main(command, capsys)
    assert code == 2 and "application 1, but the applications CSV has 1 rows" in stderr

    out.write_text("name,score\n")  # not a verdicts file: refused, left as it is
    code, stderr = _main(command, capsys)
    assert code == 2 and "is not a verdicts CSV" in stderr
    assert out.read_text() == "name,score\n"

    out.write_text(kept)
    _write_portfolio(tmp_path / "portfolio.csv", 6)
    code, stderr = _main([*command, "--sessions", "0"], capsys)
    assert code == 2 and "--sessions must be at least 1" in stderr
    assert out.read_text() == kept
    assert not (tmp_path / "keys").exists()


def test_a_verdicts_file_cut_short_or_in_use_by_another_run(tmp_path, capsys):
    out = tmp_path / "verdicts.csv"
    header = ",".join(OUTPUT_COLUMNS) + "\n"
    out.write_text(header + "0,true,,\n1,fal")  # the last row was being written
    verdicts = VerdictsFile(out)
    assert verdicts.open(applications=3) == {0: Verdict(0, True)}
    assert out.read_text() == header + "0,true,,\n"  # scored again by this run
    try:
        _write_portfolio(tmp_path / "portfolio.csv", 3)
        code, stderr = _main(_command("http://127.0.0.1:9", tmp_path), capsys)
        assert code == 2 and "another run is writing" in stderr
    finally:
        verdicts.close()
    assert out.read_text() == header + "0,true,,\n"
