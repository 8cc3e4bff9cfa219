"""The files of a bank's portfolio: the applications CSV it reads and the verdicts CSV it writes.

The applications CSV has one row per application and one column per field of the three parties
(``contracts.parties.PARTY_FIELDS``, canonical values, booleans true/false); an ``approved``
column (the data set's label) may be there and is ignored. Every row is checked before anything
is scored.

The verdicts CSV (``OUTPUT_COLUMNS``) is appended one row per application as each is decrypted
and flushed at once, so an interrupted run loses nothing decrypted; a rerun reads which
applications are there and scores only the others. ``application`` is the row's index in the
applications CSV (0 = the first row under the header).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock between runs
    fcntl = None  # type: ignore[assignment]

from contracts.parties import PARTIES, PARTY_FIELDS
from fhe_client.errors import ClientError, InvalidFieldError
from fhe_client.preprocessing import PartyPreprocessor

Application = Mapping[str, Mapping[str, Any]]
"""One application: {party: that party's raw fields}."""

IGNORED_COLUMNS = frozenset({"approved"})
OUTPUT_COLUMNS = ("application", "approved", "explanation", "fewest_years_employed")


class PortfolioInputError(ClientError):
    """The applications CSV or the verdicts CSV cannot be used (the message names the row)."""

    code = "invalid_field"


@dataclass(frozen=True)
class Verdict:
    """One application's result, as written in the verdicts CSV.

    Attributes:
        application: the row's index in the applications CSV.
        approved: the decrypted verdict.
        explanation: "" (not asked), "already_approved", "years_needed" or "no_change".
        fewest_years_employed: for "years_needed", the fewest years-employed bin that, with
            employed = yes, would most likely give approval; else "".
    """

    application: int
    approved: bool
    explanation: str = ""
    fewest_years_employed: str = ""

    def cells(self) -> list[str]:
        """The CSV cells, in ``OUTPUT_COLUMNS`` order."""
        approved = "true" if self.approved else "false"
        return [str(self.application), approved, self.explanation, self.fewest_years_employed]


def read_applications(
    path: Path, preprocessors: Mapping[str, PartyPreprocessor]
) -> list[dict[str, dict[str, Any]]]:
    """Read and check every application of a CSV.

    Args:
        path: the applications CSV.
        preprocessors: each party's preprocessor (``backend.party_preprocessor``).

    Returns:
        One {party: fields} per row, in the file's order.

    Raises:
        PortfolioInputError: the file cannot be read, a column is missing or unknown, or a value
            is invalid (the message names the row, its line and the field).
    """
    columns = {party: list(PARTY_FIELDS[party]) for party in PARTIES}
    expected = {name for names in columns.values() for name in names}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = set(reader.fieldnames or ())
            missing, unknown = expected - header, header - expected - IGNORED_COLUMNS
            if missing or unknown:
                raise PortfolioInputError(
                    f"{path}: missing column(s) {sorted(missing)}, unknown column(s) "
                    f"{sorted(unknown)}; the columns are the three parties' fields "
                    f"{sorted(expected)} (and optionally 'approved', ignored)"
                )
            return [
                _application(path, index, reader.line_num, row, columns, preprocessors)
                for index, row in enumerate(reader)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PortfolioInputError(f"cannot read {path}: {error}") from None


def _application(
    path: Path,
    index: int,
    line: int,
    row: Mapping[str | None, Any],
    columns: Mapping[str, list[str]],
    preprocessors: Mapping[str, PartyPreprocessor],
) -> dict[str, dict[str, Any]]:
    """One row's fields by party, each party's checked by its own preprocessor."""
    where = f"{path}: application {index} (line {line})"
    if None in row:
        raise PortfolioInputError(f"{where}: more cells than columns")
    application: dict[str, dict[str, Any]] = {}
    for party, names in columns.items():
        features = {feature.field: feature for feature in preprocessors[party].features}
        fields = {name: features[name].parse_text(row[name]) for name in names}
        try:
            preprocessors[party].transform(fields)
        except InvalidFieldError as error:
            raise PortfolioInputError(f"{where}: {error}") from None
        application[party] = fields
    return application


def _lock(handle: io.TextIOWrapper, path: Path) -> None:
    """Hold an exclusive lock on the open verdicts file until it is closed (POSIX only).

    Raises:
        PortfolioInputError: another run holds it.
    """
    if fcntl is None:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise PortfolioInputError(f"another run is writing {path}; wait for it to end") from None


class VerdictsFile:
    """The verdicts CSV: which applications it holds, and appending one more (flushed)."""

    def __init__(self, path: Path) -> None:
        """Point at the file (nothing is read or written yet; see ``open``)."""
        self.path = Path(path)
        self._handle: io.TextIOWrapper | None = None

    def open(self, applications: int) -> dict[int, Verdict]:
        """Read the verdicts already written, then open the file for appending.

        A file that does not exist (or is empty) is created with its header. A last line cut
        short by an interruption is dropped (that application is scored again).

        Args:
            applications: rows of the applications CSV (a verdict beyond them means the file
                belongs to another portfolio).

        Returns:
            The verdicts already there, by application.

        Raises:
            PortfolioInputError: the file is not a verdicts CSV of this portfolio.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", newline="", encoding="utf-8")  # noqa: SIM115
        try:
            _lock(handle, self.path)
            handle.seek(0)
            text = handle.read()
            complete = text[: text.rfind("\n") + 1]
            done = self._parse(complete, applications) if text else {}
            if not text:
                handle.write(",".join(OUTPUT_COLUMNS) + "\n")
            elif complete != text:
                handle.truncate(len(complete.encode("utf-8")))
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return done

    def _parse(self, text: str, applications: int) -> dict[int, Verdict]:
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or tuple(rows[0]) != OUTPUT_COLUMNS:
            raise PortfolioInputError(
                f"{self.path} exists and is not a verdicts CSV (its header must be "
                f"{','.join(OUTPUT_COLUMNS)}); choose another --out"
            )
        done = {}
        for line, cells in enumerate(rows[1:], start=2):
            try:
                verdict = Verdict(
                    int(cells[0]), {"true": True, "false": False}[cells[1]], *cells[2:]
                )
            except (ValueError, KeyError, IndexError, TypeError):
                raise PortfolioInputError(f"{self.path}, line {line}: not a verdict") from None
            if not 0 <= verdict.application < applications:
                raise PortfolioInputError(
                    f"{self.path}, line {line}: application {verdict.application}, but the "
                    f"applications CSV has {applications} rows: was it written for another one?"
                )
            done[verdict.application] = verdict
        return done

    def append(self, verdict: Verdict) -> None:
        """Write one verdict and flush it to the disk."""
        if self._handle is None:
            raise RuntimeError("open the verdicts file first")
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow(verdict.cells())
        self._handle.write(line.getvalue())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file (appended rows are already on the disk)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def rewrite_sorted(self, verdicts: Iterable[Verdict]) -> None:
        """Replace the file by the same verdicts in application order (in one rename)."""
        self.close()
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(OUTPUT_COLUMNS)
            for verdict in sorted(verdicts, key=lambda v: v.application):
                writer.writerow(verdict.cells())
        os.replace(temporary, self.path)
