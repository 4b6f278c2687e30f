"""aha.task.generator: distinct, verified, seeded tasks balanced over operator patterns."""

from __future__ import annotations

from collections import Counter

import pytest

from aha.task import countdown, generator
from aha.task.rewards import check_equation


def test_water_fill() -> None:
    assert generator.water_fill([145, 516, 1189, 1444, 1540], 4000) == [145, 516, 1113, 1113, 1113]
    assert generator.water_fill([5, 5, 5], 7) == [3, 2, 2]
    assert generator.water_fill([1, 10], 11) == [1, 10]
    with pytest.raises(ValueError):
        generator.water_fill([1, 2], 4)


def test_generate_is_deterministic_and_verified() -> None:
    kw = dict(num_counts=(3,), number_range=(1, 20), target_range=(1, 99))
    a = generator.generate(400, seed=5, **kw)
    assert a == generator.generate(400, seed=5, **kw)
    assert a != generator.generate(400, seed=6, **kw)
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
    balanced = Counter(s.pattern for s in generator.generate(800, 1, **kw))
    natural = Counter(s.pattern for s in generator.generate(800, 1, balance_patterns=False, **kw))
    # 8 patterns exist here; each gets 100 unless it has fewer tasks in total ("**": 145).
    assert len(balanced) == 8
    assert set(balanced.values()) == {100}
    assert max(natural.values()) > 200  # left alone, a few patterns dominate


def test_generate_mixed_sizes_from_wide_ranges() -> None:
    tasks = generator.generate(120, seed=2)  # defaults: 3 and 4 numbers from 1-99
    sizes = Counter(len(s.task.nums) for s in tasks)
    assert sizes == {3: 60, 4: 60}
    patterns = Counter(s.pattern for s in tasks if len(s.task.nums) == 4)
    assert len(patterns) >= 6 and max(patterns.values()) <= 60 // 6 + 1
    for s in tasks:
        assert check_equation(s.solution, s.task.nums, s.task.target)


def test_generate_refuses_more_tasks_than_exist() -> None:
    # 3 numbers from 1-3 (10 multisets) make fewer than 200 distinct puzzles.
    with pytest.raises(ValueError, match=r"only \d+ distinct .* dataset\.num_samples"):
        generator.generate(200, 0, num_counts=(3,), number_range=(1, 3))
