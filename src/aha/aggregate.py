"""Stage `aggregate`: every checkpoint's scores record joined into results/summary.tsv.

One row per (run, step) in the summary, one per (run, step, operator pattern) in the
by-pattern table; a (run, step) scored twice is refused rather than averaged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha.score import SUMMARY_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

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


def cli(argv: list[str], prog: str) -> None:
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
