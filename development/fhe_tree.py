"""The quantized decision tree as integer matrices, its clear evaluation and its FHE module.

The tree is evaluated the way Concrete ML evaluates trees (comparisons, then path matching, as in
Hummingbird's GEMM strategy), written directly in concrete-python so that the three parties'
inputs stay separate ciphertexts and one module holds both ``predict`` and ``explain``:

1. ``bits = (x @ SELECT) <= THRESHOLDS``: one programmable bootstrap (PBS) per distinct
   comparison (nodes of the tree that test the same feature against the same threshold share it);
2. ``hits = (bits @ PATHS) == DEPTHS``: one PBS per leaf of one class (approval or refusal,
   whichever has fewer leaves); a leaf's hit is 1 exactly when every node on its path went the
   leaf's way (+1 for "left", -1 for "right");
3. ``verdict = sum(hits)`` (or ``1 - sum(hits)`` when refusal leaves are matched): exactly one
   leaf is reached, so the sum says whether it is one of the matched class.

Sibling leaves that predict the same class are merged first, which removes their parent node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from concrete import fhe


@dataclass
class QuantizedTree:
    """A pruned decision tree over quantized integer features.

    Attributes:
        node_features: feature index of each distinct comparison ("node") of the tree.
        node_thresholds: integer threshold t of each comparison (go left when x <= t).
        leaf_class: the class whose leaves are matched (the one with fewer leaves): with 1 the
            verdict is the number of matched leaves reached, with 0 it is 1 minus that number.
        leaf_paths: for each leaf of ``leaf_class``, the list of (comparison, +1 left / -1 right);
            a comparison met twice on one path counts twice, and a path that needs a comparison
            both true and false can never be reached, as in the tree.
        n_features: number of circuit input features.
        n_bits: bit width of the quantized inputs (values 0 .. 2**n_bits - 1).
        party_slices: {party: [start, stop)} of the features in circuit order.
    """

    node_features: list[int]
    node_thresholds: list[int]
    leaf_class: int
    leaf_paths: list[list[tuple[int, int]]]
    n_features: int
    n_bits: int
    party_slices: dict[str, tuple[int, int]]

    @classmethod
    def from_sklearn(
        cls, tree: Any, n_features: int, n_bits: int, party_slices: dict[str, tuple[int, int]]
    ) -> QuantizedTree:
        """Build from a fitted sklearn tree trained on integer features (``tree_`` attribute)."""
        t = tree.tree_
        predicted = np.argmax(t.value[:, 0, :], axis=1)

        def leaf_class(node: int) -> int | None:
            """Class of a subtree if every leaf under it predicts the same one."""
            if t.children_left[node] == -1:
                return int(predicted[node])
            left, right = leaf_class(t.children_left[node]), leaf_class(t.children_right[node])
            return left if left is not None and left == right else None

        features: list[int] = []
        thresholds: list[int] = []
        paths: dict[int, list[list[tuple[int, int]]]] = {0: [], 1: []}
        comparisons: dict[tuple[int, int], int] = {}

        def walk(node: int, path: list[tuple[int, int]]) -> None:
            cls_ = leaf_class(node)
            if cls_ is not None:
                paths[cls_].append(path)
                return
            # Features are integers, so x <= 2.5 is x <= 2. Nodes that test the same comparison
            # share one bootstrap.
            key = (int(t.feature[node]), int(np.floor(t.threshold[node])))
            if key not in comparisons:
                comparisons[key] = len(features)
                features.append(key[0])
                thresholds.append(key[1])
            index = comparisons[key]
            walk(t.children_left[node], [*path, (index, 1)])
            walk(t.children_right[node], [*path, (index, -1)])

        walk(0, [])
        # Matching the class with fewer leaves costs fewer bootstraps; the other follows.
        matched = 1 if len(paths[1]) <= len(paths[0]) else 0
        return cls(
            features, thresholds, matched, paths[matched], n_features, n_bits, party_slices
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuantizedTree:
        """Rebuild from ``to_json``'s output."""
        return cls(
            node_features=data["node_features"],
            node_thresholds=data["node_thresholds"],
            leaf_class=data["leaf_class"],
            leaf_paths=[[tuple(step) for step in path] for path in data["leaf_paths"]],
            n_features=data["n_features"],
            n_bits=data["n_bits"],
            party_slices={k: tuple(v) for k, v in data["party_slices"].items()},
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serializable description."""
        return {
            "node_features": self.node_features,
            "node_thresholds": self.node_thresholds,
            "leaf_class": self.leaf_class,
            "leaf_paths": [[list(step) for step in path] for path in self.leaf_paths],
            "n_features": self.n_features,
            "n_bits": self.n_bits,
            "party_slices": {k: list(v) for k, v in self.party_slices.items()},
        }

    # -- matrices ---------------------------------------------------------------------------
    def matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return SELECT (features x nodes), THRESHOLDS, PATHS (nodes x leaves), DEPTHS."""
        n_nodes = max(len(self.node_features), 1)
        n_leaves = max(len(self.leaf_paths), 1)
        select = np.zeros((self.n_features, n_nodes), dtype=np.int64)
        thresholds = np.full(n_nodes, 2**62, dtype=np.int64)
        for node, (feature, threshold) in enumerate(
            zip(self.node_features, self.node_thresholds, strict=True)
        ):
            select[feature, node] = 1
            thresholds[node] = threshold
        paths = np.zeros((n_nodes, n_leaves), dtype=np.int64)
        depths = np.full(n_leaves, -1, dtype=np.int64)
        for leaf, path in enumerate(self.leaf_paths):
            for node, direction in path:
                paths[node, leaf] += direction
            depths[leaf] = sum(1 for _, direction in path if direction == 1)
        return select, thresholds, paths, depths

    # -- clear evaluation ------------------------------------------------------------------
    def predict_clear(self, q_x: np.ndarray) -> np.ndarray:
        """Verdicts (0/1) of quantized rows, in clear, with the same integer arithmetic as FHE."""
        select, thresholds, paths, depths = self.matrices()
        bits = (np.atleast_2d(q_x) @ select <= thresholds).astype(np.int64)
        matched = ((bits @ paths) == depths).sum(axis=1).astype(np.int64)
        return matched if self.leaf_class == 1 else 1 - matched

    # -- FHE -------------------------------------------------------------------------------
    def module(self) -> Any:
        """Return the (uncompiled) concrete-python module with ``predict`` and ``explain``.

        ``explain`` scores every candidate credit-bureau row against the same applicant and bank
        rows: the comparisons on the applicant's and bank's features are computed once, only
        those on credit-bureau features once per candidate, then the path matching per candidate.
        (A single lookup over the joint region of all tested features would need a 7-bit
        bootstrap, which the optimizer can only serve with 16384-coefficient polynomials: slower
        and a much larger evaluation key, so the matching stays at 3-4 bits.)
        """
        select, thresholds, paths, depths = self.matrices()
        leaf_class = self.leaf_class
        a0, a1 = self.party_slices["applicant"]
        b0, b1 = self.party_slices["bank"]
        c0, c1 = self.party_slices["credit_bureau"]
        # Comparisons are ordered arbitrarily: split them by the party whose feature they test.
        on_candidate = np.array([c0 <= f < c1 for f in self.node_features] or [False])
        known_idx, cand_idx = np.flatnonzero(~on_candidate), np.flatnonzero(on_candidate)
        select_known = np.concatenate([select[a0:a1], select[b0:b1]])[:, known_idx]
        select_cand = select[c0:c1][:, cand_idx]
        thr_known, thr_cand = thresholds[known_idx], thresholds[cand_idx]
        paths_known, paths_cand = paths[known_idx], paths[cand_idx]
        has_known = len(known_idx) > 0

        @fhe.module()
        class CreditScoring:  # noqa: D101 - concrete-python module
            @fhe.function(
                {"applicant": "encrypted", "bank": "encrypted", "credit_bureau": "encrypted"}
            )
            def predict(applicant, bank, credit_bureau):  # noqa: N805
                x = np.concatenate((applicant, bank, credit_bureau))
                bits = (x @ select) <= thresholds
                hits = (bits @ paths) == depths
                return np.sum(hits) if leaf_class == 1 else 1 - np.sum(hits)

            @fhe.function(
                {"applicant": "encrypted", "bank": "encrypted", "candidates": "encrypted"}
            )
            def explain(applicant, bank, candidates):  # noqa: N805
                bits_cand = (candidates @ select_cand) <= thr_cand
                score = bits_cand @ paths_cand
                if has_known:
                    known = np.concatenate((applicant, bank))
                    bits_known = (known @ select_known) <= thr_known
                    score = score + bits_known @ paths_known
                hits = score == depths
                matched = np.sum(hits, axis=1)
                return matched if leaf_class == 1 else 1 - matched

        return CreditScoring
