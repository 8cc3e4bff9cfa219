"""The public slot layout of the decision tree for the three-party (threshold BFV) mode.

The deployed tree (the same quantized tree as the single-key mode) is laid out in slots:

- a *block* of ``block_size`` slots per application; slot ``a * block_size + L`` of a vector holds
  something about leaf ``L`` of the matched class (``leaf_class``) for application ``a``; leaf
  slots past the last leaf are padding and always end at 0;
- for each *level* ``j`` (the j-th step of a leaf's path) and leaf ``L``, the layout names the
  *literal*: ``[comparison, +1]`` (the comparison's bit, "went left") or ``[comparison, -1]``
  (1 - bit, "went right"), or ``null`` when the path of ``L`` is shorter than ``j``;
- each comparison is owned by exactly one party (the one whose circuit columns it reads), which
  computes its bits in clear from its own quantized inputs.

Each party that owns a literal encrypts ONE vector: per leaf slot, the product of the literals it
owns on that leaf's path (1 if none; 0 in padding slots). The server multiplies the owners'
vectors (a leaf's product is 1 exactly when its whole path went its way: 1 multiplication for
two owners, depth 2 for three), sums each block's slots (exactly one leaf is reached, so the sum
says whether it is a leaf of ``leaf_class``), turns the sum into the verdict (``leaf_class`` 0:
1 - sum) and keeps only the verdict slots. ``clear_verdicts`` does the same arithmetic in clear,
for tests and the known-answer probe. The layout makes the tree's comparisons public to the
parties: the model is not a secret in this product.

The layout is written by ``python -m development.threeparty_layout`` to
``deployment_files/threeparty_layout.json``; this module only reads and uses it (numpy only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LAYOUT_PATH = Path(__file__).resolve().parent.parent / "deployment_files" / "threeparty_layout.json"
"""Where the build step writes the layout and the server and parties read it."""

LAYOUT_VERSION = 1

Literal = tuple[int, int] | None
"""(comparison index, +1 for the bit / -1 for 1 - bit), or None for the constant 1."""


class LayoutError(ValueError):
    """The layout cannot be derived, or a party's rows do not fit it."""


@dataclass(frozen=True)
class Layout:
    """The tree as slots (see the module docstring).

    Attributes:
        block_size: slots per application (a power of two >= the number of matched leaves).
        n_levels: the longest path (levels multiplied together).
        leaf_class: the class of the matched leaves (1: verdict = sum, 0: verdict = 1 - sum).
        n_leaves: matched leaves (slots ``n_leaves .. block_size - 1`` of a block are padding).
        comparisons: each {"column", "threshold"} (bit = x[column] <= threshold) or
            {"weights": [[column, weight], ...], "constant"} (bit = constant + sum, already 0/1),
            with "party", the party that owns its columns.
        party_columns: {party: [start, stop)} of each party's inputs in circuit columns.
        levels: ``levels[j][L]`` is the literal of leaf ``L`` at level ``j`` (None: constant 1).
        explain_candidates: the credit bureau's candidate rows for explain (employed, one per
            years-employed bin): {"years_employed": [bins], "rows": [[inputs], ...]}.
        probe: a few held-out circuit rows with their clear verdicts, for the known-answer
            self-test: {"rows": [[inputs], ...], "verdicts": [0/1, ...]}.
    """

    block_size: int
    n_levels: int
    leaf_class: int
    n_leaves: int
    comparisons: list[dict[str, Any]]
    party_columns: dict[str, tuple[int, int]]
    levels: list[list[Literal]]
    explain_candidates: dict[str, Any]
    probe: dict[str, Any]

    # -- building and reading ---------------------------------------------------------------
    @classmethod
    def from_tree(
        cls,
        tree: Mapping[str, Any],
        explain_candidates: dict[str, Any],
        probe: dict[str, Any],
    ) -> Layout:
        """Derive the layout from the quantized tree's JSON (``reference_tree.json``).

        Args:
            tree: {"comparisons", "leaf_class", "leaf_paths", "party_slices", ...}.
            explain_candidates: see the class attributes.
            probe: see the class attributes.

        Raises:
            LayoutError: when a comparison reads the columns of more than one party.
        """
        party_columns = {p: (int(s[0]), int(s[1])) for p, s in tree["party_slices"].items()}
        comparisons = []
        for comparison in tree["comparisons"]:
            columns = (
                [comparison["column"]]
                if "column" in comparison
                else [c for c, _ in comparison["weights"]]
            )
            owners = {p for c in columns for p, (lo, hi) in party_columns.items() if lo <= c < hi}
            if len(owners) != 1:
                raise LayoutError(f"comparison {comparison} reads the inputs of {sorted(owners)}")
            comparisons.append({**comparison, "party": owners.pop()})
        paths = [[(int(c), int(s)) for c, s in path] for path in tree["leaf_paths"]]
        n_leaves = len(paths)
        block_size = 1 << max(n_leaves - 1, 0).bit_length()
        n_levels = max(len(path) for path in paths)
        levels: list[list[Literal]] = [
            [
                path[j] if leaf < n_leaves and j < len(path) else None
                for leaf, path in enumerate(paths + [[]] * (block_size - n_leaves))
            ]
            for j in range(n_levels)
        ]
        return cls(
            block_size=block_size,
            n_levels=n_levels,
            leaf_class=int(tree["leaf_class"]),
            n_leaves=n_leaves,
            comparisons=comparisons,
            party_columns=party_columns,
            levels=levels,
            explain_candidates=explain_candidates,
            probe=probe,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild from ``to_json``'s output.

        Raises:
            LayoutError: on another layout version.
        """
        if data.get("version") != LAYOUT_VERSION:
            raise LayoutError(f"layout version {data.get('version')}, expected {LAYOUT_VERSION}")
        return cls(
            block_size=data["block_size"],
            n_levels=data["n_levels"],
            leaf_class=data["leaf_class"],
            n_leaves=data["n_leaves"],
            comparisons=data["comparisons"],
            party_columns={p: (s[0], s[1]) for p, s in data["party_columns"].items()},
            levels=[
                [None if lit is None else (lit[0], lit[1]) for lit in row] for row in data["levels"]
            ],
            explain_candidates=data["explain_candidates"],
            probe=data["probe"],
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-serializable layout."""
        return {
            "version": LAYOUT_VERSION,
            "block_size": self.block_size,
            "n_levels": self.n_levels,
            "leaf_class": self.leaf_class,
            "n_leaves": self.n_leaves,
            "comparisons": self.comparisons,
            "party_columns": {p: list(s) for p, s in self.party_columns.items()},
            "levels": [[None if lit is None else list(lit) for lit in row] for row in self.levels],
            "explain_candidates": self.explain_candidates,
            "probe": self.probe,
        }

    # -- what a party encrypts ------------------------------------------------------------
    def owners(self) -> list[str]:
        """The parties that own at least one literal (each encrypts one vector), in order."""
        owning = {self.comparisons[lit[0]]["party"] for row in self.levels for lit in row if lit}
        return [p for p in self.party_columns if p in owning]

    def party_vectors(self, party: str) -> list[int]:
        """The indices of the vectors ``party`` encrypts: [0] if it owns a literal, else []."""
        return [0] if party in self.owners() else []

    def party_bits(self, party: str, rows: np.ndarray) -> dict[int, np.ndarray]:
        """Compute, in clear, the bits of the comparisons ``party`` owns on its own inputs.

        Args:
            party: "applicant", "bank" or "credit_bureau".
            rows: the party's quantized inputs, shape (applications, its columns).

        Returns:
            {comparison index: 0/1 array over the applications}.

        Raises:
            LayoutError: when the rows do not have the party's number of columns.
        """
        start, stop = self.party_columns[party]
        rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
        if rows.shape[1] != stop - start:
            raise LayoutError(f"{party}: rows have {rows.shape[1]} inputs, expected {stop - start}")
        bits = {}
        for index, comparison in enumerate(self.comparisons):
            if comparison["party"] != party:
                continue
            if "column" in comparison:
                bits[index] = rows[:, comparison["column"] - start] <= comparison["threshold"]
            else:
                value = comparison["constant"] + sum(
                    weight * rows[:, column - start] for column, weight in comparison["weights"]
                )
                bits[index] = value
        return {index: np.asarray(b, dtype=np.int64) for index, b in bits.items()}

    def encode_party(
        self, party: str, rows: Sequence[Sequence[int]] | np.ndarray
    ) -> dict[int, np.ndarray]:
        """The vector ``party`` encrypts: per leaf, the product of the literals it owns.

        Slot ``a * block_size + L`` holds, for application (block) ``a``, the product over the
        levels of leaf ``L``'s path of the literals that ``party`` owns (1 when it owns none of
        them); padding slots hold 0. A party computes it in clear from its own inputs only; the
        product of the owners' vectors is 1 exactly at the leaf each application reaches.

        Args:
            party: "applicant", "bank" or "credit_bureau".
            rows: the party's quantized inputs, one row per block (application or candidate).

        Returns:
            {0: int64 vector of ``len(rows) * block_size`` slots}, or {} when ``party`` owns no
            literal (the tree tests none of its inputs).
        """
        bits = self.party_bits(party, np.asarray(rows))
        if party not in self.owners():
            return {}
        blocks = len(next(iter(bits.values())))
        vector = np.zeros((blocks, self.block_size), dtype=np.int64)
        vector[:, : self.n_leaves] = 1
        for row in self.levels:
            for leaf, lit in enumerate(row):
                if lit is not None and lit[0] in bits:
                    vector[:, leaf] *= bits[lit[0]] if lit[1] == 1 else 1 - bits[lit[0]]
        return {0: vector.reshape(-1)}

    def candidates_for(self, mode: str) -> np.ndarray | None:
        """The public candidate rows an evaluation adds in ``mode`` (explain), else None.

        In explain mode blocks 1.. hold the credit bureau's candidate rows (employed, each
        years-employed bin): public values, built from the layout by whoever evaluates.
        """
        if mode != "explain":
            return None
        return np.asarray(self.explain_candidates["rows"], dtype=np.int64)

    def verdict_mask(self, blocks: int) -> np.ndarray:
        """1 in the verdict slot (the first) of each of ``blocks`` blocks, 0 elsewhere."""
        mask = np.zeros((blocks, self.block_size), dtype=np.int64)
        mask[:, 0] = 1
        return mask.reshape(-1)

    def clear_verdicts(self, party_rows: Mapping[str, np.ndarray]) -> np.ndarray:
        """The verdicts in clear with the server's arithmetic on the parties' encoded vectors.

        Args:
            party_rows: {party: its quantized inputs, one row per block}; every party of
                ``party_columns`` (rows of a party that owns no comparison are only checked).

        Returns:
            0/1 verdict per block.
        """
        blocks = {np.atleast_2d(rows).shape[0] for rows in party_rows.values()}
        if len(blocks) != 1:
            raise LayoutError(f"the parties sent different numbers of blocks: {sorted(blocks)}")
        n_blocks = blocks.pop()
        leaves = np.ones(n_blocks * self.block_size, dtype=np.int64)
        for party in self.party_columns:
            for vector in self.encode_party(party, party_rows[party]).values():
                leaves = leaves * vector
        matched = leaves.reshape(n_blocks, self.block_size).sum(axis=1)
        return matched if self.leaf_class == 1 else 1 - matched

    def split_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Split circuit-ordered rows (all parties' inputs) into each party's columns."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
        return {p: rows[:, lo:hi] for p, (lo, hi) in self.party_columns.items()}


def load_layout(path: Path = LAYOUT_PATH) -> Layout:
    """Read the layout written by ``development.threeparty_layout``.

    Raises:
        LayoutError: when the file is missing or of another version.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read the three-party layout {path}: {exc}") from exc
    return Layout.from_json(data)
