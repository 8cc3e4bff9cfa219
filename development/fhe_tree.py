"""The quantized decision tree as integer matrices, its clear evaluation and its FHE module.

The tree is evaluated the way Concrete ML evaluates trees (comparisons, then path matching, as in
Hummingbird's GEMM strategy), written directly in concrete-python so that the three parties'
inputs stay separate ciphertexts and one module holds both ``predict`` and ``explain``:

1. comparisons: ``bits = (x @ SELECT) <= THRESHOLDS`` for features sent quantized, one
   programmable bootstrap (PBS) per distinct comparison (tree nodes that test the same feature
   against the same threshold share it). Features sent as 0/1 (booleans) or one-hot (the
   years-employed bin) need no bootstrap: "x <= t" is then a sum of some of their inputs, which
   is linear and folds into the next step;
2. ``hits = (bits @ PATHS + x @ LINEAR + BIAS) == LENGTHS``: one PBS per leaf of one class
   (approval or refusal, whichever has fewer leaves); the score counts the steps of the leaf's
   path that went its way ("left" counts bit, "right" counts 1 - bit), so a leaf's hit is 1
   exactly when all of them did;
3. ``verdict = sum(hits)`` (or ``1 - sum(hits)`` when refusal leaves are matched): exactly one
   leaf is reached, so the sum says whether it is one of the matched class.

Sibling leaves that predict the same class are merged first, which removes their parent node.

That general form costs one bootstrap per distinct quantized comparison and per matched leaf
(11 for the deployed tree). ``module()`` uses instead, where the tree allows it, the two-lookup
form of ``development.two_lookups``: the verdict as ``[A(u) + B(v) >= R]``, one lookup on a
packed integer of some inputs and one comparison, 2 bootstraps whatever the tree's size, checked
against this clear evaluation on every input the clients can send before it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from concrete import fhe

from development.two_lookups import TwoLookupForm, find_two_lookup_form

# The module's functions' inputs (predict and predict_batch take the same ones).
PREDICT_INPUTS = {"applicant": "encrypted", "bank": "encrypted", "credit_bureau": "encrypted"}
EXPLAIN_INPUTS = {"applicant": "encrypted", "bank": "encrypted", "candidates": "encrypted"}


@dataclass(frozen=True)
class ThresholdComparison:
    """``x[column] <= threshold`` on a quantized input: one bootstrap.

    Attributes:
        column: the circuit input compared.
        threshold: the largest value that goes left.
    """

    column: int
    threshold: int

    def to_json(self) -> dict[str, Any]:
        """Return ``{"column": c, "threshold": t}`` (the reference tree's format)."""
        return {"column": self.column, "threshold": self.threshold}


@dataclass(frozen=True)
class LinearComparison:
    """``constant + sum(weight * x[column])`` on 0/1 and one-hot inputs: 1 left, 0 right.

    No bootstrap: the sum is linear in the inputs and folds into the path scores.

    Attributes:
        weights: (column, weight) pairs.
        constant: the value when every weighted input is 0.
    """

    weights: tuple[tuple[int, int], ...]
    constant: int

    def to_json(self) -> dict[str, Any]:
        """Return ``{"weights": [[column, weight], ...], "constant": k}``."""
        return {"weights": [list(pair) for pair in self.weights], "constant": self.constant}


Comparison = ThresholdComparison | LinearComparison


def comparison_from_json(data: dict[str, Any]) -> Comparison:
    """Read a comparison written by ``to_json``.

    Raises:
        ValueError: if the keys are those of neither kind.
    """
    if set(data) == {"column", "threshold"}:
        return ThresholdComparison(column=int(data["column"]), threshold=int(data["threshold"]))
    if set(data) == {"weights", "constant"}:
        weights = tuple((int(column), int(weight)) for column, weight in data["weights"])
        return LinearComparison(weights=weights, constant=int(data["constant"]))
    raise ValueError(f"not a comparison: keys {sorted(data)}")


@dataclass
class QuantizedTree:
    """A pruned decision tree over the circuit's integer inputs.

    Attributes:
        comparisons: the distinct comparisons of the tree (threshold or linear).
        leaf_class: the class whose leaves are matched (the one with fewer leaves): with 1 the
            verdict is the number of matched leaves reached, with 0 it is 1 minus that number.
        leaf_paths: for each leaf of ``leaf_class``, the list of (comparison, +1 left / -1 right);
            a comparison met twice on one path counts twice, and a path that needs a comparison
            both true and false can never be reached, as in the tree.
        n_columns: number of circuit inputs (all parties).
        column_max: the largest value each circuit input can take (2**n_bits - 1 for a
            quantized input, 1 for a 0/1 or one-hot input).
        n_bits: bit width of the quantized inputs (values 0 .. 2**n_bits - 1).
        party_slices: {party: [start, stop)} of each party's inputs in circuit order.
        onehot_groups: [start, stop) of each one-hot feature's columns (exactly one of them is
            1 in any row a client sends).
    """

    comparisons: list[Comparison]
    leaf_class: int
    leaf_paths: list[list[tuple[int, int]]]
    n_columns: int
    column_max: list[int]
    n_bits: int
    party_slices: dict[str, tuple[int, int]]
    onehot_groups: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_sklearn(
        cls,
        tree: Any,
        features: list[dict[str, Any]],
        n_bits: int,
        party_slices: dict[str, tuple[int, int]],
    ) -> QuantizedTree:
        """Build from a sklearn tree fitted on Concrete ML's quantized features (``tree_``).

        Args:
            tree: the fitted sklearn tree.
            features: for each model feature, where it is in the circuit: {"encoding":
                "quantized", "column": c}, or {"encoding": "binary" | "onehot", "column": c,
                "q_levels": Concrete ML's quantized value of each raw level (0, 1, ...)}; a
                one-hot feature takes one column per level.
            n_bits: bit width of the quantized inputs.
            party_slices: {party: [start, stop)} in circuit columns.
        """
        t = tree.tree_
        predicted = np.argmax(t.value[:, 0, :], axis=1)

        def subtree_class(node: int) -> int | None:
            """Class of a subtree if every leaf under it predicts the same one."""
            if t.children_left[node] == -1:
                return int(predicted[node])
            left = subtree_class(t.children_left[node])
            right = subtree_class(t.children_right[node])
            return left if left is not None and left == right else None

        comparisons: list[Comparison] = []
        index_of: dict[Comparison, int] = {}
        paths: dict[int, list[list[tuple[int, int]]]] = {0: [], 1: []}

        def comparison(node: int) -> Comparison:
            # Inputs are integers, so x <= 2.5 is x <= 2.
            feature, threshold = features[t.feature[node]], int(np.floor(t.threshold[node]))
            if feature["encoding"] == "quantized":
                return ThresholdComparison(column=feature["column"], threshold=threshold)
            below = [v for v, q in enumerate(feature["q_levels"]) if q <= threshold]
            if feature["encoding"] == "binary":  # [x == 1] is x, [x == 0] is 1 - x
                weight = (1 in below) - (0 in below)
                return LinearComparison(((feature["column"], weight),), constant=int(0 in below))
            return LinearComparison(tuple((feature["column"] + v, 1) for v in below), constant=0)

        def walk(node: int, path: list[tuple[int, int]]) -> None:
            leaf = subtree_class(node)
            if leaf is not None:
                paths[leaf].append(path)
                return
            found = comparison(node)
            if found not in index_of:
                index_of[found] = len(comparisons)
                comparisons.append(found)
            walk(t.children_left[node], [*path, (index_of[found], 1)])
            walk(t.children_right[node], [*path, (index_of[found], -1)])

        walk(0, [])
        # Matching the class with fewer leaves costs fewer bootstraps; the other follows.
        matched = 1 if len(paths[1]) <= len(paths[0]) else 0
        column_max: list[int] = []
        onehot_groups: list[tuple[int, int]] = []
        for feature in features:
            if feature["encoding"] == "quantized":
                column_max.append(2**n_bits - 1)
            else:
                width = 1 if feature["encoding"] == "binary" else len(feature["q_levels"])
                if feature["encoding"] == "onehot":
                    onehot_groups.append((feature["column"], feature["column"] + width))
                column_max.extend([1] * width)
        return cls(
            comparisons=comparisons,
            leaf_class=matched,
            leaf_paths=paths[matched],
            n_columns=len(column_max),
            column_max=column_max,
            n_bits=n_bits,
            party_slices=party_slices,
            onehot_groups=onehot_groups,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuantizedTree:
        """Rebuild from ``to_json``'s output."""
        return cls(
            comparisons=[comparison_from_json(c) for c in data["comparisons"]],
            leaf_class=data["leaf_class"],
            leaf_paths=[[tuple(step) for step in path] for path in data["leaf_paths"]],
            n_columns=data["n_columns"],
            column_max=data["column_max"],
            n_bits=data["n_bits"],
            party_slices={k: tuple(v) for k, v in data["party_slices"].items()},
            onehot_groups=[(int(a), int(b)) for a, b in data.get("onehot_groups", [])],
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serializable description."""
        return {
            "comparisons": [c.to_json() for c in self.comparisons],
            "leaf_class": self.leaf_class,
            "leaf_paths": [[list(step) for step in path] for path in self.leaf_paths],
            "n_columns": self.n_columns,
            "column_max": self.column_max,
            "n_bits": self.n_bits,
            "party_slices": {k: list(v) for k, v in self.party_slices.items()},
            "onehot_groups": [list(group) for group in self.onehot_groups],
        }

    @property
    def bootstrapped(self) -> list[int]:
        """Indices of the comparisons that need a bootstrap (on quantized inputs)."""
        return [i for i, c in enumerate(self.comparisons) if isinstance(c, ThresholdComparison)]

    @property
    def thresholds(self) -> list[ThresholdComparison]:
        """The comparisons that need a bootstrap, in the order of ``bootstrapped``."""
        return [c for c in self.comparisons if isinstance(c, ThresholdComparison)]

    # -- matrices ---------------------------------------------------------------------------
    def matrices(self) -> dict[str, np.ndarray]:
        """The tree as integer matrices.

        Returns:
            select (columns x bootstrapped comparisons), thresholds, paths (bootstrapped
            comparisons x leaves), linear (columns x leaves: the linear comparisons folded into
            the path scores), bias (leaves) and targets (leaves). A leaf's score
            ``bits @ paths + x @ linear + bias`` counts the steps of its path that went its way
            (a "right" step counts as 1 - bit), so it lies in [0, path length] and equals
            the path length exactly when the leaf is reached: the matching lookups stay small
            and unsigned.
        """
        n_leaves = max(len(self.leaf_paths), 1)
        all_paths = np.zeros((len(self.comparisons), n_leaves), dtype=np.int64)
        # An empty slot (no leaf of the matched class) can never be reached.
        targets = np.full(n_leaves, 2**20, dtype=np.int64)
        bias = np.zeros(n_leaves, dtype=np.int64)
        for leaf, path in enumerate(self.leaf_paths):
            for comparison, direction in path:
                all_paths[comparison, leaf] += direction
            targets[leaf] = len(path)
            bias[leaf] = sum(1 for _, direction in path if direction == -1)
        bootstrapped = self.bootstrapped
        select = np.zeros((self.n_columns, max(len(bootstrapped), 1)), dtype=np.int64)
        thresholds = np.full(select.shape[1], 2**20, dtype=np.int64)
        for k, comparison in enumerate(self.thresholds):
            select[comparison.column, k] = 1
            thresholds[k] = comparison.threshold
        paths = np.zeros((select.shape[1], n_leaves), dtype=np.int64)
        paths[: len(bootstrapped)] = all_paths[bootstrapped]
        linear = np.zeros((self.n_columns, n_leaves), dtype=np.int64)
        for i, c in enumerate(self.comparisons):
            if isinstance(c, LinearComparison):
                for column, weight in c.weights:
                    linear[column] += weight * all_paths[i]
                bias += c.constant * all_paths[i]
        return {
            "select": select,
            "thresholds": thresholds,
            "paths": paths,
            "linear": linear,
            "bias": bias,
            "targets": targets,
        }

    # -- clear evaluation ------------------------------------------------------------------
    def predict_clear(self, q_x: np.ndarray) -> np.ndarray:
        """Verdicts (0/1) of circuit-input rows, in clear, with the same integer arithmetic."""
        m = self.matrices()
        x = np.atleast_2d(q_x)
        bits = (x @ m["select"] <= m["thresholds"]).astype(np.int64)
        score = bits @ m["paths"] + x @ m["linear"] + m["bias"]
        matched = (score == m["targets"]).sum(axis=1)
        return (matched if self.leaf_class == 1 else 1 - matched).astype(np.int64)

    # -- FHE -------------------------------------------------------------------------------
    def module(self, form: str = "cheapest") -> Any:
        """Return the (uncompiled) concrete-python module: predict, predict_batch and explain.

        ``predict_batch`` is ``predict`` on a matrix of rows (one application per row, each
        party's fields in its own input), for a portfolio: one call for many applications.

        Args:
            form: "lookups" for the two-lookup form (``development.two_lookups``: two
                bootstraps per application, whatever the tree's size; only for trees whose
                verdicts have that form), "paths" for the general evaluation below, "cheapest"
                for the two-lookup form where the tree allows it, else the general one.

        Raises:
            ValueError: if ``form`` is none of those, or "lookups" is asked of a tree that does
                not have that form.

        In the general form, ``explain`` scores every candidate credit-bureau row against the
        same applicant and bank rows: the bootstrapped comparisons on the applicant's and bank's
        inputs are computed once, those on credit-bureau inputs once per candidate (none with
        this encoding: the credit bureau sends 0/1 and one-hot inputs), then the path matching
        per candidate. (A single lookup over the joint region of all tested features would need
        a 7-bit bootstrap, which the optimizer can only serve with 16384-coefficient
        polynomials: slower and a much larger evaluation key, so the matching stays at 3-4
        bits.)
        """
        if form not in ("lookups", "paths", "cheapest"):
            raise ValueError(f"unknown circuit form {form!r}")
        if form in ("lookups", "cheapest"):
            found = find_two_lookup_form(self)
            if found is not None:
                return self._lookup_module(found)
            if form == "lookups":
                raise ValueError("the tree's verdicts do not have the two-lookup form")
        return self._path_module()

    def _lookup_module(self, form: TwoLookupForm) -> Any:
        """The module of the two-lookup form (see ``development.two_lookups``)."""
        a0, _ = self.party_slices["applicant"]
        _, b1 = self.party_slices["bank"]
        c0, c1 = self.party_slices["credit_bureau"]
        table = fhe.LookupTable(list(form.table))
        u_all, v_all, constant, threshold = (
            form.u_weights,
            form.v_weights,
            form.v_constant,
            form.threshold,
        )
        u_known, u_cand = u_all[a0:b1], u_all[c0:c1]
        v_known, v_cand = v_all[a0:b1], v_all[c0:c1]
        # One first lookup per candidate where u reads candidate inputs (or where the first
        # lookup is the verdict, one per candidate); else one, shared by every candidate.
        u_per_candidate = bool(u_cand.any()) or threshold is None

        def verdict(first: Any, linear: Callable[[], Any]) -> Any:
            return first if threshold is None else first + linear() + constant >= threshold

        @fhe.module()
        class CreditScoring:  # noqa: D101 - concrete-python module
            @fhe.function(PREDICT_INPUTS)
            def predict(applicant, bank, credit_bureau):  # noqa: N805
                x = np.concatenate((applicant, bank, credit_bureau))
                return verdict(table[np.dot(x, u_all)], lambda: np.dot(x, v_all))

            @fhe.function(PREDICT_INPUTS)
            def predict_batch(applicant, bank, credit_bureau):  # noqa: N805
                x = np.concatenate((applicant, bank, credit_bureau), axis=1)
                return verdict(table[x @ u_all], lambda: x @ v_all)

            @fhe.function(EXPLAIN_INPUTS)
            def explain(applicant, bank, candidates):  # noqa: N805
                known = np.concatenate((applicant, bank))
                u = np.dot(known, u_known)
                if u_per_candidate:
                    u = u + candidates @ u_cand
                return verdict(table[u], lambda: np.dot(known, v_known) + candidates @ v_cand)

        return CreditScoring

    def _path_module(self) -> Any:
        """The module of the general form: comparisons, then one lookup per matched leaf."""
        m = self.matrices()
        select, thresholds, paths, linear, bias, targets = (
            m[k] for k in ("select", "thresholds", "paths", "linear", "bias", "targets")
        )
        leaf_class = self.leaf_class
        a0, _ = self.party_slices["applicant"]
        _, b1 = self.party_slices["bank"]
        c0, c1 = self.party_slices["credit_bureau"]
        columns = [comparison.column for comparison in self.thresholds]
        on_candidate = np.array([c0 <= c < c1 for c in columns], dtype=bool)
        known_idx, cand_idx = np.flatnonzero(~on_candidate), np.flatnonzero(on_candidate)
        select_known, select_cand = select[a0:b1][:, known_idx], select[c0:c1][:, cand_idx]
        thr_known, thr_cand = thresholds[known_idx], thresholds[cand_idx]
        paths_known, paths_cand = paths[known_idx], paths[cand_idx]
        linear_known, linear_cand = linear[a0:b1], linear[c0:c1]
        has_known, has_cand, has_any = len(known_idx) > 0, len(cand_idx) > 0, len(columns) > 0

        @fhe.module()
        class CreditScoring:  # noqa: D101 - concrete-python module
            @fhe.function(PREDICT_INPUTS)
            def predict(applicant, bank, credit_bureau):  # noqa: N805
                x = np.concatenate((applicant, bank, credit_bureau))
                score = x @ linear + bias
                if has_any:
                    score = score + ((x @ select) <= thresholds) @ paths
                hits = score == targets
                return np.sum(hits) if leaf_class == 1 else 1 - np.sum(hits)

            @fhe.function(PREDICT_INPUTS)
            def predict_batch(applicant, bank, credit_bureau):  # noqa: N805
                x = np.concatenate((applicant, bank, credit_bureau), axis=1)
                score = x @ linear + bias
                if has_any:
                    score = score + ((x @ select) <= thresholds) @ paths
                matched = np.sum(score == targets, axis=1)
                return matched if leaf_class == 1 else 1 - matched

            @fhe.function(EXPLAIN_INPUTS)
            def explain(applicant, bank, candidates):  # noqa: N805
                known = np.concatenate((applicant, bank))
                score = known @ linear_known + candidates @ linear_cand + bias
                if has_known:
                    score = score + ((known @ select_known) <= thr_known) @ paths_known
                if has_cand:
                    score = score + ((candidates @ select_cand) <= thr_cand) @ paths_cand
                matched = np.sum(score == targets, axis=1)
                return matched if leaf_class == 1 else 1 - matched

        return CreditScoring
