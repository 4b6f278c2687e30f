"""Reasoning traces for the tiny model's warm start, generated from the exact solver.

A trace is the completion that follows the prompt's `<think>`. It restates the numbers, tries
0–N wrong candidates, then either reaches the target or, `give_up_rate` of the time, gives up on
its last wrong candidate, and closes with `</think>\n<answer> EXPR </answer>`:

    Numbers 4, 1, 9; target 14.
    9 * 4 = 36, 36 + 1 = 37, not 14; try again.
    9 + 4 = 13, 13 + 1 = 14, yes.

Each candidate is written as the steps a person computes, one operation on two numbers at a time
("9 * 4 = 36, 36 + 1 = 37"), not as a whole expression with its value: one small operation per
step is what a 2M-parameter model can learn (abruptly, after ≈ 600-900 warm-start steps), and
`max_value` keeps those operations within a small table. Every value a trace states is exact
and its verdict true; the warm model learns to check ("yes" only on a hit) only after ≈ 1,000
steps (docs/tiny-model.md). Giving up makes it solve some tasks but far from all, which leaves
GRPO something to sharpen. The answer puts parentheses around every intermediate result, so it
is copied from the steps without precedence rules.

Pure Python (no torch): the traces are also what the tests score.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from aha.task import countdown

OPS = "+-*/"
MAX_TRIES = 200  # random expressions drawn per trace before settling for fewer wrong candidates

# An expression tree: an int leaf, or (op, left, right), as the solver builds them.
Expr = countdown.Tree


@dataclass(frozen=True)
class Trace:
    """One supervised completion and what it claims."""

    nums: tuple[int, ...]
    target: int
    completion: str
    answer: str
    correct: bool
    wrong_candidates: int
    slipped: bool = False


def integral(expr: Expr, max_value: int | None = None) -> bool:
    """True when every step's result is a non-negative integer (the Countdown rule), and at most
    `max_value` when given."""
    if isinstance(expr, int):
        return expr >= 0
    v = countdown.value(expr)
    ok = type(v) is int and v >= 0 and (max_value is None or v <= max_value)
    return ok and integral(expr[1], max_value) and integral(expr[2], max_value)


def leaves(expr: Expr) -> list[int]:
    """The numbers an expression uses, left to right."""
    return [expr] if isinstance(expr, int) else leaves(expr[1]) + leaves(expr[2])


def canonical(expr: Expr) -> Expr:
    """Operands of + and * in one order: a computed result before a given number, else the larger
    first ('37 + 6', '19 + 18'). Halves the facts to learn; - and / keep their order."""
    if isinstance(expr, int):
        return expr
    op, left, right = expr[0], canonical(expr[1]), canonical(expr[2])
    if op in "+*" and _order_key(right) > _order_key(left):
        left, right = right, left
    return (op, left, right)


def _order_key(expr: Expr) -> tuple[bool, Fraction]:
    v = countdown.value(expr)
    exact = Fraction(0) if v is None else Fraction(v) if type(v) is int else Fraction(*v)
    return not isinstance(expr, int), exact


def answer_text(expr: Expr) -> str:
    """Infix text with every intermediate result in parentheses: '(12 - 7) * 3'."""
    if isinstance(expr, int):
        return str(expr)
    op, left, right = expr

    def side(e: Expr) -> str:
        return str(e) if isinstance(e, int) else f"({answer_text(e)})"

    return f"{side(left)} {op} {side(right)}"


def slip_text(expr: Expr) -> str:
    """The last step alone, '13 + 1' for '9 + 4 = 13, 13 + 1 = 14': the answer a sloppy
    solver writes. It uses an intermediate result instead of the given numbers, so the equation
    reward refuses it."""
    last = steps_text(expr)[0].rsplit(", ", 1)[-1]
    return last.rsplit(" = ", 1)[0]


def steps_text(expr: Expr) -> tuple[str, int]:
    """('12 + 7 = 19, 19 + 3 = 22', 22): the steps in the order they are computed."""
    steps: list[str] = []

    def walk(e: Expr) -> int:
        if isinstance(e, int):
            return e
        op, left, right = e
        a, b = walk(left), walk(right)
        result = countdown.value(e)
        if type(result) is not int:
            raise ValueError(f"{answer_text(e)} is not a whole number")
        steps.append(f"{a} {op} {b} = {result}")
        return result

    result = walk(expr)
    return ", ".join(steps), result


def random_expr(nums: Sequence[int], rng: random.Random) -> Expr:
    """A random full expression using every number once: random order, shape and operators."""
    items: list[Expr] = list(nums)
    rng.shuffle(items)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        items[i : i + 2] = [(rng.choice(OPS), items[i], items[i + 1])]
    return items[0]


def wrong_candidates(
    nums: Sequence[int], target: int, n: int, rng: random.Random, max_value: int | None = None
) -> list[Expr]:
    """Up to `n` distinct whole-number candidates that miss the target, every step at most
    `max_value` when given."""
    found: dict[str, Expr] = {}
    for _ in range(MAX_TRIES):
        if len(found) >= n:
            break
        expr = canonical(random_expr(nums, rng))
        if integral(expr, max_value) and countdown.value(expr) != target:
            found.setdefault(answer_text(expr), expr)
    return list(found.values())


def solutions(nums: Sequence[int], target: int) -> list[Expr]:
    """The solver's distinct solutions whose every step is a whole number, as canonical trees."""
    trees = {}
    for tree in countdown.solution_trees(nums, target):
        tree = canonical(as_written(tree))
        if integral(tree) and countdown.value(tree) == target:
            trees.setdefault(answer_text(tree), tree)
    return list(trees.values())


def as_written(tree: Expr) -> Expr:
    """The tree a reader of `countdown.show(tree)` computes: equal precedence from the left.

    '55 + (36 - 7)' is printed '55 + 36 - 7' and read (55 + 36) - 7, so a trace's steps follow
    the solution's text as written; the right operand of + or * moves up when it has the same
    precedence (show prints no parentheses around it), everything else stays.
    """
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    return _join(op, as_written(left), as_written(right))


def _join(op: str, left: Expr, right: Expr) -> Expr:
    """`left op right` with `right` unparenthesised: a + (b - c) -> (a + b) - c."""
    if op in "+*" and not isinstance(right, int) and (right[0] in "+-") == (op == "+"):
        inner, x, y = right
        return (inner, _join(op, left, x), y)
    return (op, left, right)


def make_trace(
    nums: Sequence[int],
    target: int,
    rng: random.Random,
    give_up_rate: float = 0.7,
    max_wrong: int = 2,
    max_value: int | None = None,
    slip: bool = False,
) -> Trace:
    """One trace; `rng` decides the candidates and whether it gives up. `slip` writes the answer
    as the last step alone (`slip_text`); the caller draws it from its own generator, so traces
    with and without slips differ only in their answers.

    A task without a whole-number solution (rare) gets a give-up trace: the trace never claims
    what it cannot show.
    """
    nums, target = [int(n) for n in nums], int(target)
    good = solutions(nums, target)
    if max_value is not None:
        good = [e for e in good if integral(e, max_value)] or good
    give_up = not good or (max_wrong > 0 and rng.random() < give_up_rate)
    n_wrong = rng.randint(1 if give_up else 0, max(1, max_wrong) if give_up else max_wrong)
    tried = wrong_candidates(nums, target, n_wrong, rng, max_value)
    if give_up and not tried and max_value is not None:  # every miss is large: state one anyway
        tried = wrong_candidates(nums, target, n_wrong, rng)
    if give_up and not tried:
        raise ValueError(f"{nums} -> {target}: no solution and no wrong candidate to give up on")
    lines = [f"\nNumbers {', '.join(map(str, nums))}; target {target}."]
    for i, expr in enumerate(tried):
        steps, _ = steps_text(expr)
        verdict = "give up." if give_up and i == len(tried) - 1 else "try again."
        lines.append(f"{steps}, not {target}; {verdict}")
    if give_up:
        final = tried[-1]
    else:
        final = rng.choice(good)
        lines.append(f"{steps_text(final)[0]}, yes.")
    answer = slip_text(final) if slip else answer_text(final)
    completion = "\n".join(lines) + f"\n</think>\n<answer> {answer} </answer>"
    return Trace(
        tuple(nums), target, completion, answer, not give_up and not slip, len(tried), slip
    )


def summary(traces: Sequence[Trace]) -> dict[str, Any]:
    """Shares that describe a trace set (written to warm_start.json)."""
    n = len(traces)
    wrong = Counter(t.wrong_candidates for t in traces)
    return {
        "count": n,
        "correct_share": sum(t.correct for t in traces) / n if n else 0.0,
        "answer_slip_share": sum(t.slipped for t in traces) / n if n else 0.0,
        "wrong_candidates": {str(k): wrong[k] / n for k in sorted(wrong)},
    }
