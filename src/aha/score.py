"""Stages `score` (metrics of one checkpoint's samples) and `aggregate` (results/summary.tsv).

`score` reads `results/runs/{run}/samples/step-{step}.jsonl` and writes one JSON record;
`aggregate` joins the records into one row per (run, step). No torch: scoring a checkpoint
costs seconds even when sampling it took hours.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import behaviours, jsonl, metrics

if TYPE_CHECKING:
    import pandas as pd

# Columns of results/summary.tsv, in order; also the scalar fields of a scores JSON.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "run",
    "step",
    "n_prompts",
    "n_completions",
    "k",
    "success_rate",
    "success_lo",
    "success_hi",
    "pass_at_1",
    "pass_at_k",
    "format_rate",
    "numbers_ok_share",
    "tokens_mean",
    "tokens_median",
    "truncated_share",
    "verify_share",
    "backtrack_share",
    "candidates_mean",
)
INT_COLUMNS = ("step", "n_prompts", "n_completions", "k")
BY_PATTERN_COLUMNS = (
    "run",
    "step",
    "pattern",
    "n",
    "successes",
    "success_rate",
    "success_lo",
    "success_hi",
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
_SAMPLES_PATH = re.compile(r"runs/(?P<run>[^/]+)/samples/step-(?P<step>\d+)\.jsonl$")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """One dict per non-blank line; a line missing a required key names its line number."""
    samples = []
    for lineno, record in jsonl.records(path):
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing keys {', '.join(missing)}")
        samples.append(record)
    return samples


def _identity(
    path: Path, samples: Sequence[dict[str, Any]], run: str | None, step: int | None
) -> tuple[str, int]:
    """(run, step) from the arguments, else the rows, else the path; the rows must agree."""
    found = {(str(s["run"]), int(s["step"])) for s in samples}
    if len(found) > 1:
        raise ValueError(f"{path}: samples of several (run, step): {sorted(found)}")
    m = _SAMPLES_PATH.search(path.as_posix())
    sources = [*found]
    if m:
        sources.append((m["run"], int(m["step"])))
    if run is None or step is None:
        if not sources:
            raise ValueError(f"{path}: cannot tell run and step; pass --run and --step")
        run = sources[0][0] if run is None else run
        step = sources[0][1] if step is None else step
    for other in found:  # the path may be a copy elsewhere; the rows must match
        if other != (run, step):
            raise ValueError(f"{path}: rows are ({other[0]}, {other[1]}), expected ({run}, {step})")
    return run, step


def score(samples: Sequence[dict[str, Any]], run: str, step: int) -> dict[str, Any]:
    """The scores record of one (run, step): SUMMARY_COLUMNS plus success_by_pattern."""
    summary = metrics.summarize(samples)
    aha = behaviours.summarize(s["text"] for s in samples)
    record = {"run": run, "step": step, **summary, **aha}
    return {key: record[key] for key in (*SUMMARY_COLUMNS, "success_by_pattern")}


def cli_score(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=Path, required=True, help="samples JSONL of one checkpoint"
    )
    parser.add_argument("--out", type=Path, required=True, help="scores JSON to write")
    parser.add_argument(
        "--run", help="run name (default: from the samples, else from .../runs/RUN/samples/...)"
    )
    parser.add_argument(
        "--step", type=int, help="checkpoint step (default: from the samples, else step-N.jsonl)"
    )
    args = parser.parse_args(argv)
    samples = read_samples(args.samples)
    run, step = _identity(args.samples, samples, args.run, args.step)
    record = score(samples, run, step)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def aggregate(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, by_pattern) DataFrames, sorted by run then step; a repeated (run, step) fails."""
    import pandas as pd  # only this stage needs it: `score` stays light

    keys = [(r["run"], r["step"]) for r in records]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"several score files for (run, step): {dupes}")
    summary = pd.DataFrame(
        [{c: r.get(c) for c in SUMMARY_COLUMNS} for r in records], columns=list(SUMMARY_COLUMNS)
    )
    summary = summary.astype({c: "Int64" for c in INT_COLUMNS} | {"run": "string"})
    summary = summary.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    rows = [
        {"run": r["run"], "step": r["step"], "pattern": pattern, **stats}
        for r in records
        for pattern, stats in (r.get("success_by_pattern") or {}).items()
    ]
    by_pattern = pd.DataFrame(rows, columns=list(BY_PATTERN_COLUMNS))
    by_pattern = by_pattern.astype({"step": "Int64", "n": "Int64", "successes": "Int64"})
    by_pattern = by_pattern.sort_values(["run", "step", "pattern"], kind="stable").reset_index(
        drop=True
    )
    return summary, by_pattern


def cli_aggregate(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="Collect score JSON files into one TSV row per (run, step)."
    )
    parser.add_argument("--scores", type=Path, nargs="+", required=True, help="scores JSON files")
    parser.add_argument("--out", type=Path, required=True, help="summary TSV (results/summary.tsv)")
    parser.add_argument(
        "--by-pattern-out",
        type=Path,
        help="optional long TSV: run, step, pattern, n, successes, success_rate, success_lo/hi",
    )
    args = parser.parse_args(argv)
    records = [json.loads(p.read_text(encoding="utf-8")) for p in args.scores]
    summary, by_pattern = aggregate(records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out, sep="\t", index=False, na_rep="NA")
    if args.by_pattern_out is not None:
        args.by_pattern_out.parent.mkdir(parents=True, exist_ok=True)
        by_pattern.to_csv(args.by_pattern_out, sep="\t", index=False, na_rep="NA")
