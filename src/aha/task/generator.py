"""The offline Countdown task generator: distinct solvable tasks, balanced over patterns.

A task's operator pattern (aha.task.countdown) is the simplest among all its solutions, so a task
labelled "-*" has no solution a + b + c. Balancing tasks over patterns bounds what any single
answer shape can score: the ANCHORS measured 42% of naively drawn targets equal to a + b + c,
and a tiny policy learned exactly that shortcut. Without balancing the generator draws as
Stream-of-Search did (target uniform, then numbers that solve it).

Deterministic for a seed: the data stage's files are the same bytes for the same config.
Pure Python (tqdm only for an optional progress bar).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aha.task.countdown import (
    MAX_SOLVER_NUMBERS,
    Task,
    Tree,
    pattern_key,
    show,
    simplest,
    simplest_of,
    targets,
)

log = logging.getLogger("aha.task.generator")


@dataclass(frozen=True)
class Solved:
    """A task with its operator pattern and one solution of that pattern."""

    task: Task
    pattern: str
    solution: str


@dataclass(frozen=True)
class _Draw:
    """One size's share of the tasks: the ranges it is drawn from, the shared generator."""

    size: int
    quota: int
    number_range: tuple[int, int]
    target_range: tuple[int, int]
    rng: random.Random
    progress: bool


# Up to this many number multisets per size the generator enumerates every solvable task
# (3 numbers from 1-20: 1,540 multisets, 16,206 tasks with targets 1-99, 0.1 s); above it
# (3 or 4 numbers from 1-99) it tabulates random multisets until it holds OVERSAMPLE times
# the tasks it needs, one per (multiset, pattern). Either way it then takes tasks from the
# pattern buckets by water-filling.
ENUMERATE_MAX_MULTISETS = 20_000
OVERSAMPLE = 4
MAX_DRAWS_PER_TASK = 2000  # unbalanced draws: numbers redrawn at most this often per target

Key = tuple[tuple[int, ...], int]  # (sorted numbers, target): one puzzle
Item = tuple[tuple[int, ...], int, Tree]  # (sorted numbers, target, a solution)
Buckets = dict[str, list[Item]]  # task pattern -> its tasks


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
        draw = _Draw(size, quota, (lo, hi), (t_lo, t_hi), rng, progress)
        if math.comb(hi - lo + size, size) <= ENUMERATE_MAX_MULTISETS:
            buckets = _universe(draw)
        elif balance_patterns:
            buckets = _sampled_universe(draw)
        else:
            per_size.append(_natural_draws(draw))
            continue
        per_size.append(_from_buckets(buckets, draw, balance_patterns))
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


def _universe(draw: _Draw) -> Buckets:
    """Every solvable (multiset, target) in range, bucketed by task pattern."""
    size, (lo, hi) = draw.size, draw.number_range
    buckets: Buckets = {}
    total = math.comb(hi - lo + size, size)
    bar = progress_bar(total, f"enumerate {size}-number tasks", draw.progress, unit="multiset")
    for ms in itertools.combinations_with_replacement(range(lo, hi + 1), size):
        for value, pats in targets(ms, *draw.target_range).items():
            pattern, tree = simplest_of(pats)
            buckets.setdefault(pattern, []).append((ms, value, tree))
        bar.update(1)
    bar.close()
    return {p: sorted(buckets[p], key=lambda x: x[:2]) for p in sorted(buckets, key=pattern_key)}


def _sampled_universe(draw: _Draw) -> Buckets:
    """Tasks of random distinct multisets, at most one per (multiset, pattern), bucketed.

    Tabulating a multiset yields every target it reaches (about 15 in 1-99 for 4 numbers
    from 1-99) for one solver call, so rare patterns cost ~1.5 ms per multiset, not one solve
    per rejected guess.
    """
    size, quota, rng = draw.size, draw.quota, draw.rng
    buckets: Buckets = {}
    seen: set[tuple[int, ...]] = set()
    want, have, draws = OVERSAMPLE * quota, 0, 0
    bar = progress_bar(want, f"tabulate random {size}-number sets", draw.progress, unit="candidate")
    while have < want and draws < MAX_DRAWS_PER_TASK * max(quota, 1):
        draws += 1
        ms = tuple(sorted(rng.randint(*draw.number_range) for _ in range(size)))
        if ms in seen:
            continue
        seen.add(ms)
        per_pattern: dict[str, list[tuple[int, Tree]]] = {}
        for value, pats in targets(ms, *draw.target_range).items():
            pattern, tree = simplest_of(pats)
            per_pattern.setdefault(pattern, []).append((value, tree))
        for pattern, items in per_pattern.items():
            value, tree = items[rng.randrange(len(items))]
            buckets.setdefault(pattern, []).append((ms, value, tree))
        have += len(per_pattern)
        bar.update(len(per_pattern))
    bar.close()
    return {p: buckets[p] for p in sorted(buckets, key=pattern_key)}


def _from_buckets(buckets: Buckets, draw: _Draw, balance: bool) -> list[Solved]:
    """`draw.quota` tasks of the buckets: water-filled over patterns, or as Stream-of-Search."""
    quota, rng = draw.quota, draw.rng
    total = sum(map(len, buckets.values()))
    if quota > total:
        raise ValueError(_too_few(draw, total, exist=True))

    def solved(item: Item, pattern: str) -> Solved:
        nums = list(item[0])
        rng.shuffle(nums)
        return Solved(Task(tuple(nums), item[1]), pattern, show(item[2]))

    if balance:
        take = water_fill([len(b) for b in buckets.values()], quota)
        log.info(
            "%d numbers: %d candidate tasks; taking %s",
            draw.size,
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
    left = sorted(by_target)  # targets with tasks left
    out = []
    for _ in range(quota):
        t = rng.choice(left)
        (j,) = rng.choices(range(len(by_target[t])), weights[t])
        ms, value, tree, p = by_target[t].pop(j)
        weights[t].pop(j)
        if not by_target[t]:
            left.remove(t)
        out.append(solved((ms, value, tree), p))
    return out


def _orderings(ms: tuple[int, ...]) -> int:
    out = math.factorial(len(ms))
    for _, group in itertools.groupby(ms):
        out //= math.factorial(len(list(group)))
    return out


def _key(s: Solved) -> Key:
    return tuple(sorted(s.task.nums)), s.task.target


def _natural_draws(draw: _Draw) -> list[Solved]:
    """Stream-of-Search's draw: target uniform, numbers redrawn until they solve it."""
    rng = draw.rng
    out: list[Solved] = []
    seen: set[Key] = set()
    bar = progress_bar(draw.quota, f"generate {draw.size}-number tasks", draw.progress)
    misses = 0
    while len(out) < draw.quota:
        target = rng.randint(*draw.target_range)
        for _ in range(MAX_DRAWS_PER_TASK):
            nums = [rng.randint(*draw.number_range) for _ in range(draw.size)]
            best = simplest(nums, target)
            if best is not None and (tuple(sorted(nums)), target) not in seen:
                break
        else:
            misses += 1
            if misses > 100:
                raise ValueError(_too_few(draw, len(out)))
            continue
        s = Solved(Task(tuple(nums), target), *best)
        seen.add(_key(s))
        out.append(s)
        bar.update(1)
    bar.close()
    return out


def _too_few(draw: _Draw, got: int, exist: bool = False) -> str:
    what = "exist" if exist else "were found"
    return (
        f"only {got} distinct solvable {draw.size}-number tasks {what} with "
        f"number_range={list(draw.number_range)}, target_range={list(draw.target_range)} but "
        f"{draw.quota} were asked for: lower dataset.num_samples (and dataset.generate.num_tasks) "
        "or widen the ranges"
    )


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "task") -> Any:
    """A tqdm bar, or a silent one when not `enabled` (tests, library callers)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=2, disable=not enabled)
