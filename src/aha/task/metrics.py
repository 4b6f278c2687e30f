"""Success metrics of sampled completions: Wilson intervals, Fisher's test, pass@k, lengths.

Pure Python (no torch, no numpy): the `score` stage must stay cheap to import and its numbers
easy to check by hand. A completion counts as a success when its equation reward is exactly 1.0
(the reward is binary, so the success rate is also the mean equation reward).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aha.task import rewards

Z95 = 1.959963984540054  # two-sided 95% normal quantile
NO_PATTERN = "none"  # key in success_by_pattern for tasks whose pattern is null


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_trials(
    where: str, names: tuple[str, str], successes: int, n: int, no_trials: str
) -> None:
    """`successes` of `n` trials: two counts, at least one trial (else `where: no_trials`), no
    more successes than trials; `names` name the two in the messages."""
    _check_count(names[0], successes)
    _check_count(names[1], n)
    if n == 0:
        raise ValueError(f"{where}: {no_trials}")
    if successes > n:
        raise ValueError(f"{where}: {names[0]} {successes} > {names[1]} {n}")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%).

    Chosen over the normal (Wald) interval because it stays inside [0, 1] and keeps its coverage
    at 0% and 100%, which early checkpoints hit. n = 0 has no interval: ValueError.
    """
    _check_trials(
        "wilson_interval", ("successes", "n"), successes, n, "n = 0 trials has no interval"
    )
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"wilson_interval: z must be a positive number, got {z}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    # At 0 and n successes the exact bound is 0 or 1; rounding must not move it.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def fisher_exact_p(successes_a: int, n_a: int, successes_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two binomial proportions are equal.

    Exact at any counts, 0/n and n/n included, where a normal approximation is at its worst:
    given the total successes, group a's count is hypergeometric, and the p-value sums the
    probabilities of every split no more likely than the observed one (the usual two-sided
    rule). Integer arithmetic, so ties are exact and no tolerance is needed. n = 0: ValueError.
    """
    for name, successes, n in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        names = (f"successes_{name}", f"n_{name}")
        _check_trials(
            "fisher_exact_p", names, successes, n, f"n_{name} = 0 trials has no proportion"
        )
    total = successes_a + successes_b
    # ways to place `total` successes with k of them in group a
    ways = [
        math.comb(n_a, k) * math.comb(n_b, total - k)
        for k in range(max(0, total - n_b), min(total, n_a) + 1)
    ]
    observed = math.comb(n_a, successes_a) * math.comb(n_b, successes_b)
    return sum(w for w in ways if w <= observed) / math.comb(n_a + n_b, total)


def proportions_agree(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.01
) -> bool:
    """Whether two success counts are consistent with one rate: Fisher's two-sided exact test
    does not reject equal proportions at level `alpha` (rejects when p <= alpha)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"proportions_agree: alpha must be in (0, 1), got {alpha}")
    return fisher_exact_p(successes_a, n_a, successes_b, n_b) > alpha


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k).

    n samples of which c are correct; the chance that k drawn without replacement contain one.
    Evaluated as a product, which avoids huge binomials.
    """
    _check_trials("pass_at_k", ("c", "n"), c, n, "n must be >= 1")
    _check_count("k", k)
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _success(sample: Mapping[str, Any]) -> bool:
    return float(sample["equation_reward"]) == 1.0


def _group_by_prompt(samples: Sequence[Mapping[str, Any]]) -> dict[int, list[bool]]:
    """Success flags per prompt id; a repeated (prompt, sample_index) is refused."""
    seen: set[tuple[int, int]] = set()
    groups: dict[int, list[bool]] = defaultdict(list)
    for s in samples:
        key = (int(s["prompt_id"]), int(s["sample_index"]))
        if key in seen:
            raise ValueError(f"duplicate completion: prompt_id {key[0]}, sample_index {key[1]}")
        seen.add(key)
        groups[key[0]].append(_success(s))
    return groups


def _share(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


def summarize(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Success, pass@k, format, length and truncation statistics of a list of sample dicts.

    k is the number of samples per prompt (the smallest count if prompts differ, so that
    pass@k stays defined for every prompt); pass@1 and pass@k are means over prompts. With no
    samples every metric is None, so an empty checkpoint still yields a valid record.
    """
    n = len(samples)
    groups = _group_by_prompt(samples)
    empty: dict[str, Any] = {
        "n_prompts": len(groups),
        "n_completions": n,
        "k": None,
        "success_rate": None,
        "success_lo": None,
        "success_hi": None,
        "pass_at_1": None,
        "pass_at_k": None,
        "format_rate": None,
        "numbers_ok_share": None,
        "tokens_mean": None,
        "tokens_median": None,
        "truncated_share": None,
        "success_by_pattern": {},
    }
    if n == 0:
        return empty
    successes = sum(_success(s) for s in samples)
    lo, hi = wilson_interval(successes, n)
    k = min(len(flags) for flags in groups.values())
    tokens = [int(s["num_tokens"]) for s in samples]
    return {
        **empty,
        "k": k,
        "success_rate": successes / n,
        "success_lo": lo,
        "success_hi": hi,
        "pass_at_1": statistics.fmean(pass_at_k(len(f), sum(f), 1) for f in groups.values()),
        "pass_at_k": statistics.fmean(pass_at_k(len(f), sum(f), k) for f in groups.values()),
        "format_rate": _share(float(s["format_reward"]) == 1.0 for s in samples),
        "numbers_ok_share": numbers_ok_share(samples),
        "tokens_mean": statistics.fmean(tokens),
        "tokens_median": float(statistics.median(tokens)),
        "truncated_share": _share(bool(s["truncated"]) for s in samples),
        "success_by_pattern": success_by_pattern(samples),
    }


def numbers_ok_share(samples: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of completions whose answer uses each of the task's numbers once, right or wrong.

    Splits the failures: an answer with the right numbers but the wrong value missed the search;
    one with other numbers (an intermediate result, a number left out) is sloppy copying. None
    when the samples do not carry their task's numbers.
    """
    if not samples or any("nums" not in s for s in samples):
        return None
    return _share(
        rewards.uses_numbers(rewards.extract_answer(s["text"]), s["nums"]) for s in samples
    )


def success_by_pattern(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Success per operator pattern: a rise confined to one pattern is a shortcut, not search."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        pattern = s.get("pattern")
        groups[NO_PATTERN if pattern is None else str(pattern)].append(_success(s))
    out: dict[str, dict[str, Any]] = {}
    for pattern in sorted(groups):
        flags = groups[pattern]
        lo, hi = wilson_interval(sum(flags), len(flags))
        out[pattern] = {
            "n": len(flags),
            "successes": sum(flags),
            "success_rate": sum(flags) / len(flags),
            "success_lo": lo,
            "success_hi": hi,
        }
    return out


def is_success(sample: Mapping[str, Any]) -> bool:
    """Whether one scored completion counts as a success: public, so that pages showing
    completions (aha.stages.tables) mark exactly the ones every number here counts."""
    return _success(sample)


# ----------------------------------------------------------------------------- across seeds


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_cdf: df must be >= 1, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: int) -> float:
    """The `q` quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def mean_t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of per-seed rates and its two-sided Student t interval.

    The interval treats each seed's rate as one draw of the training run's outcome, so it is
    about seed-to-seed variation (df = seeds - 1); with one value there is none to measure and
    lo, hi are NaN. No values: ValueError.
    """
    if not values:
        raise ValueError("mean_t_interval: no values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"mean_t_interval: level must be in (0, 1), got {level}")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def pooled_wilson(counts: Iterable[tuple[int, int]], z: float = Z95) -> tuple[float, float, float]:
    """(rate, lo, hi) of all completions of all seeds pooled: `counts` is (successes, n) per
    seed; the Wilson interval of the summed counts (sampling error only, not seed variation)."""
    pairs = [(_check_count("successes", s), _check_count("n", n)) for s, n in counts]
    successes = sum(s for s, _ in pairs)
    n = sum(n for _, n in pairs)
    lo, hi = wilson_interval(successes, n, z)
    return successes / n, lo, hi


def pass_at_k_curve(samples: Sequence[Mapping[str, Any]], max_k: int) -> dict[int, float]:
    """Mean unbiased pass@k over prompts for k = 1 .. min(max_k, smallest prompt's n).

    The curve stops at the smallest number of samples any prompt has (as `summarize` picks k),
    so every point averages the same prompts and the curve cannot dip because a prompt dropped
    out; its last point at that k equals summarize's pass_at_k. No samples: {}.
    """
    if _check_count("max_k", max_k) < 1:
        raise ValueError(f"pass_at_k_curve: max_k must be >= 1, got {max_k}")
    groups = list(_group_by_prompt(samples).values())
    if not groups:
        return {}
    top = min(max_k, min(len(flags) for flags in groups))
    return {
        k: statistics.fmean(pass_at_k(len(f), sum(f), k) for f in groups) for k in range(1, top + 1)
    }


def _lengths(tokens: Sequence[int]) -> dict[str, Any]:
    if not tokens:
        return {"n": 0, "tokens_mean": None, "tokens_median": None}
    return {
        "n": len(tokens),
        "tokens_mean": statistics.fmean(tokens),
        "tokens_median": float(statistics.median(tokens)),
    }


def length_by_outcome(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Completion length of successes and failures apart, and the truncated share.

    A mean length that grows may be longer reasoning or more failures that ramble into the
    token limit; split by outcome, with the truncated share beside it, the two are told apart.
    Mean and median are None for an empty group; truncated_share is None with no samples.
    """
    correct = [int(s["num_tokens"]) for s in samples if _success(s)]
    incorrect = [int(s["num_tokens"]) for s in samples if not _success(s)]
    return {
        "correct": _lengths(correct),
        "incorrect": _lengths(incorrect),
        "truncated_share": _share(bool(s["truncated"]) for s in samples) if samples else None,
    }


def _success_record(flags: Sequence[bool]) -> dict[str, Any]:
    """n, successes, rate and Wilson 95% interval of a non-empty list of success flags."""
    lo, hi = wilson_interval(sum(flags), len(flags))
    return {
        "n": len(flags),
        "successes": sum(flags),
        "success_rate": sum(flags) / len(flags),
        "success_lo": lo,
        "success_hi": hi,
    }


def success_by_size(samples: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Success per task size (how many numbers), ascending: 4-number tasks are much harder, so
    a shift in the mix of sizes can move the overall rate with no change in skill."""
    groups: dict[int, list[bool]] = defaultdict(list)
    for s in samples:
        if "nums" not in s:
            raise ValueError(
                f"success_by_size: sample (prompt_id {s.get('prompt_id')}, "
                f"sample_index {s.get('sample_index')}) has no 'nums'"
            )
        groups[len(s["nums"])].append(_success(s))
    return {size: _success_record(groups[size]) for size in sorted(groups)}
