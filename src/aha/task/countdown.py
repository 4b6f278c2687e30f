"""Countdown, the game: tasks, operator patterns and an exact solver.

A task is a multiset of numbers and a target; a solution combines *every* number exactly once
with + - * / (the seed's reward demands all of them). Arithmetic is exact rational arithmetic
(ints where a value is whole, reduced numerator/denominator pairs otherwise: `Fraction`
semantics without its cost), so 7 / 2 * 4 = 14 is a solution and 1e-5 slop is not.

Operator pattern: the multiset of binary operators of an expression, written in the fixed order
`+ - * /` ("55 + 36 - 7 - 19" -> "+--", "(12 - 7) * 3" -> "-*"). A task's pattern is the
*simplest* pattern among all its solutions, simplest meaning first in that order compared
letter by letter ("++" < "+-" < "+*" < "+/" < "--" < "-*" < ...). So a task labelled "-*" has no
solution a + b + c, which is what lets aha.task.generator balance tasks over patterns.

Pure Python. Generating tasks: aha.task.generator; loading and splitting them: aha.stages.prepare_data.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from aha.task import rewards

OPS = "+-*/"
# A pattern is stored as an int: 3 bits per operator count, so joining two sub-expressions and
# an operator is one integer addition.
_OP_CODE = {"+": 1, "-": 1 << 3, "*": 1 << 6, "/": 1 << 9}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_SOLVER_NUMBERS = 7  # 3 bits per operator count hold 7; 6 numbers (the schema's max) fit

# A value: an int when whole, else (numerator, denominator) in lowest terms, denominator > 1,
# so equal values are equal dict keys.
Value = int | tuple[int, int]
# An expression tree: an int leaf, or (op, left, right).
Tree = int | tuple[str, "Tree", "Tree"]
# value -> {pattern code -> one tree with that value and pattern}
Table = dict[Value, dict[int, Tree]]


@dataclass(frozen=True)
class Task:
    """One Countdown puzzle: use every number once to reach the target."""

    nums: tuple[int, ...]
    target: int


# ----------------------------------------------------------------------------- patterns


@lru_cache(maxsize=4096)
def pattern_of_code(code: int) -> str:
    """'+--' for the code of one plus and two minuses."""
    return "".join(op * ((code >> (3 * i)) & 7) for i, op in enumerate(OPS))


def _rank(code: int) -> str:
    """Sort key: the pattern in the alphabet a<b<c<d, so '++' < '+-' < ... < '//'."""
    return pattern_of_code(code).translate(_RANK_TABLE)


_RANK_TABLE = str.maketrans(OPS, "abcd")


def all_patterns(num_count: int) -> list[str]:
    """Every pattern of an expression over `num_count` numbers, simplest first."""
    return [
        "".join(ops) for ops in itertools.combinations_with_replacement(OPS, max(num_count - 1, 0))
    ]


def pattern_key(pattern: str) -> tuple[int, str]:
    """Sort key for patterns: fewer operators first, then simplest first ('++' < '+-' < '**')."""
    return len(pattern), pattern.translate(_RANK_TABLE)


def simplest_of(trees: dict[int, Tree]) -> tuple[str, Tree]:
    """(pattern, tree) of the simplest pattern in {pattern code: tree} (not empty)."""
    code = min(trees, key=_rank)
    return pattern_of_code(code), trees[code]


def operator_pattern(expr: str) -> str | None:
    """The binary operators of an expression in the order + - * / ('12 + 5 * 3' -> '+*').

    Read by the reward's parser (`aha.task.rewards.parse_expression`), so a text gets a pattern
    exactly when the equation reward can read it: a trailing '= N' is ignored; anything else
    the reward refuses (unary signs, other characters) gives None.
    """
    tree = rewards.parse_expression(expr.partition("=")[0]) if isinstance(expr, str) else None
    if tree is None:
        return None
    counts: Counter[str] = Counter()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            counts[node[0]] += 1
            stack += node[1:]
    return "".join(op * counts[op] for op in OPS)


# ----------------------------------------------------------------------------- arithmetic


def _q(n: int, d: int) -> Value:
    """n / d in lowest terms (d != 0): an int when whole, else (numerator, denominator > 1).

    Hand-rolled instead of `Fraction`: the solver does ~10^3 operations per task and
    Fraction's construction and hashing dominated its time 5 to 1.
    """
    if d < 0:
        n, d = -n, -d
    g = math.gcd(n, d)
    if g != 1:
        n //= g
        d //= g
    return n if d == 1 else (n, d)


def _parts(x: Value) -> tuple[int, int]:
    return (x, 1) if type(x) is int else x  # type: ignore[return-value]


def _plus(a: Value, b: Value) -> Value:
    if type(a) is int and type(b) is int:
        return a + b
    (an, ad), (bn, bd) = _parts(a), _parts(b)
    return _q(an * bd + bn * ad, ad * bd)


def _minus(a: Value, b: Value) -> Value:
    if type(a) is int and type(b) is int:
        return a - b
    (an, ad), (bn, bd) = _parts(a), _parts(b)
    return _q(an * bd - bn * ad, ad * bd)


def _times(a: Value, b: Value) -> Value:
    if type(a) is int and type(b) is int:
        return a * b
    (an, ad), (bn, bd) = _parts(a), _parts(b)
    return _q(an * bn, ad * bd)


def _over(a: Value, b: Value) -> Value | None:
    """a / b, or None when b is 0."""
    if type(a) is int and type(b) is int:
        if b == 0:
            return None
        q, r = divmod(a, b)
        return q if r == 0 else _q(a, b)
    (an, ad), (bn, bd) = _parts(a), _parts(b)
    return None if bn == 0 else _q(an * bd, ad * bn)


_APPLY = {"+": _plus, "-": _minus, "*": _times, "/": _over}


def value(tree: Tree) -> Value | None:
    """Exact value of an expression tree, None on division by zero."""
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = value(left), value(right)
    return None if a is None or b is None else _APPLY[op](a, b)


def show(tree: Tree) -> str:
    """Infix text with only the parentheses precedence needs: '(12 - 7) * 3', '12 + 5 * 3'.

    Left-associative reading gives back the same exact value, so every solution printed here
    scores 1.0 under `aha.task.rewards.equation_reward`.
    """
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    lhs, rhs = show(left), show(right)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        lhs = f"({lhs})"
    if not isinstance(right, int) and (
        _PRECEDENCE[right[0]] < _PRECEDENCE[op]
        or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in "-/")
    ):
        rhs = f"({rhs})"
    return f"{lhs} {op} {rhs}"


# ----------------------------------------------------------------------------- solver


@lru_cache(maxsize=16)
def _split_masks(n: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Index splits of n items into two non-empty parts, each unordered split once."""
    out = []
    for mask in range(1, (1 << n) - 1):
        if mask & 1:  # item 0 always on the left: {A, B} once, not also {B, A}
            left = tuple(i for i in range(n) if mask >> i & 1)
            right = tuple(i for i in range(n) if not mask >> i & 1)
            out.append((left, right))
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def _splits(ms: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Distinct unordered splits of a sorted multiset into two non-empty sub-multisets."""
    seen: dict[tuple[tuple[int, ...], tuple[int, ...]], None] = {}
    for li, ri in _split_masks(len(ms)):
        a = tuple(ms[i] for i in li)
        b = tuple(ms[i] for i in ri)
        seen[(a, b) if a <= b else (b, a)] = None
    return list(seen)


def _add(table: Table, value: Value | None, op: str, pa: dict, pb: dict, swap: bool) -> None:
    """Record `a op b` (or `b op a` when swap) for every pattern pair of the operands."""
    if value is None:
        return
    entry = table.get(value)
    if entry is None:
        entry = table[value] = {}
    opc = _OP_CODE[op]
    for ca, ta in pa.items():
        for cb, tb in pb.items():
            code = ca + cb + opc
            if code not in entry:
                entry[code] = (op, tb, ta) if swap else (op, ta, tb)


def _build(ms: tuple[int, ...]) -> Table:
    if len(ms) == 1:
        return {ms[0]: {0: ms[0]}}
    table: Table = {}
    for a_ms, b_ms in _splits(ms):
        ta, tb = _table(a_ms), _table(b_ms)
        for va, pa in ta.items():
            for vb, pb in tb.items():
                _add(table, _plus(va, vb), "+", pa, pb, False)
                _add(table, _times(va, vb), "*", pa, pb, False)
                _add(table, _minus(va, vb), "-", pa, pb, False)
                _add(table, _minus(vb, va), "-", pa, pb, True)
                _add(table, _over(va, vb), "/", pa, pb, False)
                _add(table, _over(vb, va), "/", pa, pb, True)
    return table


def targets(ms: tuple[int, ...], lo: int, hi: int) -> Table:
    """Every task of a sorted multiset: its whole values in [lo, hi], one tree per pattern.

    Like `_build` but keeps only those results. The generator's inner loop; int pairs take an
    inline path (3x faster than `_build`).
    """
    if len(ms) == 1:
        return {ms[0]: {0: ms[0]}} if lo <= ms[0] <= hi else {}
    out: Table = {}
    for a_ms, b_ms in _splits(ms):
        ta, tb = _table(a_ms), _table(b_ms)
        for va, pa in ta.items():
            a_int = type(va) is int
            for vb, pb in tb.items():
                if a_int and type(vb) is int:
                    if lo <= (r := va + vb) <= hi:
                        _add(out, r, "+", pa, pb, False)
                    if lo <= (r := va * vb) <= hi:
                        _add(out, r, "*", pa, pb, False)
                    if lo <= (r := va - vb) <= hi:
                        _add(out, r, "-", pa, pb, False)
                    if lo <= (r := vb - va) <= hi:
                        _add(out, r, "-", pa, pb, True)
                    if vb and va % vb == 0 and lo <= (r := va // vb) <= hi:
                        _add(out, r, "/", pa, pb, False)
                    if va and vb % va == 0 and lo <= (r := vb // va) <= hi:
                        _add(out, r, "/", pa, pb, True)
                    continue
                for r, op, swap in (
                    (_plus(va, vb), "+", False),
                    (_times(va, vb), "*", False),
                    (_minus(va, vb), "-", False),
                    (_minus(vb, va), "-", True),
                    (_over(va, vb), "/", False),
                    (_over(vb, va), "/", True),
                ):
                    if type(r) is int and lo <= r <= hi:
                        _add(out, r, op, pa, pb, swap)
    return out


@lru_cache(maxsize=1 << 15)
def _small_table(ms: tuple[int, ...]) -> Table:
    return _build(ms)


@lru_cache(maxsize=1 << 10)
def _large_table(ms: tuple[int, ...]) -> Table:
    return _build(ms)


def _table(ms: tuple[int, ...]) -> Table:
    """Every value a sorted multiset reaches, with one tree per operator pattern (memoised).

    Pairs (at most 6 values) are cached generously; larger multisets are only tabulated for
    the rare scans `_hits` cannot avoid (a 3 + 3 split, a target of 0).
    """
    return _small_table(ms) if len(ms) <= 2 else _large_table(ms)


def _hits(ms: tuple[int, ...], target: Value) -> dict[int, Tree]:
    """{pattern code: tree} of the solutions of a sorted multiset for one target.

    Nothing larger than a pair is tabulated: for each split {A, B} the smaller side's values
    are scanned and the value the other side would need through each operator (t - b, t + b,
    b - t, t / b, t * b, b / t) is looked up, recursively for a side of 3 or more numbers.
    """
    if len(ms) <= 2:
        return _table(ms).get(target, {})
    found: Table = {}  # holds the one value `target`, so `_add` records into it
    t = target
    for a_ms, b_ms in _splits(ms):
        if len(b_ms) > len(a_ms):
            a_ms, b_ms = b_ms, a_ms  # b: the smaller side, scanned
        if len(a_ms) <= 2:
            ta = _table(a_ms)
            get = ta.get
        else:
            get = functools.partial(_hits_or_none, a_ms)
        for vb, pb in _table(b_ms).items():
            for va, op, swap in _needed(t, vb):
                pa = get(va)
                if pa:
                    _add(found, t, op, pa, pb, swap)
            if t == 0 and vb == 0:  # a * 0 and 0 / a reach 0 for any (nonzero) a
                for va, pa in _table(a_ms).items():
                    for op in ("*", "/") if va != 0 else ("*",):
                        _add(found, t, op, pa, pb, op == "/")
    return found.get(t, {})


def _needed(t: Value, vb: Value) -> list[tuple[Value, str, bool]]:
    """(a, op, swap): the value a that reaches t as `a op vb` (swap: `vb op a`)."""
    if type(t) is int and type(vb) is int:
        out: list[tuple[Value, str, bool]] = [
            (t - vb, "+", False),
            (t + vb, "-", False),
            (vb - t, "-", True),
        ]
        if vb != 0:
            q, r = divmod(t, vb)
            out.append((q if r == 0 else _q(t, vb), "*", False))
            out.append((t * vb, "/", False))
            if t != 0:
                q, r = divmod(vb, t)
                out.append((q if r == 0 else _q(vb, t), "/", True))
        return out
    out = [(_minus(t, vb), "+", False), (_plus(t, vb), "-", False), (_minus(vb, t), "-", True)]
    if vb != 0:
        out.append((_over(t, vb), "*", False))  # type: ignore[arg-type]
        out.append((_times(t, vb), "/", False))
        if t != 0:
            out.append((_over(vb, t), "/", True))  # type: ignore[arg-type]
    return out


def _hits_or_none(ms: tuple[int, ...], target: Value) -> dict[int, Tree] | None:
    return _hits(ms, target) or None


def _check_nums(nums: Iterable[int]) -> tuple[int, ...]:
    ms = tuple(sorted(int(n) for n in nums))
    if not 1 <= len(ms) <= MAX_SOLVER_NUMBERS:
        raise ValueError(f"the solver takes 1 to {MAX_SOLVER_NUMBERS} numbers, got {len(ms)}")
    return ms


def simplest(nums: Sequence[int], target: int) -> tuple[str, str] | None:
    """(pattern, solution) of the task's simplest pattern, or None if it has no solution."""
    found = _hits(_check_nums(nums), int(target))
    if not found:
        return None
    pattern, tree = simplest_of(found)
    return pattern, show(tree)


def is_solvable(nums: Sequence[int], target: int) -> bool:
    """True when some expression uses every number exactly once and equals the target."""
    return bool(_hits(_check_nums(nums), int(target)))


def solve(nums: Sequence[int], target: int, max_solutions: int | None = 1) -> list[str]:
    """Solutions as expression strings, simplest pattern first; [] when unsolvable.

    `max_solutions=1` gives the solution of the task's pattern (fast path). More (or None:
    all) enumerates every expression tree and keeps distinct strings, ordered by pattern then
    text; commuted operands ('a + b' vs 'b + a') are produced once per split, not twice.
    """
    if max_solutions is not None and max_solutions < 1:
        raise ValueError("max_solutions must be >= 1 or None")
    ms = _check_nums(nums)
    if max_solutions == 1:
        best = simplest(ms, target)
        return [] if best is None else [best[1]]
    texts = [text for text, _ in _distinct_solutions(ms, int(target))]
    return texts if max_solutions is None else texts[:max_solutions]


def solution_trees(nums: Sequence[int], target: int) -> list[Tree]:
    """Every solution as a tree, one per distinct `show` text, in the order of `solve`'s texts.

    For callers that work on the expression itself (aha.tiny.traces) rather than its text.
    """
    return [tree for _, tree in _distinct_solutions(_check_nums(nums), int(target))]


def _distinct_solutions(ms: tuple[int, ...], target: int) -> list[tuple[str, Tree]]:
    """(text, first tree with that text), ordered by pattern then text."""
    found: dict[str, tuple[int, Tree]] = {}
    for code, tree in _every(ms).get(target, []):
        found.setdefault(show(tree), (code, tree))
    ordered = sorted(found, key=lambda text: (_rank(found[text][0]), text))
    return [(text, found[text][1]) for text in ordered]


@lru_cache(maxsize=256)
def _every(ms: tuple[int, ...]) -> dict[Value, list[tuple[int, Tree]]]:
    """value -> every (pattern code, tree) of a multiset (for `solve` with several answers)."""
    if len(ms) == 1:
        return {ms[0]: [(0, ms[0])]}
    out: dict[Value, list[tuple[int, Tree]]] = {}
    for a_ms, b_ms in _splits(ms):
        for va, la in _every(a_ms).items():
            for vb, lb in _every(b_ms).items():
                for op, result, swap in (
                    ("+", _plus(va, vb), False),
                    ("*", _times(va, vb), False),
                    ("-", _minus(va, vb), False),
                    ("-", _minus(vb, va), True),
                    ("/", _over(va, vb), False),
                    ("/", _over(vb, va), True),
                ):
                    if result is None:
                        continue
                    bucket = out.setdefault(result, [])
                    opc = _OP_CODE[op]
                    for ca, ta in la:
                        for cb, tb in lb:
                            bucket.append((ca + cb + opc, (op, tb, ta) if swap else (op, ta, tb)))
    return out
