"""What a tiny policy can actually do when it samples: arithmetic, the "= target?" check, success.

    .venv/bin/python bench/warm_start_quality.py [--model results/models/tiny]
        [--eval results/data/eval.parquet] [--prompts 200] [--seed 0] [--threads 1]
    .venv/bin/python bench/warm_start_quality.py --samples results/runs/RUN/*/samples/step-*.jsonl

One temperature-1.0 sample (128 new tokens) per eval prompt, then, over every stated step
"a op b = c" of the thinking: the share whose arithmetic is right (by operator, and for values
above 99); over every candidate line of two steps: the verdict it writes ("yes" or not) against
the truth (its arithmetic right, its result the target). A warm start whose verdicts do not
follow the truth leaves GRPO nothing to sharpen but guessing: docs/tiny-model.md.
`--samples` audits a checkpoint's samples from the workflow instead (no model, no sampling):
how the check changes under GRPO. "miss, states the target" counts candidate lines whose last
step writes the target although the arithmetic does not give it (`6 + 6 = 12, 12 + 9 = 21`
for target 21).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from aha.task.countdown import value

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def audit(completions: list[str], targets: list[int]) -> dict:
    """Step accuracy by operator, the verdict-vs-truth table of the candidate lines (two steps
    each) and candidate lines per completion."""
    steps: Counter[tuple[str, bool]] = Counter()
    verdicts: Counter[str] = Counter()
    lines = 0
    for text, target in zip(completions, targets, strict=True):
        for line in text.split("</think>")[0].split("\n"):
            found = [(int(a), op, int(b), int(r)) for a, op, b, r in STEP.findall(line)]
            for a, op, b, r in found:
                size = "large" if max(a, b, r) > 99 else "small"
                steps[(f"{op} {size}", value((op, a, b)) == r)] += 1
            if len(found) == 2:
                lines += 1
                right = all(value((op, a, b)) == r for a, op, b, r in found)
                hit = right and found[-1][3] == target
                says_yes = line.rstrip().endswith("yes.")
                verdicts[f"{'hit' if hit else 'miss'}, says {'yes' if says_yes else 'no'}"] += 1
                if not right and found[-1][3] == target:
                    verdicts["miss, states the target"] += 1
    ops = sorted({k for k, _ in steps})
    total = sum(steps.values())
    return {
        "candidates_per_completion": lines / len(completions),
        "step_accuracy": sum(n for (_, ok), n in steps.items() if ok) / total if total else 0.0,
        "steps_by_operator": {
            k: f"{steps[(k, True)]}/{steps[(k, True)] + steps[(k, False)]}" for k in ops
        },
        "candidate_lines": dict(sorted(verdicts.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/models/tiny")
    parser.add_argument("--eval", default="results/data/eval.parquet")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=Path, nargs="+", help="samples JSONL files to audit")
    args = parser.parse_args()
    if args.samples:
        from aha import formats
        from aha.task import metrics

        for path in args.samples:
            rows = [r for _, r in formats.records(path)]
            scores = metrics.summarize(rows)
            report = audit([str(r["text"]) for r in rows], [int(r["target"]) for r in rows])
            print(json.dumps({"samples": str(path), "completions": len(rows),
                              "success_rate": scores["success_rate"],
                              "numbers_ok_share": scores["numbers_ok_share"],
                              **report}, indent=2))  # fmt: skip
        return
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model; build it with `snakemake --cores 2 results/models/tiny`")

    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aha.stages import build_tiny_model

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tasks = pd.read_parquet(args.eval).head(args.prompts)
    result = build_tiny_model.sample_eval(model, tokenizer, tasks, args.seed, keep_all=True)
    completions = [e["completion"] for e in result.pop("examples")]
    targets = [int(t) for t in tasks["target"]]
    print(json.dumps({"model": args.model, **result, **audit(completions, targets)}, indent=2))


if __name__ == "__main__":
    main()
