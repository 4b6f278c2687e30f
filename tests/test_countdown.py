"""aha.countdown: exact solver, patterns, generator, loaders and reproducible splits."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from fractions import Fraction

import pytest

from aha import countdown
from aha.countdown import DataSourceError, Task
from aha.rewards import check_equation, evaluate


def brute_values(nums: list[int]) -> set[Fraction]:
    """Every value of every expression using all numbers once (slow reference)."""
    out: set[Fraction] = set()

    def rec(items: list[Fraction]) -> None:
        if len(items) == 1:
            out.add(items[0])
            return
        for i, j in itertools.permutations(range(len(items)), 2):
            a, b = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for v in (a + b, a - b, a * b, *((a / b,) if b else ())):
                rec([*rest, v])

    rec([Fraction(n) for n in nums])
    return out


# ----------------------------------------------------------------------------- solver


def test_solve_seed_example_scores_under_the_reward() -> None:
    (solution,) = countdown.solve([19, 36, 55, 7], 65)
    assert check_equation(solution, [19, 36, 55, 7], 65)
    # "55 + 36 - 7 - 19" is "+--"; "++-" comes first, e.g. 36 + 55 - (7 + 19).
    assert countdown.operator_pattern(solution) == "++-"


def test_simplest_pattern_and_minimal_parentheses() -> None:
    assert countdown.simplest([3, 5, 8], 7) == ("-*", "3 * 5 - 8")
    pattern, text = countdown.simplest([2, 3, 4], 9)
    assert pattern == "++" and "(" not in text and evaluate(text) == 9
    # 7 / 2 * 4 also reaches 14, but "-*" comes before "*/".
    assert countdown.simplest([7, 2, 4], 14) == ("-*", "(4 - 2) * 7")
    assert countdown.solve([12, 7, 3], 15) == ["(12 - 7) * 3"]


def test_fraction_intermediate_is_found() -> None:
    # 24 from 1, 5, 5, 5 needs 1/5: only exact rational arithmetic finds it.
    assert countdown.simplest([1, 5, 5, 5], 24) == ("-*/", "(5 - 1 / 5) * 5")
    assert evaluate("(5 - 1 / 5) * 5") == 24


def test_unsolvable_and_every_number_required() -> None:
    assert not countdown.is_solvable([1, 1, 1], 99)
    assert countdown.solve([1, 1, 1], 99) == []
    assert countdown.simplest([1, 1, 1], 99) is None
    # 10 = 4 + 6 ignores the 50: not a solution, all numbers must be used.
    assert not countdown.is_solvable([4, 6, 50], 10)


def test_is_solvable_matches_brute_force() -> None:
    rng = random.Random(3)
    for _ in range(120):
        nums = [rng.randint(0, 9) for _ in range(rng.choice([1, 2, 3, 4]))]
        reach = brute_values(nums)
        for target in range(-6, 31):
            assert countdown.is_solvable(nums, target) == (Fraction(target) in reach), (
                nums,
                target,
            )


def test_every_solution_is_correct_and_distinct() -> None:
    all_ = countdown.solve([2, 3, 4, 6], 24, max_solutions=None)
    assert len(all_) == len(set(all_)) > 10
    assert all(check_equation(s, [2, 3, 4, 6], 24) for s in all_)
    assert countdown.solve([2, 3, 4, 6], 24, max_solutions=3) == all_[:3]
    # The simplest-pattern solution is among them and the list starts with its pattern.
    pattern, best = countdown.simplest([2, 3, 4, 6], 24)
    assert countdown.operator_pattern(all_[0]) == pattern
    assert evaluate(best) == 24
    with pytest.raises(ValueError, match="max_solutions"):
        countdown.solve([1, 2], 3, max_solutions=0)


def test_solutions_of_random_tasks_check_out() -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(300):
        nums = [rng.randint(1, 30) for _ in range(rng.choice([3, 4]))]
        target = rng.randint(1, 99)
        found = countdown.simplest(nums, target)
        if found is None:
            continue
        pattern, solution = found
        assert check_equation(solution, nums, target), (nums, target, solution)
        assert countdown.operator_pattern(solution) == pattern
        checked += 1
    assert checked > 50


def test_operator_pattern() -> None:
    assert countdown.operator_pattern("55 + 36 - 7 - 19") == "+--"
    assert countdown.operator_pattern("(12 - 7) * 3 = 15") == "-*"
    assert countdown.operator_pattern("8 / 2 / 2") == "//"
    assert countdown.operator_pattern("-3 + 4") == "+"  # the leading sign is unary
    assert countdown.operator_pattern("4 * (-3)") == "*"
    assert countdown.operator_pattern("42") == ""
    assert countdown.all_patterns(3)[:4] == ["++", "+-", "+*", "+/"]
    assert len(countdown.all_patterns(4)) == 20


def test_too_many_numbers_refused() -> None:
    with pytest.raises(ValueError, match="numbers"):
        countdown.is_solvable(list(range(1, 10)), 5)


# ----------------------------------------------------------------------------- generator


def test_water_fill() -> None:
    assert countdown.water_fill([145, 516, 1189, 1444, 1540], 4000) == [145, 516, 1113, 1113, 1113]
    assert countdown.water_fill([5, 5, 5], 7) == [3, 2, 2]
    assert countdown.water_fill([1, 10], 11) == [1, 10]
    with pytest.raises(ValueError):
        countdown.water_fill([1, 2], 4)


def test_generate_is_deterministic_and_verified() -> None:
    kw = dict(num_counts=(3,), number_range=(1, 20), target_range=(1, 99))
    a = countdown.generate(400, seed=5, **kw)
    assert a == countdown.generate(400, seed=5, **kw)
    assert a != countdown.generate(400, seed=6, **kw)
    assert len(a) == 400
    assert len({(tuple(sorted(s.task.nums)), s.task.target) for s in a}) == 400  # distinct
    for s in a:
        assert len(s.task.nums) == 3
        assert all(1 <= n <= 20 for n in s.task.nums) and 1 <= s.task.target <= 99
        assert countdown.is_solvable(s.task.nums, s.task.target)
        assert check_equation(s.solution, s.task.nums, s.task.target)
        assert countdown.simplest(s.task.nums, s.task.target)[0] == s.pattern


def test_balanced_patterns_remove_the_sum_shortcut() -> None:
    kw = dict(num_counts=(3,), number_range=(1, 20), target_range=(1, 99))
    balanced = Counter(s.pattern for s in countdown.generate(800, 1, **kw))
    natural = Counter(s.pattern for s in countdown.generate(800, 1, balance_patterns=False, **kw))
    # 8 patterns exist here; each gets 100 unless it has fewer tasks in total ("**": 145).
    assert len(balanced) == 8
    assert set(balanced.values()) == {100}
    assert max(natural.values()) > 200  # left alone, a few patterns dominate


def test_generate_mixed_sizes_from_wide_ranges() -> None:
    tasks = countdown.generate(120, seed=2)  # defaults: 3 and 4 numbers from 1-99
    sizes = Counter(len(s.task.nums) for s in tasks)
    assert sizes == {3: 60, 4: 60}
    patterns = Counter(s.pattern for s in tasks if len(s.task.nums) == 4)
    assert len(patterns) >= 6 and max(patterns.values()) <= 60 // 6 + 1
    for s in tasks:
        assert check_equation(s.solution, s.task.nums, s.task.target)


def test_generate_refuses_more_tasks_than_exist() -> None:
    # 3 numbers from 1-3 (10 multisets) make fewer than 200 distinct puzzles.
    with pytest.raises(ValueError, match=r"only \d+ distinct .* dataset\.num_samples"):
        countdown.generate(200, 0, num_counts=(3,), number_range=(1, 3))


# ----------------------------------------------------------------------------- loading


def test_load_path_parquet_and_jsonl(tmp_path) -> None:
    import pandas as pd

    rows = [{"target": 65, "nums": [19, 36, 55, 7]}, {"target": 24, "nums": [1, 5, 5, 5]}]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = [Task((19, 36, 55, 7), 65), Task((1, 5, 5, 5), 24)]
    assert countdown.load_path(tmp_path / "t.parquet") == want
    assert countdown.load_path(tmp_path / "t.jsonl") == want


def test_load_path_errors(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"target": 3}\n')
    with pytest.raises(DataSourceError, match=r"missing column.*nums"):
        countdown.load_path(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"target": 3, "nums": ["x", 2]}\n')
    with pytest.raises(DataSourceError, match="row 0"):
        countdown.load_path(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("target,nums\n")
    with pytest.raises(DataSourceError, match=r"parquet or \.jsonl"):
        countdown.load_path(tmp_path / "c.csv")
    with pytest.raises(DataSourceError, match="does not exist"):
        countdown.load_path(tmp_path / "nope.parquet")


def test_load_hub_unreachable_names_the_fix(monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as err:
        countdown.load_hub("Jiayi-Pan/Countdown-Tasks-3to4", "train")
    message = str(err.value)
    assert "\n" not in message
    assert "dataset.source: generate" in message and "dataset.source: path" in message
    assert "ConnectionError: Couldn't reach the Hub" in message


# ----------------------------------------------------------------------------- splitting


def test_split_matches_datasets_with_a_seed() -> None:
    """Same rows as the seed's shuffle(seed).select(n) + train_test_split(test_size, seed)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"i": list(range(300))})
    sub = ds.shuffle(seed=111).select(range(200))
    ref = sub.train_test_split(test_size=0.1, seed=7)
    split = countdown.split_indices(300, 111, 200, 0.1, 7, 5)
    assert split.train == ref["train"]["i"]
    assert split.test == ref["test"]["i"]
    assert split.eval == split.test[:5]


def test_split_reproducible_and_disjoint() -> None:
    a = countdown.split_indices(1000, 1, 600, 0.1, 2, 20)
    assert a == countdown.split_indices(1000, 1, 600, 0.1, 2, 20)
    assert len(a.train) + len(a.test) == 600 and len(a.test) == 60
    assert not set(a.train) & set(a.test)
    b = countdown.split_indices(1000, 1, 600, 0.1, 3, 20)
    assert set(a.test) != set(b.test) and set(a.train + a.test) == set(b.train + b.test)


def test_split_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.num_samples"):
        countdown.split_indices(10, 1, 20, 0.1, 1, 1)
    with pytest.raises(ValueError, match=r"dataset\.eval_size"):
        countdown.split_indices(100, 1, 100, 0.1, 1, 50)


def test_label_respects_its_budget() -> None:
    tasks = [Task((1, 2, 3), 6), Task((1, 1, 1), 99), Task((2, 2), 4)]
    done = countdown.label(tasks, [1, 0, 2], budget_s=60)
    assert done == {1: None, 0: countdown.simplest((1, 2, 3), 6), 2: ("+", "2 + 2")}
    assert done[0][0] == "++"
    ticks = iter([0.0, 0.0, 100.0])
    assert countdown.label(tasks * 200, list(range(600)), 1.0, clock=lambda: next(ticks)) == {
        i: countdown.simplest(t.nums, t.target) for i, t in enumerate((tasks * 200)[:256])
    }
