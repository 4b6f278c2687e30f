"""aha.task.countdown: the exact solver and operator patterns."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from fractions import Fraction

import pytest

from aha.task import countdown
from aha.task.rewards import check_equation, evaluate


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
    assert countdown.operator_pattern("42") == ""
    # Read by the reward's grammar: what the equation reward refuses has no pattern.
    for bad in ("-3 + 4", "4 * (-3)", "2 ** 3", "1 +", "(1 + 2", "x + 1", "", None):
        assert countdown.operator_pattern(bad) is None, bad
    assert countdown.all_patterns(3)[:4] == ["++", "+-", "+*", "+/"]
    assert len(countdown.all_patterns(4)) == 20


def test_solution_trees_are_the_solutions_as_trees() -> None:
    trees = countdown.solution_trees([2, 3, 4, 6], 24)
    assert [countdown.show(t) for t in trees] == countdown.solve([2, 3, 4, 6], 24, None)
    assert all(countdown.value(t) == 24 for t in trees)
    assert countdown.solution_trees([1, 1, 1], 99) == []
    assert countdown.value(("/", 7, ("-", 2, 2))) is None
    assert countdown.value(("/", 7, 2)) == (7, 2)


def test_too_many_numbers_refused() -> None:
    with pytest.raises(ValueError, match="numbers"):
        countdown.is_solvable(list(range(1, 10)), 5)


def test_game_modules_import_no_torch() -> None:
    code = (
        "import sys, aha.task.countdown, aha.task.generator, aha.tiny.traces, aha.task.behaviours, aha.task.metrics; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
