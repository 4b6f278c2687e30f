"""What the report stages (`plots`, `tables`, `compute`) read: runs, options, summary, logs and
samples; and what the report rules pass them, built from the validated config.

Every path comes from the command line (the rules in workflow/rules/report.smk own them), and
a missing or damaged input reads as "nothing yet" rather than an error: a partial run still
gets a report that says what is not there. Light on purpose: pandas is imported only when a
table is read, matplotlib and seaborn never.
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import formats
from aha.cli import json_arg
from aha.config import validate_section
from aha.run import Run, run_seeds
from aha.sections import build
from aha.task import metrics

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class RunInfo:
    """What the report needs of one configured run."""

    name: str
    steps: tuple[int, ...]
    model_source: str
    model_name: str
    seeds: tuple[int, ...] = ()  # the replicate seeds; () when --runs does not say

    @property
    def model_label(self) -> str:
        if self.model_source == "tiny":
            return "the offline tiny model built by the workflow"
        return self.model_name or self.model_source

    @property
    def seed_comparable(self) -> bool:
        """A Qwen Hub model, as in the seed: only then are the seed's numbers a fair reference."""
        return self.model_source == "hub" and "qwen" in self.model_name.lower()


@dataclass(frozen=True)
class ReportOptions:
    """The `report` config section; its defaults are the schema's (`report_options`)."""

    examples_per_checkpoint: int
    seed_reference: bool
    explorer_per_checkpoint: int


def report_options(raw: Mapping[str, Any] | None) -> ReportOptions:
    """The `report` section, checked against the schema and completed with its defaults, as
    the rules pass it or as given by hand; ConfigError (a ValueError) names a bad key."""
    return build(ReportOptions, validate_section(("report",), dict(raw or {})), "report")


def runs_from(raw: Any) -> dict[str, RunInfo]:
    """`{"run": {"steps": [0, 50], "seeds": [42], "model": {"source": "hub", "name_or_path":
    "..."}}}` (the --runs value, `runs_argument`); `seeds` is optional."""
    if not isinstance(raw, dict):
        raise ValueError("--runs: expected a JSON object {run: {steps, model}}")
    runs = {}
    for name, spec in raw.items():
        model = spec.get("model") or {}
        runs[name] = RunInfo(
            name,
            tuple(int(s) for s in spec.get("steps", [0])),
            str(model.get("source", "")),
            str(model.get("name_or_path", "")),
            tuple(int(s) for s in spec.get("seeds", ())),
        )
    return runs


def draws_seed_reference(runs: Mapping[str, RunInfo], options: ReportOptions) -> bool:
    """Whether the success figure draws the seed's reported points: the option is on and some
    run is a Qwen Hub model, the only kind they are a fair reference for."""
    return options.seed_reference and any(run.seed_comparable for run in runs.values())


# ----------------------------------------------------------------------------- arguments


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The inputs both report stages read: summary, runs and their steps, report options."""
    parser.add_argument("--summary", type=Path, required=True, help="results/summary.tsv")
    add_runs_argument(parser)
    parser.add_argument(
        "--report",
        type=json_arg(report_options),
        default="{}",
        help="the report config section as JSON; absent keys take the schema's defaults",
    )


def add_runs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        type=json_arg(runs_from),
        required=True,
        help='JSON {run: {"steps": [0, ...], "seeds": [42, ...], "model": {"source", '
        '"name_or_path"}}}: the configured runs, their order and colours',
    )


def add_train_log_argument(parser: argparse.ArgumentParser) -> None:
    """`--train-log RUN SEED PATH`, once per replicate (`paths_by_run_step` reads them)."""
    parser.add_argument(
        "--train-log",
        nargs=3,
        action="append",
        metavar=("RUN", "SEED", "PATH"),
        help="a replicate's TRL log history (train_log.jsonl), read when present; once per seed",
    )


def _known(flag: str, run: str, runs: Mapping[str, RunInfo]) -> None:
    """A per-run entry of a run --runs lacks is refused: it would be silently left off."""
    if run not in runs:
        raise ValueError(f"{flag} {run}: not a run of --runs (have: {', '.join(runs)})")


def _integer(text: str, entry: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{entry}: the {what} is not an integer") from None


def paths_by_run(
    flag: str, pairs: Sequence[Sequence[str]] | None, runs: Mapping[str, RunInfo]
) -> dict[str, Path]:
    """`[[run, path], ...]` of a repeated `flag RUN PATH` as {run: path}.

    A run not in --runs, or named twice, is refused: it would be silently left off the report.
    """
    out: dict[str, Path] = {}
    for run, path in pairs or []:
        _known(flag, run, runs)
        if run in out:
            raise ValueError(f"{flag} {run}: given twice")
        out[run] = Path(path)
    return out


def paths_by_run_step(
    flag: str,
    triples: Sequence[Sequence[str]] | None,
    runs: Mapping[str, RunInfo],
    what: str = "step",
) -> dict[str, dict[int, Path]]:
    """`[[run, n, path], ...]` of a repeated `flag RUN N PATH` as {run: {n: path}}; N is a seed
    (`--train-log`, `what="seed"`) or a step."""
    out: dict[str, dict[int, Path]] = {}
    for run, text, path in triples or []:
        _known(flag, run, runs)
        number = _integer(text, f"{flag} {run} {text}", what)
        if number in out.setdefault(run, {}):
            raise ValueError(f"{flag} {run} {number}: given twice")
        out[run][number] = Path(path)
    return out


BASE = "base"  # the SEED of `--samples` for step 0: sampled once per run, every seed's step 0
# A samples file's key: (seed, step); seed None is the run's shared step-0 baseline.
SamplesKey = tuple[int | None, int]


def samples_by_run(
    flag: str, rows: Sequence[Sequence[str]] | None, runs: Mapping[str, RunInfo]
) -> dict[str, dict[SamplesKey, Path]]:
    """`[[run, seed, step, path], ...]` of a repeated `flag RUN SEED STEP PATH` as
    {run: {(seed, step): path}}, in the order given (the rules give seeds in config order).

    SEED is an integer, or `base` for step 0 (and step 0 is only `base`): the layout of
    results/runs/{run}/. A run not in --runs, a step it does not configure, or an entry given
    twice is refused, as it would otherwise be silently left off (or shown twice on) its page.
    """
    out: dict[str, dict[SamplesKey, Path]] = {}
    for run, seed_text, step_text, path in rows or []:
        entry = f"{flag} {run} {seed_text} {step_text}"
        _known(flag, run, runs)
        step = _integer(step_text, entry, "step")
        if step not in runs[run].steps:
            have = ", ".join(map(str, runs[run].steps))
            raise ValueError(f"{entry}: step {step} is not a step of {run} (steps: {have})")
        if seed_text == BASE:
            seed = None
        else:
            try:
                seed = int(seed_text)
            except ValueError:
                raise ValueError(f"{entry}: the seed is neither an integer nor {BASE!r}") from None
        if (seed is None) != (step == 0):
            raise ValueError(
                f"{entry}: step 0 is sampled once per run, as seed {BASE!r}; "
                f"every other step belongs to an integer seed"
            )
        if (seed, step) in out.setdefault(run, {}):
            raise ValueError(f"{entry}: given twice")
        out[run][(seed, step)] = Path(path)
    return out


def seed_label(seed: int | None) -> str:
    """How a samples key's seed is written: the integer, or `base` for the shared step 0."""
    return BASE if seed is None else str(seed)


# ----------------------------------------------------------------------------- rule side


def _runs(config: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, Any], list[int], list[int]]]:
    """(run, effective model, steps, seeds) of each configured run: the one place the report
    reads a run's effective settings from the validated config."""
    for name in config["runs"]:
        run = Run.build(dict(config), name)
        yield name, dict(run.model), [0, *run.checkpoints], run_seeds(dict(config), name)


def runs_argument(config: Mapping[str, Any]) -> dict[str, Any]:
    """The --runs value (`runs_from` reads it): each run's steps (0 + checkpoints), seeds and
    model. Built by the rules from the validated config, so every stage sees the configured
    runs."""
    return {
        run: {
            "steps": run_steps,
            "seeds": seeds,
            "model": {k: model.get(k) for k in ("source", "name_or_path")},
        }
        for run, model, run_steps, seeds in _runs(config)
    }


def steps_and_seeds(config: Mapping[str, Any]) -> dict[str, tuple[list[int], list[int]]]:
    """{run: (steps, seeds)}: each run's steps (0 + checkpoints) and replicate seeds, in config
    order; the rules spell each replicate's and checkpoint's files from them."""
    return {run: (run_steps, seeds) for run, _, run_steps, seeds in _runs(config)}


def runs_overview(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each run as the report's front page (workflow/report/workflow.rst) lists it: name,
    mode, effective model, checkpoints, its `grpo` section, its seeds and the name of each
    replicate's TensorBoard folder (None when the run does not report to TensorBoard), in
    config order."""
    return [
        {
            "name": run,
            "mode": config["runs"][run]["mode"],
            "model": {k: model.get(k) for k in ("source", "name_or_path")},
            "checkpoints": [step for step in run_steps if step],
            "grpo": dict(config["runs"][run].get("grpo") or {}),
            "seeds": seeds,
            "tensorboard": formats.TENSORBOARD_DIR
            if "tensorboard" in Run.build(dict(config), run).trackers
            else None,
        }
        for run, model, run_steps, seeds in _runs(config)
    ]


def seed_reference_drawn(config: Mapping[str, Any]) -> bool:
    """`draws_seed_reference` for the configured runs: what the success figure's caption says."""
    runs = runs_from(runs_argument(config))
    return draws_seed_reference(runs, report_options(config["report"]))


def repeated(option: str, rows: Iterable[Sequence[Any]]) -> str:
    """`option A B ...` once per row, shell-quoted: how the rules pass per-run (per-seed,
    per-step) paths that `paths_by_run`, `paths_by_run_step` and `samples_by_run` read back."""
    return " ".join(shlex.join([option, *map(str, row)]) for row in rows)


# ----------------------------------------------------------------------------- files


def read_summary(path: Path | None) -> pd.DataFrame:
    """results/summary.tsv as a DataFrame; empty (with run and step columns) when missing."""
    import pandas as pd

    if path is None or not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({"run": pd.Series(dtype=str), "step": pd.Series(dtype=int)})
    df = pd.read_csv(path, sep="\t", na_values=["NA"])
    df["run"] = df["run"].astype(str)
    return df


def read_train_log(path: Path | None, run: str, seed: int | None = None) -> pd.DataFrame:
    """Long table (run, seed, step, metric, value) of a TRL log history; empty when missing.

    Only per-step training entries count (those with a `step` and a reward or loss metric); the
    final summary entry (train_runtime, ...) and None values (TRL's all-NaN metric) are dropped.
    """
    import pandas as pd

    records, _ = formats.salvage(path) if path is not None else ([], 0)
    rows = []
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int | float) or "train_runtime" in rec:
            continue
        for key, value in rec.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                rows.append(
                    {"run": run, "seed": seed, "step": int(step), "metric": key, "value": value}
                )
    frame = pd.DataFrame(rows, columns=["run", "seed", "step", "metric", "value"])
    return frame.astype({"value": float})


def read_samples(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(scored completions, lines skipped) of a samples file; a missing file has none.

    A completion needs its text and a reward that `metrics.is_success` can decide on; anything
    else is skipped and counted, so a damaged file still shows what it holds.
    """
    records, bad = formats.salvage(path)
    kept = [r for r in records if "text" in r and _decidable(r)]
    return kept, bad + len(records) - len(kept)


def _decidable(sample: Mapping[str, Any]) -> bool:
    try:
        metrics.is_success(sample)
    except (KeyError, TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- what is there


def missing_scores(
    summary: pd.DataFrame, runs: Mapping[str, RunInfo]
) -> dict[str, list[tuple[int, int | None]]]:
    """Configured (step, seed) pairs of each run without a scored row: not run yet, or failed.

    Step 0 is the run's one baseline (seed None); every other step is expected once per seed
    of the run. A summary without seeds (or runs without them) is matched on the step alone.
    """
    by_seed = "seed" in summary.columns and len(summary) > 0
    have = set()
    for _, row in summary.iterrows():
        seed = row["seed"] if by_seed else None
        have.add(
            (row["run"], int(row["step"]), None if seed is None or seed != seed else int(seed))
        )
    steps_only = {(run, step) for run, step, _ in have}
    missing = {}
    for run in runs.values():
        lost: list[tuple[int, int | None]] = []
        for step in run.steps:
            if step == 0 or not (by_seed and run.seeds):
                lost += [] if (run.name, step) in steps_only else [(step, None)]
            else:
                lost += [(step, s) for s in run.seeds if (run.name, step, s) not in have]
        if lost:
            missing[run.name] = lost
    return missing


def missing_steps(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> dict[str, list[int]]:
    """Configured steps of each run with at least one replicate unscored."""
    return {
        run: sorted({step for step, _ in pairs})
        for run, pairs in missing_scores(summary, runs).items()
    }


def describe_missing(
    missing: Mapping[str, Sequence[tuple[int, int | None]]], runs: Mapping[str, RunInfo]
) -> str:
    """One line naming what `missing_scores` found: a step whose every seed is missing by its
    step alone, a step missing some seeds with those seeds."""
    parts = []
    for run, pairs in missing.items():
        seeds = set(runs[run].seeds) if run in runs else set()
        by_step: dict[int, list[int]] = {}
        for step, seed in pairs:
            by_step.setdefault(step, []).extend([] if seed is None else [seed])
        words = [
            str(step)
            if not lost or set(lost) == seeds
            else f"{step} (seed {', '.join(map(str, lost))})"
            for step, lost in by_step.items()
        ]
        parts.append(f"{run} step {', '.join(words)}")
    return "Missing (not run yet, or failed): " + "; ".join(parts) if parts else ""


def run_order(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> list[str]:
    """Configured runs first (config order), then any other run found in the data."""
    extra = sorted(set(summary["run"]) - set(runs)) if len(summary) else []
    return [*runs, *extra]
