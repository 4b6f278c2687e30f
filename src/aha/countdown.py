"""Countdown tasks: an exact solver, an offline generator, loading and reproducible splits.

A task is a multiset of numbers and a target; a solution combines *every* number exactly once
with + - * / (the seed's reward demands all of them). Arithmetic is exact rational arithmetic
(ints where a value is whole, reduced numerator/denominator pairs otherwise: `Fraction`
semantics without its cost), so 7 / 2 * 4 = 14 is a solution and 1e-5 slop is not.

Operator pattern: the multiset of binary operators of an expression, written in the fixed order
`+ - * /` ("55 + 36 - 7 - 19" -> "+--", "(12 - 7) * 3" -> "-*"). A task's pattern is the
*simplest* pattern among all its solutions, simplest meaning first in that order compared
letter by letter ("++" < "+-" < "+*" < "+/" < "--" < "-*" < ...). So a task labelled "-*" has no
solution a + b + c, and balancing tasks over labels bounds what any single answer shape can
score: the ANCHORS measured 42% of naively drawn targets equal to a + b + c, and a tiny policy
learned exactly that shortcut.

Pure Python (numpy, pandas and datasets only inside the loaders and the splitter).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from aha import jsonl

log = logging.getLogger("aha.countdown")

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


@dataclass(frozen=True)
class Solved:
    """A task with its operator pattern and one solution of that pattern."""

    task: Task
    pattern: str
    solution: str


class DataSourceError(RuntimeError):
    """A task source that cannot be read; the message is one line and names the fix."""


# ----------------------------------------------------------------------------- patterns


@lru_cache(maxsize=4096)
def pattern_of_code(code: int) -> str:
    """'+--' for the code of one plus and two minuses."""
    return "".join(op * ((code >> (3 * i)) & 7) for i, op in enumerate(OPS))


def code_of_pattern(pattern: str) -> int:
    return sum(_OP_CODE[op] for op in pattern)


def _rank(code: int) -> str:
    """Sort key: the pattern in the alphabet a<b<c<d, so '++' < '+-' < ... < '//'."""
    return pattern_of_code(code).translate(_RANK_TABLE)


_RANK_TABLE = str.maketrans(OPS, "abcd")


def all_patterns(num_count: int) -> list[str]:
    """Every pattern of an expression over `num_count` numbers, simplest first."""
    return [
        "".join(ops) for ops in itertools.combinations_with_replacement(OPS, max(num_count - 1, 0))
    ]


def operator_pattern(expr: str) -> str:
    """The binary operators of an expression in the order + - * / ('12 + 5 * 3' -> '+*').

    A trailing '= N' is ignored; a sign at the start, after '(' or after another operator is
    unary and not counted. Text that is not an expression still gets a (meaningless) pattern.
    """
    counts = dict.fromkeys(OPS, 0)
    operand_before = False
    for ch in expr.split("=", 1)[0]:
        if ch in OPS:
            if operand_before:
                counts[ch] += 1
            operand_before = False
        elif ch == "(":
            operand_before = False
        elif ch.isdigit() or ch == ")":
            operand_before = True
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


def as_fraction(value: Value) -> Fraction:
    """A solver value as a Fraction (for callers and tests)."""
    n, d = _parts(value)
    return Fraction(n, d)


_APPLY = {"+": _plus, "-": _minus, "*": _times, "/": _over}


def tree_value(tree: Tree) -> Fraction | None:
    """Exact value of an expression tree, None on division by zero."""
    return None if (v := _value(tree)) is None else as_fraction(v)


def _value(tree: Tree) -> Value | None:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = _value(left), _value(right)
    return None if a is None or b is None else _APPLY[op](a, b)


def show(tree: Tree) -> str:
    """Infix text with only the parentheses precedence needs: '(12 - 7) * 3', '12 + 5 * 3'.

    Left-associative reading gives back the same exact value, so every solution printed here
    scores 1.0 under `aha.rewards.equation_reward`.
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


def _targets(ms: tuple[int, ...], lo: int, hi: int) -> Table:
    """Like `_build` but keeps only whole results in [lo, hi]: every task of a multiset.

    The generator's inner loop; int pairs take an inline path (3x faster than `_build`).
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
    found: dict[int, Tree] = {}
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
                if not pa:
                    continue
                opc = _OP_CODE[op]
                for ca, tra in pa.items():
                    for cb, trb in pb.items():
                        code = ca + cb + opc
                        if code not in found:
                            found[code] = (op, trb, tra) if swap else (op, tra, trb)
            if t == 0 and vb == 0:  # a * 0 and 0 / a reach 0 for any (nonzero) a
                for va, pa in _table(a_ms).items():
                    for op in ("*", "/") if va != 0 else ("*",):
                        swap = op == "/"
                        for ca, tra in pa.items():
                            for cb, trb in pb.items():
                                code = ca + cb + _OP_CODE[op]
                                if code not in found:
                                    found[code] = (op, trb, tra) if swap else (op, tra, trb)
    return found


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
    code = min(found, key=_rank)
    return pattern_of_code(code), show(found[code])


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
    texts: dict[str, int] = {}
    for code, tree in _all_solutions(ms, int(target)):
        texts.setdefault(show(tree), code)
    ordered = sorted(texts, key=lambda s: (_rank(texts[s]), s))
    return ordered if max_solutions is None else ordered[:max_solutions]


@lru_cache(maxsize=256)
def _every(ms: tuple[int, ...]) -> dict[Value, list[tuple[int, Tree]]]:
    """value -> every (pattern code, tree) of a multiset (for `solve` with several answers)."""
    if len(ms) == 1:
        return {ms[0]: [(0, ms[0])]}
    out: dict[Value, list[tuple[int, Tree]]] = {}
    for a_ms, b_ms in _splits(ms):
        for va, la in _every(a_ms).items():
            for vb, lb in _every(b_ms).items():
                for op, value, swap in (
                    ("+", _plus(va, vb), False),
                    ("*", _times(va, vb), False),
                    ("-", _minus(va, vb), False),
                    ("-", _minus(vb, va), True),
                    ("/", _over(va, vb), False),
                    ("/", _over(vb, va), True),
                ):
                    if value is None:
                        continue
                    bucket = out.setdefault(value, [])
                    opc = _OP_CODE[op]
                    for ca, ta in la:
                        for cb, tb in lb:
                            bucket.append((ca + cb + opc, (op, tb, ta) if swap else (op, ta, tb)))
    return out


def _all_solutions(ms: tuple[int, ...], target: int) -> list[tuple[int, Tree]]:
    return list(_every(ms).get(target, []))


# ----------------------------------------------------------------------------- generator

# Up to this many number multisets per size the generator enumerates every solvable task
# (3 numbers from 1-20: 1,540 multisets, 16,206 tasks with targets 1-99, 0.1 s); above it
# (3 or 4 numbers from 1-99) it tabulates random multisets until it holds OVERSAMPLE times
# the tasks it needs, one per (multiset, pattern). Either way it then takes tasks from the
# pattern buckets by water-filling.
ENUMERATE_MAX_MULTISETS = 20_000
OVERSAMPLE = 4
MAX_DRAWS_PER_TASK = 2000  # unbalanced draws: numbers redrawn at most this often per target

Key = tuple[tuple[int, ...], int]  # (sorted numbers, target): one puzzle


def generate(
    n: int,
    seed: int,
    num_counts: Sequence[int] = (3, 4),
    number_range: tuple[int, int] = (1, 99),
    target_range: tuple[int, int] = (1, 99),
    balance_patterns: bool = True,
    progress: bool = False,
) -> list[Solved]:
    """`n` distinct solvable tasks, deterministic for `seed`, each with pattern and solution.

    Sizes are split evenly over `num_counts` (as Stream-of-Search drew the Hub set's 3 and 4).
    Tasks are distinct puzzles, (sorted numbers, target), so none can sit in both train and
    test; asking for more than exist raises ValueError naming the limit.

    With `balance_patterns` each size's tasks are spread as evenly as the ranges allow over
    task patterns (water-filling: a pattern with fewer tasks than its share gives them all and
    the rest is shared by the others). Without it, as Stream-of-Search: target uniform, then
    numbers uniform among those that solve it.
    """
    sizes = list(dict.fromkeys(int(k) for k in num_counts))
    lo, hi = (int(x) for x in number_range)
    t_lo, t_hi = (int(x) for x in target_range)
    if n < 1 or not sizes or lo > hi or t_lo > t_hi or min(sizes) < 2:
        raise ValueError(
            f"bad generator settings: n={n}, num_counts={sizes}, number_range={number_range}, "
            f"target_range={target_range}"
        )
    if max(sizes) > MAX_SOLVER_NUMBERS:
        raise ValueError(f"num_counts: at most {MAX_SOLVER_NUMBERS} numbers")
    rng = random.Random(seed)
    per_size = []
    for size, quota in zip(sizes, _shares(n, len(sizes)), strict=True):
        args = (size, quota, (lo, hi), (t_lo, t_hi), rng, progress)
        if math.comb(hi - lo + size, size) <= ENUMERATE_MAX_MULTISETS:
            buckets = _universe(size, (lo, hi), (t_lo, t_hi), progress)
        elif balance_patterns:
            buckets = _sampled_universe(*args)
        else:
            per_size.append(_natural_draws(*args))
            continue
        per_size.append(_from_buckets(buckets, *args, balance_patterns))
    return _interleave(per_size)


def _shares(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _interleave(groups: Sequence[Sequence[Solved]]) -> list[Solved]:
    """Round-robin merge, so the list order has no blocks of one size or pattern."""
    return [s for group in itertools.zip_longest(*groups) for s in group if s is not None]


def water_fill(sizes: Sequence[int], n: int) -> list[int]:
    """Take `n` items from buckets as evenly as possible: min(size, level), summing to n."""
    if n > sum(sizes):
        raise ValueError(f"asked for {n} of {sum(sizes)}")
    take = [0] * len(sizes)
    left, open_ = n, sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    while open_:
        share, extra = divmod(left, len(open_))
        i = open_[0]
        if sizes[i] <= share:  # smallest bucket cannot fill its share: take all of it
            take[i] = sizes[i]
            left -= sizes[i]
            open_.pop(0)
            continue
        for j, i in enumerate(sorted(open_)):
            take[i] = share + (1 if j < extra else 0)
        break
    return take


def _universe(
    size: int, number_range: tuple[int, int], target_range: tuple[int, int], progress: bool
) -> dict[str, list[tuple[tuple[int, ...], int, Tree]]]:
    """Every solvable (multiset, target) in range, bucketed by task pattern."""
    lo, hi = number_range
    buckets: dict[str, list[tuple[tuple[int, ...], int, Tree]]] = {}
    total = math.comb(hi - lo + size, size)
    bar = _progress(total, f"enumerate {size}-number tasks", progress, unit="multiset")
    for ms in itertools.combinations_with_replacement(range(lo, hi + 1), size):
        for value, pats in _targets(ms, *target_range).items():
            code = min(pats, key=_rank)
            buckets.setdefault(pattern_of_code(code), []).append((ms, value, pats[code]))
        bar.update(1)
    bar.close()
    return {p: sorted(buckets[p], key=lambda x: x[:2]) for p in sorted(buckets, key=pattern_key)}


def pattern_key(pattern: str) -> tuple[int, str]:
    """Sort key for patterns: fewer operators first, then simplest first ('++' < '+-' < '**')."""
    return len(pattern), pattern.translate(_RANK_TABLE)


def _sampled_universe(
    size: int,
    quota: int,
    number_range: tuple[int, int],
    target_range: tuple[int, int],
    rng: random.Random,
    progress: bool,
) -> dict[str, list[tuple[tuple[int, ...], int, Tree]]]:
    """Tasks of random distinct multisets, at most one per (multiset, pattern), bucketed.

    Tabulating a multiset yields every target it reaches (about 15 in 1-99 for 4 numbers
    from 1-99) for one solver call, so rare patterns cost ~1.5 ms per multiset, not one solve
    per rejected guess.
    """
    buckets: dict[str, list[tuple[tuple[int, ...], int, Tree]]] = {}
    seen: set[tuple[int, ...]] = set()
    want, have, draws = OVERSAMPLE * quota, 0, 0
    bar = _progress(want, f"tabulate random {size}-number sets", progress, unit="candidate")
    while have < want and draws < MAX_DRAWS_PER_TASK * max(quota, 1):
        draws += 1
        ms = tuple(sorted(rng.randint(*number_range) for _ in range(size)))
        if ms in seen:
            continue
        seen.add(ms)
        per_pattern: dict[int, list[tuple[int, Tree]]] = {}
        for value, pats in _targets(ms, *target_range).items():
            code = min(pats, key=_rank)
            per_pattern.setdefault(code, []).append((value, pats[code]))
        for code, items in per_pattern.items():
            value, tree = items[rng.randrange(len(items))]
            buckets.setdefault(pattern_of_code(code), []).append((ms, value, tree))
        have += len(per_pattern)
        bar.update(len(per_pattern))
    bar.close()
    return {p: buckets[p] for p in sorted(buckets, key=pattern_key)}


def _from_buckets(
    buckets: dict[str, list[tuple[tuple[int, ...], int, Tree]]],
    size: int,
    quota: int,
    number_range: tuple[int, int],
    target_range: tuple[int, int],
    rng: random.Random,
    progress: bool,
    balance: bool,
) -> list[Solved]:
    total = sum(map(len, buckets.values()))
    if quota > total:
        raise ValueError(_too_few(size, total, quota, number_range, target_range, exist=True))

    def solved(item: tuple[tuple[int, ...], int, Tree], pattern: str) -> Solved:
        nums = list(item[0])
        rng.shuffle(nums)
        return Solved(Task(tuple(nums), item[1]), pattern, show(item[2]))

    if balance:
        take = water_fill([len(b) for b in buckets.values()], quota)
        log.info(
            "%d numbers: %d candidate tasks; taking %s",
            size,
            total,
            ", ".join(f"{p} {k}/{len(b)}" for (p, b), k in zip(buckets.items(), take, strict=True)),
        )
        groups = [
            [solved(item, p) for item in rng.sample(b, k)]
            for (p, b), k in zip(buckets.items(), take, strict=True)
        ]
        return _interleave(groups)
    # Stream-of-Search weights: target uniform, then ordered number tuples uniform.
    by_target: dict[int, list[tuple[tuple[int, ...], int, Tree, str]]] = {}
    for p, b in buckets.items():
        for item in b:
            by_target.setdefault(item[1], []).append((*item, p))
    for items in by_target.values():
        items.sort(key=lambda x: x[:2])
    weights = {t: [_orderings(x[0]) for x in items] for t, items in by_target.items()}
    targets = sorted(by_target)
    out = []
    for _ in range(quota):
        t = rng.choice(targets)
        (j,) = rng.choices(range(len(by_target[t])), weights[t])
        ms, value, tree, p = by_target[t].pop(j)
        weights[t].pop(j)
        if not by_target[t]:
            targets.remove(t)
        out.append(solved((ms, value, tree), p))
    return out


def _orderings(ms: tuple[int, ...]) -> int:
    out = math.factorial(len(ms))
    for _, group in itertools.groupby(ms):
        out //= math.factorial(len(list(group)))
    return out


def _key(s: Solved) -> Key:
    return tuple(sorted(s.task.nums)), s.task.target


def _natural_draws(size, quota, number_range, target_range, rng, progress) -> list[Solved]:
    """Stream-of-Search's draw: target uniform, numbers redrawn until they solve it."""
    out: list[Solved] = []
    seen: set[Key] = set()
    bar = _progress(quota, f"generate {size}-number tasks", progress)
    misses = 0
    while len(out) < quota:
        target = rng.randint(*target_range)
        for _ in range(MAX_DRAWS_PER_TASK):
            nums = [rng.randint(*number_range) for _ in range(size)]
            best = simplest(nums, target)
            if best is not None and (tuple(sorted(nums)), target) not in seen:
                break
        else:
            misses += 1
            if misses > 100:
                raise ValueError(_too_few(size, len(out), quota, number_range, target_range))
            continue
        s = Solved(Task(tuple(nums), target), *best)
        seen.add(_key(s))
        out.append(s)
        bar.update(1)
    bar.close()
    return out


def _too_few(size, got, quota, number_range, target_range, exist: bool = False) -> str:
    what = "exist" if exist else "were found"
    return (
        f"only {got} distinct solvable {size}-number tasks {what} with "
        f"number_range={list(number_range)}, target_range={list(target_range)} but {quota} were "
        f"asked for: lower dataset.num_samples (and dataset.generate.num_tasks) or widen the ranges"
    )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool, unit: str = "task") -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=2)


# ----------------------------------------------------------------------------- loading

HUB_HINT = (
    "set `dataset.source: generate` (offline generator) or `dataset.source: path` "
    "(a local parquet/jsonl with columns target, nums)"
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_hub(name: str, split: str = "train") -> list[Task]:
    """Tasks of a Hub dataset (columns target, nums) via `datasets.load_dataset`.

    Offline or unreachable, this raises DataSourceError with one line naming the fix.
    """
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as err:  # offline, unreachable, unknown name/split: all end here
        raise DataSourceError(
            f"cannot load {name!r} (split {split!r}) from the Hugging Face Hub "
            f"({_first_line(err)}); offline? {HUB_HINT}"
        ) from err
    missing = {"target", "nums"} - set(ds.column_names)
    if missing:
        raise DataSourceError(f"{name}: missing column(s) {', '.join(sorted(missing))}")
    return _tasks(ds["nums"], ds["target"], source=name)


def load_path(path: str | Path) -> list[Task]:
    """Tasks from a local .parquet or .jsonl file with columns `target` and `nums`."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"dataset.path: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = set(table.column_names)
        rows = {c: table.column(c).to_pylist() for c in ("nums", "target") if c in columns}
    elif suffix in {".jsonl", ".json"}:
        rows = {"nums": [], "target": []}
        columns = {"nums", "target"}
        try:
            for _, record in jsonl.records(path):
                columns &= set(record)
                if columns != {"nums", "target"}:
                    break
                rows["nums"].append(record["nums"])
                rows["target"].append(record["target"])
        except ValueError as err:
            raise DataSourceError(str(err)) from None
    else:
        raise DataSourceError(f"dataset.path: {path}: expected a .parquet or .jsonl file")
    missing = {"nums", "target"} - columns
    if missing:
        raise DataSourceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return _tasks(rows["nums"], rows["target"], source=str(path))


def _as_int(x: Any) -> int:
    if isinstance(x, bool):
        raise TypeError("bool")
    if isinstance(x, float):
        if not x.is_integer():
            raise ValueError(x)
        return int(x)
    return int(x) if not isinstance(x, str) else int(x.strip())


def _tasks(nums_col: Sequence[Any], target_col: Sequence[Any], source: str) -> list[Task]:
    out = []
    for i, (nums, target) in enumerate(zip(nums_col, target_col, strict=True)):
        try:
            ns = tuple(_as_int(n) for n in nums)
            t = _as_int(target)
        except (TypeError, ValueError):
            raise DataSourceError(
                f"{source}: row {i}: nums must be a list of integers and target an integer "
                f"(got nums={nums!r}, target={target!r})"
            ) from None
        if not ns:
            raise DataSourceError(f"{source}: row {i}: empty nums")
        out.append(Task(ns, t))
    return out


# ----------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class Split:
    """Row indices (into the loaded task list) of each split; eval is a prefix of test."""

    train: list[int]
    test: list[int]
    eval: list[int]


def split_indices(
    n_tasks: int,
    shuffle_seed: int,
    num_samples: int,
    test_size: float,
    split_seed: int,
    eval_size: int,
) -> Split:
    """Reproducible shuffle, subsample, train/test split and fixed eval subset.

    Same indices as the seed notebook's `ds.shuffle(seed=shuffle_seed).select(range(n))`
    followed by `train_test_split(test_size, seed=split_seed)` (the notebook passed no seed;
    here it is fixed): both draw `numpy.random.default_rng(seed).permutation`. The eval set is
    the first `eval_size` rows of the (already random) test split.
    """
    import numpy as np

    if num_samples > n_tasks:
        raise ValueError(
            f"dataset.num_samples ({num_samples}) exceeds the {n_tasks} tasks available: lower "
            "it (or generate more with dataset.generate.num_tasks)"
        )
    if not 0 < test_size < 1:
        raise ValueError(f"dataset.test_size must lie in (0, 1), got {test_size}")
    keep = np.random.default_rng(shuffle_seed).permutation(n_tasks)[:num_samples]
    n_test = math.ceil(test_size * num_samples)
    n_train = num_samples - n_test
    if n_train < 1:
        raise ValueError(f"dataset.test_size {test_size} leaves no training tasks")
    order = np.random.default_rng(split_seed).permutation(num_samples)
    test = [int(keep[i]) for i in order[:n_test]]
    train = [int(keep[i]) for i in order[n_test:]]
    if eval_size > len(test):
        raise ValueError(
            f"dataset.eval_size ({eval_size}) exceeds the test split ({len(test)} tasks): lower "
            "it or raise dataset.num_samples / dataset.test_size"
        )
    return Split(train=train, test=test, eval=test[:eval_size])


def _iter_chunks(xs: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(xs), size):
        yield xs[i : i + size]


def label(
    tasks: Sequence[Task],
    order: Sequence[int],
    budget_s: float,
    progress: bool = False,
    clock: Callable[[], float] | None = None,
) -> dict[int, tuple[str, str] | None]:
    """Solve tasks in `order` until `budget_s` runs out: {index: (pattern, solution) | None}.

    Indices not reached are absent (unknown), so a huge Hub set costs bounded time.
    """
    import time

    clock = clock or time.perf_counter
    start = clock()
    out: dict[int, tuple[str, str] | None] = {}
    bar = _progress(len(order), "solve tasks", progress)
    for chunk in _iter_chunks(order, 256):
        if clock() - start > budget_s:
            log.warning(
                "solver budget %.0f s spent: %d of %d tasks labelled",
                budget_s,
                len(out),
                len(order),
            )
            break
        for i in chunk:
            t = tasks[i]
            if len(t.nums) <= MAX_SOLVER_NUMBERS:  # larger tasks stay unknown
                out[i] = simplest(t.nums, t.target)
        bar.update(len(chunk))
    bar.close()
    return out
