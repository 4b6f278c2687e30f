"""Stage `compute`: what the experiment cost, per stage, for the report (`compute.tsv` and
`compute.svg`).

A reader weighing a GRPO result also weighs its price: how many hours each stage took, on how
many CPUs and GPUs, and where a training step's time goes (generating completions or
optimising). The inputs are Snakemake's benchmark file of every job (`--benchmark STAGE PATH`;
wall seconds `s`, CPU seconds `cpu_time`, peak resident memory `max_rss` in MiB), the GPU
samples beside a GPU job's benchmark (`NAME.gpu.tsv`, aha.launch.gpu_monitor) and each replicate's
TRL log history (`--train-log RUN SEED PATH`: `step_time` and aha.stages.train's split of it). Like
the other report stages, a missing or damaged input is a note on the figure and NA in the
table, never an error: a partial run still gets its report.

Reading and summing are pure functions of the files (cheap: the standard library only);
pandas, matplotlib and seaborn are imported only to draw.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import formats
from aha.cli import failing_as, parser, setup_logging
from aha.launch.gpu_monitor import GpuUsage, gpu_log_path, read_gpu_log
from aha.report.inputs import RunInfo, add_runs_argument, add_train_log_argument, paths_by_run_step
from aha.report.style import footnote, note, palette, pyplot, save

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# The split of TRL's step_time that aha.stages.train logs (aha.stages.train.GENERATION_KEY, OPTIMISATION_KEY;
# spelled here so that this stage does not import the training code).
GENERATION_KEY = "timing/generation_s_per_step"
OPTIMISATION_KEY = "timing/optimisation_s_per_step"
TABLE_COLUMNS = (
    "stage",
    "jobs",
    "missing_jobs",
    "wall_hours",
    "cpu_hours",
    "max_rss_gib",
    "gpu_jobs",
    "gpu_hours",
    "peak_gpu_memory_gib",
)
NO_GPU = "no GPU (CPU run)\n\nno nvidia-smi samples\nbeside the benchmark files"
MAX_LISTED = 4  # missing jobs named in the footnote, per stage


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Job:
    """One job's cost: its benchmark file, and its GPU log when it has one."""

    stage: str
    path: Path
    seconds: float
    cpu_seconds: float | None
    max_rss_mib: float | None
    gpu: GpuUsage | None = None

    @property
    def gpu_hours(self) -> float | None:
        return self.seconds * self.gpu.gpus / 3600 if self.gpu else None


def _number(text: str | None) -> float | None:
    """A benchmark cell: Snakemake writes NA (nothing sampled) or - (None) when it has none."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_benchmark(path: Path, stage: str = "") -> Job | None:
    """A job from its Snakemake benchmark TSV (and GPU log); None when missing or unreadable.

    Several rows (a rule's `repeat(...)`) add up: each is one run of the job.
    """
    try:
        with Path(path).open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    seconds = [_number(row.get("s")) for row in rows]
    if not rows or any(s is None for s in seconds):
        return None
    cpu = [v for row in rows if (v := _number(row.get("cpu_time"))) is not None]
    rss = [v for row in rows if (v := _number(row.get("max_rss"))) is not None]
    return Job(
        stage=stage,
        path=Path(path),
        seconds=sum(s for s in seconds if s is not None),
        cpu_seconds=sum(cpu) if cpu else None,
        max_rss_mib=max(rss) if rss else None,
        gpu=read_gpu_log(gpu_log_path(path)),
    )


def read_jobs(
    benchmarks: Iterable[tuple[str, Path]],
) -> tuple[list[Job], list[tuple[str, Path]]]:
    """(jobs read, (stage, path) of each benchmark missing or unreadable)."""
    jobs, missing = [], []
    for stage, path in benchmarks:
        job = read_benchmark(Path(path), stage)
        if job is None:
            missing.append((stage, Path(path)))
        else:
            jobs.append(job)
    return jobs, missing


def _hours(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / 3600 if known else None


def summarise(
    jobs: Sequence[Job], missing: Sequence[tuple[str, Path]] = (), stages: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """One row per stage (TABLE_COLUMNS): `stages` first in their order, then any other.

    Hours are job-hours (sums over jobs, which may have run side by side); memory is the peak
    of any one job. GPU columns are None where no job of the stage has a GPU log.
    """
    order = list(dict.fromkeys([*stages, *(j.stage for j in jobs), *(s for s, _ in missing)]))
    rows = []
    for stage in order:
        mine = [j for j in jobs if j.stage == stage]
        gpu = [j for j in mine if j.gpu is not None]
        rss = [j.max_rss_mib for j in mine if j.max_rss_mib is not None]
        peaks = [j.gpu.peak_memory_mib for j in gpu if j.gpu.peak_memory_mib is not None]
        rows.append(
            {
                "stage": stage,
                "jobs": len(mine),
                "missing_jobs": sum(1 for s, _ in missing if s == stage),
                "wall_hours": _hours([j.seconds for j in mine]),
                "cpu_hours": _hours([j.cpu_seconds for j in mine]),
                "max_rss_gib": max(rss) / 1024 if rss else None,
                "gpu_jobs": len(gpu),
                "gpu_hours": _hours([j.seconds * j.gpu.gpus for j in gpu]),
                "peak_gpu_memory_gib": max(peaks) / 1024 if peaks else None,
            }
        )
    return rows


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The summary as TSV; NA where a value is unknown (like results/summary.tsv)."""

    def cell(value: Any) -> str:
        if value is None:
            return "NA"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(TABLE_COLUMNS)]
    lines += ["\t".join(cell(row.get(c)) for c in TABLE_COLUMNS) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def step_times(path: Path | None) -> list[dict[str, float]]:
    """Per logged step of a TRL log history: step, step_time and, when logged, generation and
    optimisation seconds per step. A missing or damaged log gives what it holds (maybe none)."""
    records, _ = formats.salvage(path) if path is not None else ([], 0)
    rows = []
    for rec in records:
        step, total = rec.get("step"), rec.get("step_time")
        if "train_runtime" in rec or not all(_finite(v) for v in (step, total)):
            continue
        row = {"step": float(step), "step_time": float(total)}
        for key in (GENERATION_KEY, OPTIMISATION_KEY):
            if _finite(rec.get(key)):
                row[key] = float(rec[key])
        rows.append(row)
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- drawing


def _stage_hours(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Long table (stage, measure, hours) of the bars: wall, CPU and, where logged, GPU."""
    import pandas as pd

    measures = (("wall_hours", "wall"), ("cpu_hours", "CPU"), ("gpu_hours", "GPU"))
    long = [
        {"stage": row["stage"], "measure": label, "hours": row[key]}
        for row in rows
        for key, label in measures
        if row["jobs"] and row[key] is not None
    ]
    return pd.DataFrame(long, columns=["stage", "measure", "hours"])


def _hours_panel(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    import seaborn as sns

    ax.set_title("Hours per stage (sum over its jobs)")
    data = _stage_hours(rows)
    if data.empty:
        note(ax, "no benchmark file yet")
        ax.set_axis_off()
        return
    order = [r["stage"] for r in rows if r["jobs"]]
    labels = {
        r["stage"]: f"{r['stage']} ({r['jobs']} job{'s' if r['jobs'] != 1 else ''})" for r in rows
    }
    sns.barplot(
        data=data,
        y="stage",
        x="hours",
        hue="measure",
        order=order,
        hue_order=[m for m in ("wall", "CPU", "GPU") if m in set(data["measure"])],
        palette={"wall": "#4c72b0", "CPU": "#dd8452", "GPU": "#55a868"},
        orient="h",
        ax=ax,
    )
    for bars in ax.containers:  # the value at each bar's end: stages differ by orders
        ax.bar_label(bars, labels=[duration(b.get_width() * 3600) for b in bars], fontsize=8)
    ax.margins(x=0.18)
    ax.set_yticks(range(len(order)), [labels[s] for s in order])
    ax.set_xlabel("hours")
    ax.set_ylabel("")
    ax.legend(title="", loc="best")


def duration(seconds: float) -> str:
    """A bar label: seconds, minutes or hours, whichever reads best."""
    if seconds != seconds or seconds <= 0:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _step_panel(
    ax: Axes,
    steps: Mapping[tuple[str, int], list[dict[str, float]]],
    colours: Mapping[str, Any],
) -> list[str]:
    """s/step per replicate: total (solid), generation (dashed), optimisation (dotted) when
    logged. Notes on the panel when there is nothing; returns footnotes."""
    ax.set_title("Seconds per training step (TRL step_time)")
    drawn = {key: rows for key, rows in steps.items() if rows}
    if not drawn:
        note(ax, "no training log with step_time yet")
        ax.set_axis_off()
        return []
    split_any = False
    unsplit = []
    for (run, seed), rows in drawn.items():
        colour = colours[run]
        xs = [r["step"] for r in rows]
        label = run if len({s for r, s in drawn if r == run}) == 1 else f"{run} seed {seed}"
        ax.plot(xs, [r["step_time"] for r in rows], color=colour, lw=1.8, label=label)
        split = [r for r in rows if GENERATION_KEY in r and OPTIMISATION_KEY in r]
        if split:
            split_any = True
            xs_split = [r["step"] for r in split]
            ax.plot(xs_split, [r[GENERATION_KEY] for r in split], color=colour, ls="--", lw=1.2)
            ax.plot(xs_split, [r[OPTIMISATION_KEY] for r in split], color=colour, ls=":", lw=1.4)
        else:
            unsplit.append(f"{run} seed {seed}")
    if split_any:
        for ls, what in (("-", "whole step"), ("--", "generation"), (":", "optimisation")):
            ax.plot([], [], color="0.3", ls=ls, label=what)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("seconds per step")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best")
    absent = [f"{run} seed {seed}" for (run, seed), rows in steps.items() if not rows]
    notes = ["No training log with step_time yet: " + ", ".join(absent)] if absent else []
    if unsplit:
        notes.append(
            "No generation/optimisation split in the training log of: " + ", ".join(unsplit)
        )
    return notes


def _gpu_panel(ax: Axes, jobs: Sequence[Job]) -> None:
    """Peak GPU memory of each GPU job (points) and per stage (bars), GPU capacity dashed."""
    import pandas as pd
    import seaborn as sns

    ax.set_title("Peak GPU memory per job")
    gpu = [j for j in jobs if j.gpu is not None and j.gpu.peak_memory_mib is not None]
    if not gpu:
        note(ax, NO_GPU)
        ax.set_axis_off()
        return
    data = pd.DataFrame(
        [{"stage": j.stage, "GiB": (j.gpu.peak_memory_mib or 0.0) / 1024} for j in gpu if j.gpu]
    )
    order = list(dict.fromkeys(data["stage"]))
    sns.barplot(
        data=data,
        x="stage",
        y="GiB",
        order=order,
        estimator="max",
        errorbar=None,
        color="#55a868",
        alpha=0.5,
        ax=ax,
    )
    sns.stripplot(data=data, x="stage", y="GiB", order=order, color="0.2", size=4, ax=ax)
    totals = [j.gpu.memory_total_mib for j in gpu if j.gpu and j.gpu.memory_total_mib]
    if totals:
        ax.axhline(max(totals) / 1024, color="0.4", ls="--", lw=1, label="GPU memory")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("")
    ax.set_ylabel("GiB in use (nvidia-smi, whole GPU)")


def _missing_note(missing: Sequence[tuple[str, Path]]) -> str:
    if not missing:
        return ""
    by_stage: dict[str, list[str]] = {}
    for stage, path in missing:
        by_stage.setdefault(stage, []).append(path.stem)
    parts = []
    for stage, names in by_stage.items():
        shown = ", ".join(names[:MAX_LISTED]) + (
            f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
        )
        parts.append(f"{stage}: {shown}")
    return "No benchmark yet (not run, or failed): " + "; ".join(parts)


def plot_compute(
    rows: Sequence[Mapping[str, Any]],
    jobs: Sequence[Job],
    missing: Sequence[tuple[str, Path]],
    steps: Mapping[tuple[str, int], list[dict[str, float]]],
    runs: Mapping[str, RunInfo],
) -> Figure:
    """Hours per stage, s/step over training per replicate, peak GPU memory (or a note)."""
    plt = pyplot()
    order = [*runs, *sorted({run for run, _ in steps} - set(runs))]
    colours = palette(order)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), layout="constrained")
    _hours_panel(axes[0], rows)
    notes = _step_panel(axes[1], steps, colours)
    _gpu_panel(axes[2], jobs)
    footnote(fig, "\n".join(n for n in [_missing_note(missing), *notes] if n))
    wall = sum(j.seconds for j in jobs) / 3600
    cpu = sum(j.cpu_seconds or 0.0 for j in jobs) / 3600
    gpu = sum(j.gpu_hours or 0.0 for j in jobs)
    total = f"{len(jobs)} jobs: {wall:.2f} wall-hours, {cpu:.2f} CPU-hours"
    total += f", {gpu:.2f} GPU-hours" if any(j.gpu for j in jobs) else ""
    fig.suptitle(f"Compute ({total})")
    return fig


# ----------------------------------------------------------------------------- CLI


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    p.add_argument(
        "--benchmark",
        nargs=2,
        action="append",
        metavar=("STAGE", "PATH"),
        help="a job's benchmark file (benchmarks/RULE/....tsv; NAME.gpu.tsv beside it is read "
        "when present); once per job",
    )
    add_train_log_argument(p)
    add_runs_argument(p)
    p.add_argument("--table", type=Path, required=True, help="TSV to write (compute.tsv)")
    p.add_argument("--figure", type=Path, required=True, help="SVG to write (compute.svg)")
    args = p.parse_args(argv)
    setup_logging()
    runs = args.runs
    try:
        logs = paths_by_run_step("--train-log", args.train_log, runs, "seed")
    except ValueError as err:
        p.error(str(err))
    benchmarks = [(stage, Path(path)) for stage, path in args.benchmark or []]
    jobs, missing = read_jobs(benchmarks)
    rows = summarise(jobs, missing, [stage for stage, _ in benchmarks])
    steps = {
        (run, seed): step_times(path)
        for run, by_seed in logs.items()
        for seed, path in sorted(by_seed.items())
    }
    with failing_as(prog, OSError):  # an output that cannot be written: one line
        write_table(rows, args.table)
        save(plot_compute(rows, jobs, missing, steps, runs), args.figure)
    log.info("%d jobs read, %d benchmark files missing", len(jobs), len(missing))
