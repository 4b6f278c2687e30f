"""Stage `aggregate`: every checkpoint's scores record joined into results/summary.tsv.

One row per (run, seed, step) in the summary (seed NA: the run's step-0 baseline, shared by its
seeds), one per (run, seed, step, operator pattern) in the by-pattern table, and one per (run,
step) across seeds in results/summary_across_seeds.tsv; a (run, seed, step) scored twice is
refused rather than averaged. The details of a scores record (`score.DETAIL_FIELDS`: success
by task size, the pass@k curve, the reward-hacking audit, reflection words) become long tables
of their own, one row per (run, seed, step, key), which the figures draw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha.cli import failing_as, parser, setup_logging
from aha.formats import SUMMARY_COLUMNS, across_seeds

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

INT_COLUMNS = ("seed", "step", "n_prompts", "n_completions", "k")
BY_PATTERN_COLUMNS = (
    "run",
    "seed",
    "step",
    "pattern",
    "n",
    "successes",
    "success_rate",
    "success_lo",
    "success_hi",
)


def aggregate(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, by_pattern) DataFrames, sorted by run, seed (the baseline first), step; a
    repeated (run, seed, step) fails."""
    import pandas as pd  # only this stage needs it: `score` stays light

    keys = [(r["run"], r.get("seed"), r["step"]) for r in records]
    dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if dupes:
        raise ValueError(f"several score files for (run, seed, step): {dupes}")
    summary = pd.DataFrame(
        [{c: r.get(c) for c in SUMMARY_COLUMNS} for r in records], columns=list(SUMMARY_COLUMNS)
    )
    summary = summary.astype({c: "Int64" for c in INT_COLUMNS} | {"run": "string"})
    summary = summary.sort_values(
        ["run", "seed", "step"], kind="stable", na_position="first"
    ).reset_index(drop=True)
    rows = [
        {"run": r["run"], "seed": r.get("seed"), "step": r["step"], "pattern": pattern, **stats}
        for r in records
        for pattern, stats in (r.get("success_by_pattern") or {}).items()
    ]
    by_pattern = pd.DataFrame(rows, columns=list(BY_PATTERN_COLUMNS))
    by_pattern = by_pattern.astype(
        {"seed": "Int64", "step": "Int64", "n": "Int64", "successes": "Int64"}
    )
    by_pattern = by_pattern.sort_values(
        ["run", "seed", "step", "pattern"], kind="stable", na_position="first"
    ).reset_index(drop=True)
    return summary, by_pattern


KEYS = ("run", "seed", "step")
# detail table -> (scores field, key column, value columns); a value column named "" takes the
# field's scalar value (pass@k, a word's count), otherwise the key's record holds the columns.
DETAILS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "by_size": ("success_by_size", "size", BY_PATTERN_COLUMNS[4:]),
    "pass_at_k": ("pass_at_k_curve", "k", ("pass_at_k",)),
    "audit": ("audit", "category", ("count", "n", "share")),
    "reflection_words": ("reflection_words", "word", ("per_completion",)),
}


def details(records: Sequence[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The long tables of DETAILS, sorted like the summary (baseline first)."""
    import pandas as pd

    tables = {}
    for name, (field, key, values) in DETAILS.items():
        rows = []
        for r in records:
            stats = r.get(field) or {}
            for item, value in stats.items():
                if field == "audit":
                    if item == "n":
                        continue
                    value = {"count": value, "n": stats["n"], "share": value / stats["n"]}
                elif not isinstance(value, dict):
                    value = {values[0]: value}
                item = int(item) if key in {"size", "k"} else item
                rows.append({k: r.get(k) for k in KEYS} | {key: item, **value})
        frame = pd.DataFrame(rows, columns=[*KEYS, key, *values])
        ints = {c: "Int64" for c in ("seed", "step", key, "n", "successes", "count") if c in frame}
        if key not in {"size", "k"}:
            ints.pop(key)
        tables[name] = (
            frame.astype(ints)
            .sort_values([*KEYS, key], kind="stable", na_position="first")
            .reset_index(drop=True)
        )
    return tables


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    p.add_argument("--scores", type=Path, nargs="+", required=True, help="scores JSON files")
    p.add_argument("--out", type=Path, required=True, help="summary TSV (results/summary.tsv)")
    p.add_argument(
        "--by-pattern-out",
        type=Path,
        help="optional long TSV: run, seed, step, pattern, n, successes, success_rate/lo/hi",
    )
    p.add_argument(
        "--across-seeds-out",
        type=Path,
        help="optional TSV, one row per (run, step): mean over seeds with its t interval, pooled",
    )
    for name, (field, key, _) in DETAILS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}-out",
            type=Path,
            help=f"optional long TSV: run, seed, step, {key}, ... (the scores' {field})",
        )
    args = p.parse_args(argv)
    setup_logging()
    # an unreadable scores file, or one (run, seed, step) scored twice: one line
    with failing_as(prog, OSError, ValueError):
        records = [json.loads(path.read_text(encoding="utf-8")) for path in args.scores]
        summary, by_pattern = aggregate(records)
    tables = {
        args.out: summary,
        args.by_pattern_out: by_pattern,
        args.across_seeds_out: across_seeds(summary),
    }
    long = details(records)
    tables |= {getattr(args, f"{name}_out"): long[name] for name in DETAILS}
    for path, table in tables.items():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, sep="\t", index=False, na_rep="NA")
    log.info("%d scores records: %d summary rows", len(records), len(summary))
