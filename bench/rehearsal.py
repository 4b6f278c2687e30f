"""Seconds per GRPO step and per job of a finished rehearsal (`make rehearsal`), per mode.

    .venv/bin/python bench/rehearsal.py rehearsal          # the working directory of the DAG

s/step is TRL's own `step_time` from each run's train_log.jsonl (generation + optimisation of
one optimizer step, the first logged step, which holds the start-up, left out); job wall times
are Snakemake's benchmark files (benchmarks/{rule}/...tsv, column `s`). Figures go to
docs/benchmarks.md with the command that made them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from aha import formats


def step_times(train_log: Path) -> list[float]:
    rows = [row for _, row in formats.records(train_log)]
    return [float(row["step_time"]) for row in rows if "step_time" in row]


def job_seconds(path: Path) -> float | None:
    if not path.is_file():
        return None
    with path.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[0]["s"]) if rows else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="the DAG's working directory (e.g. rehearsal)")
    args = parser.parse_args()
    root = args.workdir / "results" / "runs"
    # one row per replicate (results/runs/RUN/seed-SEED); rule train's and rule sample's
    # benchmarks are named RUN-seedSEED and RUN-seedSEED-STEP
    replicates = sorted(
        (run.name, folder.name.removeprefix("seed-"))
        for run in root.iterdir()
        if run.is_dir()
        for folder in run.glob("seed-*")
    )
    print("run\tlogged steps\ts/step median\ts/step max\ttrain_grpo job s\tsample jobs s (each)")
    for name, seed in replicates:
        run = f"{name}-seed{seed}"
        times = step_times(root / name / f"seed-{seed}" / "train_log.jsonl")[1:]
        train = job_seconds(args.workdir / "benchmarks" / "train" / f"{run}.tsv")
        samples = sorted(
            path
            for path in (args.workdir / "benchmarks" / "sample").glob(f"{run}-*.tsv")
            if path.stem.removeprefix(f"{run}-").isdigit()
        )
        sample_s = [s for s in map(job_seconds, samples) if s is not None]
        print(
            f"{run}\t{len(times) + 1}\t"
            f"{statistics.median(times):.2f}\t{max(times):.2f}\t"
            f"{train if train is None else round(train, 1)}\t"
            f"{', '.join(f'{s:.1f}' for s in sample_s)}"
            if times
            else f"{run}\t{len(times)}\t-\t-\t{train}\t-"
        )


if __name__ == "__main__":
    main()
