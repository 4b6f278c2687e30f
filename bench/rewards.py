"""Throughput of aha.task.rewards on realistic completions, one core.

    .venv/bin/python bench/rewards.py [--n 100000] [--seed 0] [--batch 256]

Builds `n` completions (seeded) in the shapes GRPO produces: correct answers (with and without
"= target"), wrong results, wrong numbers, malformed tags, long searching thoughts, and 1%
hostile ones; scores them in TRL-sized batches and prints completions/s per reward, overall and
per kind. Target: >= 50,000/s per reward.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

from aha.task import generator, rewards

PROSE = (
    "let me try combining the numbers first then check if it equals the target maybe "
    "subtract or divide instead that does not work so try another way"
)
WORDS = PROSE.split(" ")


def thought(rng: random.Random, nums: list[int], target: int, steps: int) -> str:
    """Searching prose: candidate steps with their (exact) values and words between."""
    lines = []
    for _ in range(steps):
        a, b = rng.sample(nums, 2) if len(nums) > 1 else (nums[0], nums[0])
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        words = " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
        lines.append(f"{words}: {a} {op} {b} = {value}, not {target}.")
    return "\n".join(lines)


def completions(n: int, seed: int) -> tuple[list[str], list[int], list[list[int]], list[str]]:
    rng = random.Random(seed)
    tasks = generator.generate(400, seed=seed, progress=False)
    texts, targets, numbers, kinds = [], [], [], []
    hostile = [
        "<answer>" + "9**" * 60 + "9</answer>",
        "<answer>" + "(" * 3000 + "1" + ")" * 3000 + "</answer>",
        "x" * 200_000,
        "<answer>" * 4000,
        "</think>\n<answer>" + "٥" * 50 + "</answer>",
    ]
    for i in range(n):
        s = tasks[i % len(tasks)]
        nums, target, sol = list(s.task.nums), s.task.target, s.solution
        roll = rng.random()
        think = thought(rng, nums, target, rng.randint(2, 16))
        if roll < 0.30:
            kind, body = (
                "correct",
                f"{think}\n{sol} = {target}, yes.\n</think>\n<answer> {sol} </answer>",
            )
        elif roll < 0.40:
            kind, body = "correct", f"{think}\n</think>\n<answer> {sol} = {target} </answer>"
        elif roll < 0.65:
            wrong = " + ".join(map(str, nums))
            kind, body = "wrong", f"{think}\n</think>\n<answer> {wrong} </answer>"
        elif roll < 0.75:
            kind, body = "wrong", f"{think}\n</think>\n<answer> {nums[0]} + {target} </answer>"
        elif roll < 0.87:
            kind = "malformed"
            body = rng.choice(
                [think, f"{think}\n<answer> {sol} </answer>", f"{think}</think><answer>{sol}"]
            )
        elif roll < 0.99:
            long_think = thought(rng, nums, target, rng.randint(40, 80))  # ~3-6k characters
            kind, body = "long", f"{long_think}\n</think>\n<answer> {sol} </answer>"
        else:
            kind, body = "hostile", rng.choice(hostile)
        texts.append(body)
        targets.append(target)
        numbers.append(nums)
        kinds.append(kind)
    return texts, targets, numbers, kinds


def rate(fn: Callable[[int, int], object], n: int, batch: int, repeat: int) -> float:
    """Best-of-`repeat` completions per second of fn(start, stop) over n items."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, n, batch):
            fn(i, min(i + batch, n))
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="completions (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the completion mix")
    parser.add_argument("--batch", type=int, default=256, help="completions per reward call")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is kept")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    texts, targets, numbers, kinds = completions(args.n, args.seed)
    chars = [len(t) for t in texts]
    print(
        f"{args.n} completions, median {statistics.median(chars):.0f} chars, "
        f"max {max(chars)}; python {sys.version.split()[0]}, one core, batch {args.batch}"
    )

    def fmt(i: int, j: int) -> object:
        return rewards.format_reward(texts[i:j])

    def eq(i: int, j: int) -> object:
        return rewards.equation_reward(texts[i:j], target=targets[i:j], nums=numbers[i:j])

    for name, fn in (("format_reward", fmt), ("equation_reward", eq)):
        print(f"{name:16s} {rate(fn, args.n, args.batch, args.repeat):>10,.0f} completions/s")
    print("per kind (completions/s, format / equation; share of the mix):")
    for kind in ("correct", "wrong", "malformed", "long", "hostile"):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        sub_t = [texts[i] for i in idx]
        sub_g = [targets[i] for i in idx]
        sub_n = [numbers[i] for i in idx]

        def f(i: int, j: int, sub_t=sub_t) -> object:
            return rewards.format_reward(sub_t[i:j])

        def e(i: int, j: int, sub_t=sub_t, sub_g=sub_g, sub_n=sub_n) -> object:
            return rewards.equation_reward(sub_t[i:j], target=sub_g[i:j], nums=sub_n[i:j])

        rf = rate(f, len(idx), args.batch, args.repeat)
        re_ = rate(e, len(idx), args.batch, args.repeat)
        print(f"  {kind:10s} {rf:>10,.0f} / {re_:>10,.0f}   ({len(idx) / args.n:.0%})")
    ok = rewards.equation_reward(texts, target=targets, nums=numbers)
    by_kind = {k: [o for o, kk in zip(ok, kinds, strict=True) if kk == k] for k in set(kinds)}
    shares = {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
    print("equation reward mean per kind:", {k: round(v, 3) for k, v in shares.items()})


if __name__ == "__main__":
    main()
