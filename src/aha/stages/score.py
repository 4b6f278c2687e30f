"""Stage `score`: the metrics of one checkpoint's samples, as one JSON record.

The rule names the samples file, the run and the step; `aggregate` joins the records into
results/summary.tsv. No torch: scoring a checkpoint costs seconds even when sampling it took
hours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha import formats
from aha.cli import failing_as, parser
from aha.formats import SUMMARY_COLUMNS
from aha.task import audit, behaviours, metrics

# Nested fields of a scores JSON, each a long table of `aggregate` (see there).
DETAIL_FIELDS: tuple[str, ...] = (
    "success_by_pattern",
    "success_by_size",
    "pass_at_k_curve",
    "audit",
    "reflection_words",
)
REQUIRED_KEYS = (
    "run",
    "step",
    "prompt_id",
    "sample_index",
    "text",
    "num_tokens",
    "truncated",
    "format_reward",
    "equation_reward",
)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """One dict per non-blank line; a line missing a required key names its line number."""
    samples = []
    for lineno, record in formats.records(path):
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing keys {', '.join(missing)}")
        samples.append(record)
    return samples


def check_identity(path: Path, samples: Sequence[dict[str, Any]], run: str, step: int) -> None:
    """Every row must be of (run, step): a samples file copied to the wrong place fails here."""
    found = {(str(s["run"]), int(s["step"])) for s in samples}
    for other in sorted(found - {(run, step)}):
        raise ValueError(f"{path}: rows are ({other[0]}, {other[1]}), expected ({run}, {step})")


def score(
    samples: Sequence[dict[str, Any]], run: str, step: int, seed: int | None = None
) -> dict[str, Any]:
    """The scores record of one (run, seed, step): SUMMARY_COLUMNS plus DETAIL_FIELDS.
    `seed` None: a run's step-0 baseline, shared by all its seeds."""
    summary = metrics.summarize(samples)
    aha = behaviours.summarize(s["text"] for s in samples)
    lengths = metrics.length_by_outcome(samples)
    reflection = behaviours.reflection_summary(samples)
    has_tasks = bool(samples) and all("nums" in s and "target" in s for s in samples)
    record = {
        "run": run,
        "seed": seed,
        "step": step,
        **summary,
        **aha,
        "tokens_mean_correct": lengths["correct"]["tokens_mean"],
        "tokens_mean_incorrect": lengths["incorrect"]["tokens_mean"],
        "reflection_words_mean": reflection["words_per_completion"],
        "reflection_share": reflection["share_with_any"],
        "success_with_reflection": reflection["success_with"],
        "success_without_reflection": reflection["success_without"],
        # JSON keys are strings: sizes and k as text, read back as integers by `aggregate`
        "success_by_size": {
            str(size): stats for size, stats in metrics.success_by_size(samples).items()
        }
        if has_tasks
        else {},
        "pass_at_k_curve": {
            str(k): value
            for k, value in metrics.pass_at_k_curve(samples, summary["k"] or 1).items()
        },
        "audit": audit.audit_summary(samples) if has_tasks else {},
        "reflection_words": reflection["per_word"] if samples else {},
    }
    return {key: record[key] for key in (*SUMMARY_COLUMNS, *DETAIL_FIELDS)}


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    p.add_argument("--samples", type=Path, required=True, help="samples JSONL of one checkpoint")
    p.add_argument("--out", type=Path, required=True, help="scores JSON to write")
    p.add_argument("--run", required=True, help="run name (the rule's {run})")
    p.add_argument("--step", type=int, required=True, help="checkpoint step (its {step})")
    p.add_argument(
        "--seed", type=int, help="the replicate's seed (its {seed}); absent: the step-0 baseline"
    )
    args = p.parse_args(argv)
    with failing_as(prog, ValueError):  # a malformed or misplaced samples file: one line
        samples = read_samples(args.samples)
        check_identity(args.samples, samples, args.run, args.step)
    record = score(samples, args.run, args.step, args.seed)
    formats.write_atomic(args.out, json.dumps(record, indent=2) + "\n")
