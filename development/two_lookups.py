"""The tree as two table lookups, when its verdicts allow it: 2 bootstraps instead of one per node.

``fhe_tree`` evaluates any tree with one programmable bootstrap (PBS) per distinct comparison on
a quantized input and one per leaf of the matched class. Many trees need far less. Let the
inputs the tree reads form *variables*: a quantized input (its values), a 0/1 input, or a one-hot
group (which of its columns is 1). Pick one 0/1 or one-hot variable ``v``; the others, packed
into one integer ``u`` (a linear sum of inputs, no bootstrap), take few enough values for one
lookup. If the sets of ``v``'s states that the tree approves, one set per value of ``u``, are
nested (each contains the previous one, in some order), the states can be ranked from the
hardest to the easiest to approve, ``B(state)``, and each ``u`` needs a rank at least
``need(u)``. Then, exactly::

    verdict = [A(u) + B(v) >= R]   with   A(u) = R - need(u),  R = the number of ranks,

where ``A`` is one lookup on ``u``, ``B(v)`` is linear in ``v``'s inputs (any function of a
0/1 input or of a one-hot group is), and the comparison with ``R`` is the second lookup: two
bootstraps per application, whatever the number of nodes and leaves. No ``v`` at all is the
one-lookup case (``verdict = table[u]``), used when every variable fits in ``u``.

``find_two_lookup_form`` tries every choice of ``v``, checks the form on *every* input the
clients can send (each variable over its whole domain: the check is exhaustive, not sampled) and
keeps the one with the narrowest lookups, or returns None: the tree then keeps the general
evaluation. The deployed tree, for instance, reads one quantized applicant input and the credit
bureau's employed flag and years-employed bin; its approved years-bins are nested for every
value of the other two, so it is decided by a lookup on ``u = x + 8 * employed`` (4 bits) and a
comparison of ``A(u) + B(years bin)`` with ``R`` (4 bits).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from development.fhe_tree import QuantizedTree

# The widest lookup the form may use: the tree's own lookups are 3-4 bits wide, and wider ones
# need larger bootstrap parameters (a 7-bit lookup needed 16384-coefficient polynomials).
MAX_LOOKUP_BITS = 4


@dataclass(frozen=True)
class Variable:
    """An input the tree reads, over its whole domain.

    Attributes:
        columns: its circuit columns (one, or a one-hot group's).
        size: how many values it takes.
        onehot: whether it is a one-hot group (value k: column ``columns[k]`` is 1).
    """

    columns: tuple[int, ...]
    size: int
    onehot: bool

    def weights(self, values: np.ndarray) -> dict[int, int]:
        """Column weights whose sum over an input row is ``values[value of this variable]``.

        Any ``values`` for a one-hot group (one weight per state); for a scalar input (one
        weight), ``values`` must be linear in it and 0 at 0.

        Raises:
            ValueError: if a scalar input's ``values`` are not ``step * value``.
        """
        if self.onehot:
            return {column: int(values[k]) for k, column in enumerate(self.columns)}
        step = int(values[1]) if self.size > 1 else 0
        if not np.array_equal(values, step * np.arange(self.size)):
            raise ValueError("a scalar input's values must be step * value")
        return {self.columns[0]: step}

    def write(self, row: np.ndarray, value: int) -> None:
        """Set this variable to ``value`` in a circuit row."""
        if self.onehot:
            row[list(self.columns)] = 0
            row[self.columns[value]] = 1
        else:
            row[self.columns[0]] = value


@dataclass(frozen=True)
class TwoLookupForm:
    """``verdict = [table[u] + v_weights . x + v_constant >= threshold]`` (see the module).

    With no ``v`` (``threshold`` None) the verdict is ``table[u]`` itself.

    Attributes:
        u_weights: one weight per circuit column: ``u = x @ u_weights``.
        table: the first lookup, ``A(u)`` (or the verdict), padded to a power of two.
        v_weights: one weight per circuit column: the linear ``B(v)`` part.
        v_constant: added to ``B(v)`` (0 for a one-hot ``v``).
        threshold: ``R``; None for the one-lookup case.
    """

    u_weights: np.ndarray
    table: tuple[int, ...]
    v_weights: np.ndarray
    v_constant: int
    threshold: int | None

    @property
    def lookups(self) -> int:
        """Bootstraps per application: 1 or 2."""
        return 1 if self.threshold is None else 2

    def verdicts(self, rows: np.ndarray) -> np.ndarray:
        """The form's verdicts of circuit rows, in clear (what the circuit computes)."""
        table = np.asarray(self.table, dtype=np.int64)
        first = table[np.atleast_2d(rows) @ self.u_weights]
        if self.threshold is None:
            return first
        score = first + np.atleast_2d(rows) @ self.v_weights + self.v_constant
        return (score >= self.threshold).astype(np.int64)


def tree_variables(tree: QuantizedTree) -> list[Variable]:
    """The variables the tree's verdict reads (the comparisons on its matched leaves' paths).

    Its inputs, each one-hot group counted once, in column order.
    """
    from development.fhe_tree import ThresholdComparison

    used: set[int] = set()
    on_paths = {index for path in tree.leaf_paths for index, _ in path}
    for comparison in (tree.comparisons[index] for index in sorted(on_paths)):
        if isinstance(comparison, ThresholdComparison):
            used.add(comparison.column)
        else:
            used.update(column for column, _ in comparison.weights)
    group_of = {c: g for g in tree.onehot_groups for c in range(g[0], g[1])}
    variables: dict[tuple[int, ...], Variable] = {}
    for column in sorted(used):
        if column in group_of:
            start, stop = group_of[column]
            columns = tuple(range(start, stop))
            variables[columns] = Variable(columns, stop - start, onehot=True)
        else:
            variables[(column,)] = Variable((column,), tree.column_max[column] + 1, onehot=False)
    return list(variables.values())


def domain_rows(tree: QuantizedTree, variables: list[Variable]) -> np.ndarray:
    """Every combination of the variables' values as circuit rows (other inputs at a valid 0).

    Columns the tree does not read are 0, except that each unread one-hot group has its first
    column set, so every row is one a client could send.
    """
    base = np.zeros(tree.n_columns, dtype=np.int64)
    for start, _ in tree.onehot_groups:
        base[start] = 1
    rows = []
    for values in itertools.product(*(range(v.size) for v in variables)):
        row = base.copy()
        for variable, value in zip(variables, values, strict=True):
            variable.write(row, value)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(len(rows), tree.n_columns)


def _bits(size: int) -> int:
    """Bits of an unsigned integer that takes ``size`` values (0 .. size - 1)."""
    return max(1, (size - 1).bit_length())


def _packed(variables: list[Variable], n_columns: int) -> tuple[np.ndarray, int]:
    """Column weights packing the variables into one integer (mixed radix), and its range."""
    weights = np.zeros(n_columns, dtype=np.int64)
    radix = 1
    for variable in variables:
        for column, weight in variable.weights(np.arange(variable.size) * radix).items():
            weights[column] += weight
        radix *= variable.size
    return weights, radix


def _try(
    tree: QuantizedTree, variables: list[Variable], v: Variable | None
) -> TwoLookupForm | None:
    """The form with ``v`` as the linear variable (None: one lookup), or None if it does not fit."""
    packed = [variable for variable in variables if variable is not v]
    if _bits(int(np.prod([variable.size for variable in packed], dtype=object))) > MAX_LOOKUP_BITS:
        return None  # before packing: the weights of many variables overflow 64 bits
    u_weights, u_size = _packed(packed, tree.n_columns)
    rows = domain_rows(tree, variables)
    verdicts = tree.predict_clear(rows)
    u = rows @ u_weights
    padding = (0,) * (2 ** _bits(u_size) - u_size)
    if v is None:
        table = np.zeros(u_size, dtype=np.int64)
        table[u] = verdicts
        form = TwoLookupForm(u_weights, (*table.tolist(), *padding), u_weights * 0, 0, None)
        return form if np.array_equal(form.verdicts(rows), verdicts) else None
    state = np.argmax(rows[:, list(v.columns)], axis=1) if v.onehot else rows[:, v.columns[0]]
    approved = np.zeros((u_size, v.size), dtype=np.int64)
    approved[u, state] = verdicts
    # Rank the states from the hardest to approve (approved for the fewest u) to the easiest.
    counts = approved.sum(axis=0)
    rank = np.searchsorted(np.unique(counts), counts)
    ranks = int(rank.max()) + 1
    need = np.array([rank[row == 1].min() if row.any() else ranks for row in approved])
    if not np.array_equal(approved, (rank[None, :] >= need[:, None]).astype(np.int64)):
        return None  # the approved sets are not nested: no such form with this v
    if _bits(2 * ranks) > MAX_LOOKUP_BITS:
        return None
    v_weights = np.zeros(tree.n_columns, dtype=np.int64)
    constant = int(rank[0]) if not v.onehot else 0
    for column, weight in v.weights(rank - constant).items():
        v_weights[column] += weight
    table = (ranks - need).tolist()
    form = TwoLookupForm(u_weights, (*table, *padding), v_weights, constant, ranks)
    return form if np.array_equal(form.verdicts(rows), verdicts) else None


def find_two_lookup_form(tree: QuantizedTree) -> TwoLookupForm | None:
    """The tree's verdict as one or two lookups, checked on its whole input domain, or None.

    Prefers one lookup, then the narrowest lookups; returns None when no choice fits in
    ``MAX_LOOKUP_BITS`` or the tree's verdicts do not have the form.
    """
    variables = tree_variables(tree)
    if not variables:
        return None
    linear = [variable for variable in variables if variable.onehot or variable.size == 2]
    found = [_try(tree, variables, v) for v in [None, *linear]]
    forms = [form for form in found if form is not None]
    if not forms:
        return None
    return min(forms, key=lambda f: (f.lookups, len(f.table)))
