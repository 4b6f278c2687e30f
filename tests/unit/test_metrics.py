"""Wilson intervals, Fisher's exact test, unbiased pass@k and sample summaries against
hand-computed values."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import pytest

from aha.task.metrics import (
    NO_PATTERN,
    Z95,
    fisher_exact_p,
    length_by_outcome,
    mean_t_interval,
    numbers_ok_share,
    pass_at_k,
    pass_at_k_curve,
    pooled_wilson,
    proportions_agree,
    success_by_pattern,
    success_by_size,
    summarize,
    t_cdf,
    t_quantile,
    wilson_interval,
)


def _score_test_bound(successes: int, n: int, upper: bool) -> float:
    """Independent Wilson bound: invert the score test |p̂ - p| = z·sqrt(p(1-p)/n) by bisection."""
    p_hat = successes / n
    lo, hi = (p_hat, 1.0) if upper else (0.0, p_hat)
    for _ in range(200):
        mid = (lo + hi) / 2
        inside = abs(p_hat - mid) <= Z95 * math.sqrt(mid * (1 - mid) / n)
        if inside == upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(
    ("successes", "n", "lo", "hi"),
    [
        # 0/10: lower 0, upper z²/(n + z²) = 3.841459/13.841459
        (0, 10, 0.0, 0.2775327999),
        # 5/10: 0.5 ± (z/(1 + z²/10))·sqrt(0.025 + z²/400)
        (5, 10, 0.2365930905, 0.7634069095),
        # 10/10 mirrors 0/10
        (10, 10, 0.7224672001, 1.0),
        # 81/263, the proportion used in the brief
        (81, 263, 0.2552885199, 0.3662095770),
    ],
)
def test_wilson_hand_values(successes: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(successes, n)
    assert got[0] == pytest.approx(lo, abs=1e-9)
    assert got[1] == pytest.approx(hi, abs=1e-9)


@pytest.mark.parametrize(("successes", "n"), [(1, 10), (81, 263), (3, 7), (199, 200), (1, 1)])
def test_wilson_matches_score_test_inversion(successes: int, n: int) -> None:
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(_score_test_bound(successes, n, upper=False), abs=1e-9)
    assert hi == pytest.approx(_score_test_bound(successes, n, upper=True), abs=1e-9)


def test_wilson_extremes_are_exact_and_interval_contains_estimate() -> None:
    assert wilson_interval(0, 1000)[0] == 0.0
    assert wilson_interval(1000, 1000)[1] == 1.0
    for s in range(0, 21):
        lo, hi = wilson_interval(s, 20)
        assert 0.0 <= lo <= s / 20 <= hi <= 1.0
    # a wider z gives a wider interval
    assert wilson_interval(5, 10, z=2.576)[0] < wilson_interval(5, 10)[0]


@pytest.mark.parametrize(
    ("successes", "n", "z"),
    [(0, 0, Z95), (11, 10, Z95), (-1, 10, Z95), (1.0, 10, Z95), (1, 10, 0.0), (1, 10, math.nan)],
)
def test_wilson_refuses_bad_input(successes, n, z) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, n, z)


def _brute_fisher_p(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Fraction:
    """Independent two-sided Fisher p-value: count, over every way to mark the pooled successes
    among the n_a + n_b trials, how often group a gets each count; sum the counts no more common
    than the observed one."""
    trials = range(n_a + n_b)
    arrangements = list(itertools.combinations(trials, successes_a + successes_b))
    counts = Counter(sum(i < n_a for i in chosen) for chosen in arrangements)
    tail = sum(c for c in counts.values() if c <= counts[successes_a])
    return Fraction(tail, len(arrangements))


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b", "p"),
    [
        # Fisher's tea tasting, 3/4 vs 1/4: splits 0..4 weigh 1, 16, 36, 16, 1 of C(8, 4) = 70
        (3, 4, 1, 4, Fraction(34, 70)),
        # 6/8 vs 1/5: splits 2..7 weigh 28, 280, 700, 560, 140, 8 of C(13, 7) = 1716
        (6, 8, 1, 5, Fraction(28 + 140 + 8, 1716)),
        # 199/200 vs 200/200: the one failure is in either group, each with chance 1/2
        (199, 200, 200, 200, Fraction(1)),
        # 0/n vs 0/n and n/n vs n/n: a single possible split
        (0, 10, 0, 10, Fraction(1)),
        (7, 7, 3, 3, Fraction(1)),
        # 0/10 vs 10/10: only the two extreme splits, each 1 / C(20, 10) = 1/184756
        (0, 10, 10, 10, Fraction(2, 184756)),
    ],
)
def test_fisher_exact_p_hand_values(a: int, n_a: int, b: int, n_b: int, p: Fraction) -> None:
    assert fisher_exact_p(a, n_a, b, n_b) == pytest.approx(float(p), rel=1e-15)
    assert fisher_exact_p(b, n_b, a, n_a) == pytest.approx(float(p), rel=1e-15)  # symmetric


@pytest.mark.parametrize(("n_a", "n_b"), [(1, 1), (3, 5), (6, 6), (2, 9)])
def test_fisher_exact_p_matches_enumeration(n_a: int, n_b: int) -> None:
    for a in range(n_a + 1):
        for b in range(n_b + 1):
            want = float(_brute_fisher_p(a, n_a, b, n_b))
            assert fisher_exact_p(a, n_a, b, n_b) == pytest.approx(want, rel=1e-12), (a, b)


def test_proportions_agree_at_the_stated_level() -> None:
    assert proportions_agree(199, 200, 200, 200)  # p = 1: a rebuild's 200/200 is the same
    assert not proportions_agree(100, 200, 180, 200)  # 50% vs 90%
    assert fisher_exact_p(100, 200, 180, 200) < 1e-15
    # 6/8 vs 1/5 has p = 4/39 = 0.1026: the same at 0.01 and 0.05, different at 0.15
    assert proportions_agree(6, 8, 1, 5) and proportions_agree(6, 8, 1, 5, alpha=0.05)
    assert not proportions_agree(6, 8, 1, 5, alpha=0.15)
    # p <= alpha rejects: 0/10 vs 10/10 has p = 1/92378
    assert not proportions_agree(0, 10, 10, 10, alpha=1 / 92378)
    assert proportions_agree(0, 10, 10, 10, alpha=1 / 92378 * (1 - 1e-9))


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b"),
    [(0, 0, 1, 10), (1, 10, 0, 0), (11, 10, 1, 10), (1, 10, -1, 10), (1.0, 10, 1, 10),
     (True, 10, 1, 10), (1, 10, 1, 10.0)],
)  # fmt: skip
def test_fisher_exact_p_refuses_bad_input(a, n_a, b, n_b) -> None:
    with pytest.raises(ValueError):
        fisher_exact_p(a, n_a, b, n_b)
    with pytest.raises(ValueError):
        proportions_agree(a, n_a, b, n_b)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, math.nan])
def test_proportions_agree_refuses_a_bad_level(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        proportions_agree(1, 10, 2, 10, alpha=alpha)


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values_and_large_n() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    # stable where the binomials are astronomically large
    exact = 1 - Fraction(math.comb(900, 100), math.comb(1000, 100))
    assert pass_at_k(1000, 100, 100) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1), (4, 1, 1.0)]
)
def test_pass_at_k_refuses_bad_input(n, c, k) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _sample(pid: int, idx: int, eq: float, fmt: float = 1.0, tokens: int = 10, **kw):
    return {
        "prompt_id": pid,
        "sample_index": idx,
        "equation_reward": eq,
        "format_reward": fmt,
        "num_tokens": tokens,
        "truncated": kw.get("truncated", False),
        "pattern": kw.get("pattern", "+-"),
    }


def test_summarize_uses_smallest_group_for_k_and_means_over_prompts() -> None:
    samples = [_sample(0, i, eq) for i, eq in enumerate([1.0, 0.0, 0.0, 0.0])]
    samples += [_sample(1, i, eq, pattern="**") for i, eq in enumerate([1.0, 1.0, 0.0])]
    out = summarize(samples)
    assert out["n_prompts"] == 2 and out["n_completions"] == 7 and out["k"] == 3
    assert out["success_rate"] == pytest.approx(3 / 7)
    assert (out["success_lo"], out["success_hi"]) == wilson_interval(3, 7)
    assert out["pass_at_1"] == pytest.approx((1 / 4 + 2 / 3) / 2)
    # prompt 0: 1 - C(3,3)/C(4,3) = 3/4; prompt 1: n - c = 1 < 3 -> 1
    assert out["pass_at_k"] == pytest.approx((3 / 4 + 1) / 2)


def test_summarize_counts_only_full_reward_as_success_and_refuses_duplicates() -> None:
    out = summarize([_sample(0, 0, 0.5, fmt=0.5), _sample(0, 1, 1.0)])
    assert out["success_rate"] == 0.5 and out["format_rate"] == 0.5
    with pytest.raises(ValueError, match="duplicate"):
        summarize([_sample(0, 0, 1.0), _sample(0, 0, 0.0)])


def test_numbers_ok_share_reads_the_answer_and_needs_the_task_numbers() -> None:
    def with_text(idx: int, answer: str) -> dict:
        text = f"\n9 + 4 = 13, 13 + 1 = 14, yes.\n</think>\n<answer> {answer} </answer>"
        return _sample(0, idx, 0.0) | {"nums": [9, 4, 1], "text": text}

    samples = [with_text(0, "(9 + 4) + 1"), with_text(1, "13 + 1"), with_text(2, "9 * 4 - 1")]
    samples.append(_sample(0, 3, 0.0) | {"nums": [9, 4, 1], "text": "no answer at all"})
    assert numbers_ok_share(samples) == 2 / 4  # the slip and the missing answer fail
    assert summarize(samples)["numbers_ok_share"] == 2 / 4
    assert numbers_ok_share([_sample(0, 0, 1.0)]) is None  # no task numbers: unknown, not 0
    assert numbers_ok_share([]) is None


def test_summarize_empty_is_all_none() -> None:
    out = summarize([])
    assert out["n_completions"] == 0 and out["n_prompts"] == 0
    assert out["success_by_pattern"] == {}
    assert all(
        v is None
        for k, v in out.items()
        if k not in {"n_completions", "n_prompts", "success_by_pattern"}
    )


def test_success_by_pattern_groups_null_pattern() -> None:
    samples = [
        _sample(0, 0, 1.0, pattern=None),
        _sample(0, 1, 0.0, pattern=None),
        _sample(1, 0, 1.0, pattern="*-"),
    ]
    out = success_by_pattern(samples)
    assert list(out) == ["*-", NO_PATTERN]
    assert out[NO_PATTERN]["n"] == 2 and out[NO_PATTERN]["success_rate"] == 0.5
    assert (out["*-"]["success_lo"], out["*-"]["success_hi"]) == wilson_interval(1, 1)


# ----------------------------------------------------------------------------- across seeds


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_closed_forms(q: float) -> None:
    """df 1 is Cauchy: tan(pi (q - 1/2)); df 2: (2q - 1) / sqrt(2 q (1 - q))."""
    assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-10)
    assert t_quantile(1 - q, 2) == pytest.approx(-t_quantile(q, 2), rel=1e-12)


def test_t_quantile_table_values_and_normal_limit() -> None:
    # two-sided 95% critical values of Student's t (any statistics table)
    table = {
        3: 3.182446305284263,
        5: 2.570581835636314,
        10: 2.228138851986274,
        30: 2.04227245630124,
    }
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, rel=1e-9), df
        assert t_cdf(value, df) == pytest.approx(0.975, abs=1e-12)
    assert t_quantile(0.975, 100_000) == pytest.approx(Z95, rel=1e-4)
    assert t_cdf(0.0, 7) == 0.5


def test_mean_t_interval_of_three_rates_by_hand() -> None:
    """Rates 10%, 20%, 30%: mean 20%, sd 10%, half-width t(0.975, 2) x 0.1 / sqrt(3)."""
    mean, lo, hi = mean_t_interval([0.1, 0.2, 0.3])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.1 / math.sqrt(3)  # 4.302652729749464 x ...
    assert half == pytest.approx(0.24841377117503, rel=1e-12)
    assert (mean, lo, hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half), rel=1e-10)
    assert mean_t_interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))  # no spread


def test_mean_t_interval_of_one_seed_has_no_interval() -> None:
    mean, lo, hi = mean_t_interval([0.25])
    assert mean == 0.25 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="no values"):
        mean_t_interval([])


def test_pooled_wilson_is_wilson_of_the_summed_counts() -> None:
    rate, lo, hi = pooled_wilson([(12, 24), (7, 24), (5, 24)])
    assert rate == 24 / 72
    assert (lo, hi) == wilson_interval(24, 72)
    assert pooled_wilson([(3, 9)])[1:] == wilson_interval(3, 9)
    with pytest.raises(ValueError, match="n = 0"):
        pooled_wilson([])
    with pytest.raises(ValueError, match="successes must be >= 0"):
        pooled_wilson([(-1, 4)])


def _flags(pid: int, flags: list[float], **kw) -> list[dict]:
    return [_sample(pid, i, eq, **kw) for i, eq in enumerate(flags)]


def test_pass_at_k_curve_known_values() -> None:
    one_of_four = _flags(0, [0.0, 1.0, 0.0, 0.0])
    assert pass_at_k_curve(one_of_four, 4) == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0})
    assert pass_at_k_curve(_flags(0, [0.0] * 4), 4) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    # c = 2 of 4: pass@2 = 1 - C(2,2)/C(4,2) = 5/6
    assert pass_at_k_curve(_flags(0, [1.0, 1.0, 0.0, 0.0]), 3) == pytest.approx(
        {1: 0.5, 2: 5 / 6, 3: 1.0}
    )


def test_pass_at_k_curve_averages_prompts_and_stops_at_smallest_n() -> None:
    two = _flags(0, [0.0, 1.0, 0.0, 0.0]) + _flags(1, [0.0] * 4)
    assert pass_at_k_curve(two, 4) == pytest.approx({1: 0.125, 2: 0.25, 3: 0.375, 4: 0.5})
    assert list(pass_at_k_curve(two, 2)) == [1, 2]
    # a prompt with 3 samples: the curve stops at k = 3 for every prompt (n < k never mixed in)
    uneven = _flags(0, [0.0, 1.0, 0.0, 0.0]) + _flags(1, [1.0, 0.0, 0.0])
    curve = pass_at_k_curve(uneven, 10)
    assert curve == pytest.approx({1: (0.25 + 1 / 3) / 2, 2: (0.5 + 2 / 3) / 2, 3: 1.0 - 0.25 / 2})
    assert curve[3] == summarize(uneven)["pass_at_k"]
    assert curve[1] == summarize(uneven)["pass_at_1"]


def test_pass_at_k_curve_empty_and_bad_input() -> None:
    assert pass_at_k_curve([], 5) == {}
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            pass_at_k_curve(_flags(0, [1.0]), bad)
    with pytest.raises(ValueError, match="duplicate"):
        pass_at_k_curve(_flags(0, [1.0]) + _flags(0, [0.0]), 1)


def test_length_by_outcome_by_hand() -> None:
    samples = [
        _sample(0, 0, 1.0, tokens=10),
        _sample(0, 1, 0.0, tokens=5),
        _sample(0, 2, 1.0, tokens=40),
        _sample(1, 0, 0.0, tokens=7, truncated=True),
        _sample(1, 1, 1.0, tokens=20),
        _sample(1, 2, 0.5, tokens=9),  # a partial reward is not a success
    ]
    assert length_by_outcome(samples) == {
        "correct": {"n": 3, "tokens_mean": pytest.approx(70 / 3), "tokens_median": 20.0},
        "incorrect": {"n": 3, "tokens_mean": 7.0, "tokens_median": 7.0},
        "truncated_share": pytest.approx(1 / 6),
    }
    failures = [_sample(0, 0, 0.0, tokens=4, truncated=True), _sample(0, 1, 0.0, tokens=7)]
    assert length_by_outcome(failures) == {
        "correct": {"n": 0, "tokens_mean": None, "tokens_median": None},
        "incorrect": {"n": 2, "tokens_mean": 5.5, "tokens_median": 5.5},
        "truncated_share": 0.5,
    }
    none = {"n": 0, "tokens_mean": None, "tokens_median": None}
    assert length_by_outcome([]) == {"correct": none, "incorrect": none, "truncated_share": None}


def test_success_by_size_by_hand() -> None:
    def sized(pid: int, idx: int, eq: float, nums: list[int]) -> dict:
        return {**_sample(pid, idx, eq), "nums": nums}

    samples = [
        sized(0, 0, 1.0, [3, 7, 12]),
        sized(0, 1, 0.0, [3, 7, 12]),
        sized(1, 0, 0.0, [55, 36, 19, 7]),
        sized(1, 1, 0.0, [55, 36, 19, 7]),
        sized(2, 0, 1.0, [1, 2, 3]),
    ]
    got = success_by_size(samples)
    assert list(got) == [3, 4]
    lo3, hi3 = wilson_interval(2, 3)
    assert got[3] == {
        "n": 3,
        "successes": 2,
        "success_rate": 2 / 3,
        "success_lo": lo3,
        "success_hi": hi3,
    }
    assert got[4] == {
        "n": 2,
        "successes": 0,
        "success_rate": 0.0,
        "success_lo": 0.0,
        "success_hi": wilson_interval(0, 2)[1],
    }
    assert success_by_size([]) == {}
    with pytest.raises(ValueError, match="nums"):
        success_by_size([_sample(0, 0, 1.0)])
