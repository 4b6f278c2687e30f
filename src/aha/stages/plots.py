"""Stage `plots`: the report's seaborn SVG figures, for `snakemake --report`.

Researchers judge this experiment by looking, so every figure compares runs (hue = run, one
colour per run in every figure) on the same axes, and missing inputs are drawn as a note on the
figure rather than crashing the report: a partial run still gets figures that say what is not
there yet. Where each figure goes is the rule's business (workflow/rules/report.smk).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from aha.cli import failing_as, parser, setup_logging
from aha.formats import across_seeds
from aha.report import figures
from aha.report.breakdowns import (
    length_panel,
    plot_audit,
    plot_groups,
    plot_pass_at_k,
    plot_reflection,
)
from aha.report.inputs import (
    ReportOptions,
    RunInfo,
    add_input_arguments,
    add_train_log_argument,
    draws_seed_reference,
    paths_by_run_step,
    read_summary,
    read_train_log,
    run_order,
)
from aha.report.style import (
    RunStyle,
    fit_share_axis,
    footnote,
    footnote_missing,
    legend_below,
    metric_panel,
    note,
    palette,
    pd_concat,
    percent,
    pyplot,
    save,
    steps_axis,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# The seed's (philschmid mini-R1) reported success rates: read off training-time completions,
# not scored on held-out prompts, so they are drawn as reference markers, never as a curve.
SEED_REFERENCE: tuple[tuple[int, float], ...] = ((100, 0.25), (200, 0.40), (450, 0.50))
SEED_LABEL = "seed (Qwen2.5-3B): training-time observations, not held-out"

LENGTH_PANEL = "length by outcome"  # a QUALITY_PANELS column drawn by length_panel
# summary.tsv columns drawn as "metric vs step" panels: (column, panel title, y label, share?).
QUALITY_PANELS = (
    ("format_rate", "Format rate", "share of completions", True),
    ("numbers_ok_share", "Answer uses the given numbers", "share of completions", True),
    (LENGTH_PANEL, "Length: correct (solid) vs incorrect (dashed)", "tokens (mean)", False),
    ("truncated_share", "Truncated completions", "share of completions", True),
)
BEHAVIOUR_PANELS = (
    ("verify_share", "Self-verification", "share of completions", True),
    ("backtrack_share", "Backtracking", "share of completions", True),
    ("candidates_mean", "Candidate equations tried", "candidates (mean)", False),
)
# TRL 1.16 GRPOTrainer log keys (besides one `rewards/{name}/mean` per reward function).
TRAIN_PANELS = (
    ("reward", "Total reward (weighted)"),
    ("reward_std", "Reward std"),
    ("kl", "KL to reference"),
    ("completions/mean_length", "Completion length (tokens)"),
    ("learning_rate", "Learning rate"),
)
MISSING_NOTES = {
    "kl": "KL not logged\n(TRL logs it only when beta > 0)",
}
REWARD_KEY = re.compile(r"^rewards/(?P<name>.+)/mean$")


def plot_success(
    summary: pd.DataFrame, runs: Mapping[str, RunInfo], options: ReportOptions
) -> Figure:
    """Success rate (95% Wilson band) and pass@k vs step, step-0 baselines, seed reference."""
    plt = pyplot()
    style = RunStyle.of(summary, runs)
    seed = draws_seed_reference(runs, options)
    seed_ticks = [*style.ticks, *([s for s, _ in SEED_REFERENCE] if seed else [])]
    fig, (ax, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    success_panel(ax, summary, replace(style, ticks=seed_ticks))
    ax.set_title("Success rate on held-out prompts (mean over seeds, 95% interval)")
    ax.set_ylabel("success rate (equation correct)")
    if seed:
        xs, ys = zip(*SEED_REFERENCE, strict=True)
        ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=5, label=SEED_LABEL)
    drawn_k = metric_panel(ax_k, summary, "pass_at_k", style, True)
    for panel in (ax, ax_k):
        fit_share_axis(panel)
    ks = sorted({int(k) for k in summary.get("k", []) if k == k}) if drawn_k else []
    k_text = "/".join(map(str, ks)) if ks else "k"
    ax_k.set_title(f"pass@{k_text} (any of {k_text} samples per prompt correct)")
    ax_k.set_ylabel(f"pass@{k_text}")
    legend_below(fig, [ax, ax_k])
    footnote_missing(fig, summary, runs)
    fig.suptitle("Does GRPO teach the model to solve Countdown?")
    return fig


def success_panel(ax: Axes, summary: pd.DataFrame, style: RunStyle) -> bool:
    """Success vs step per run: each seed a thin line, the mean over seeds a thick one in a band
    (the 95% t interval across seeds; with one seed, which has none, that seed's Wilson
    interval), and the step-0 baseline, the untrained model sampled once per run, as a dotted
    line: it is every seed's step 0. False (and a note) when nothing is scored."""
    steps_axis(ax, style.ticks)
    ax.yaxis.set_major_formatter(percent())
    data = summary.dropna(subset=["success_rate"]) if "success_rate" in summary else summary[:0]
    if data.empty or "n_completions" not in data:
        note(ax, "no scored checkpoint yet")
        return False
    seeds = data["seed"] if "seed" in data else data["step"] * float("nan")
    base = data[seeds.isna() & (data["step"] == 0)]
    trained = data[seeds.notna()]
    mean = across_seeds(data)
    for run in style.drawn(data):
        colour = style.colours[run]
        start = base[base["run"] == run]
        for _, part in trained[trained["run"] == run].groupby("seed", sort=True):
            line = pd_concat([start, part]).sort_values("step")
            ax.plot(line["step"], line["success_rate"], color=colour, lw=0.7, alpha=0.45)
        agg = mean[mean["run"] == run].sort_values("step")
        lo = agg["success_t_lo"].astype(float).fillna(agg["success_pooled_lo"].astype(float))
        hi = agg["success_t_hi"].astype(float).fillna(agg["success_pooled_hi"].astype(float))
        steps = agg["step"].astype(int)
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.18, lw=0)
        ax.vlines(steps, lo, hi, color=colour, lw=1.2)
        n = int(agg["n_seeds"].max()) if len(trained[trained["run"] == run]) else 0
        label = f"{run} ({n} seed{'s' if n != 1 else ''})" if n else run
        ax.plot(steps, agg["success_mean"], color=colour, lw=2, marker="o", label=label)
        for _, row in start.iterrows():
            ax.axhline(
                row["success_rate"],
                color=colour,
                ls=":",
                lw=1.2,
                label=f"{run} step 0 (base model)",
            )
    steps_axis(ax, style.ticks)
    return True


def _panels_figure(
    summary: pd.DataFrame,
    runs: Mapping[str, RunInfo],
    panels: Sequence[tuple[str, str, str, bool]],
    title: str,
) -> Figure:
    plt = pyplot()
    style = RunStyle.of(summary, runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), layout="constrained")
    for ax, (column, panel_title, ylabel, share) in zip(axes, panels, strict=True):
        if column == LENGTH_PANEL:
            length_panel(ax, summary, style)
        else:
            metric_panel(ax, summary, column, style, share)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
    legend_below(fig, axes)
    footnote_missing(fig, summary, runs)
    fig.suptitle(title)
    return fig


def plot_quality(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> Figure:
    """Format rate, answers that use the given numbers, length and truncated share vs step."""
    return _panels_figure(
        summary, runs, QUALITY_PANELS, "Format, answers and length of completions"
    )


def plot_behaviours(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> Figure:
    """Self-verification, backtracking and candidates tried vs step: the 'aha' behaviours."""
    return _panels_figure(summary, runs, BEHAVIOUR_PANELS, "Aha behaviours in the thinking")


def train_panels(log: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric key, title): one panel per reward function, then TRAIN_PANELS."""
    names = sorted({m["name"] for k in set(log["metric"]) if (m := REWARD_KEY.match(k))})
    rewards = [(f"rewards/{n}/mean", f"Mean {n}") for n in names]
    if not rewards:
        rewards = [("rewards/<function>/mean", "Mean reward per function")]
    return [*rewards, *TRAIN_PANELS]


def plot_training(
    log: pd.DataFrame, runs: Mapping[str, RunInfo], empty_runs: Sequence[str]
) -> Figure:
    """Training curves from TRL's log history: raw (thin) per seed, and per run the mean over
    seeds of each seed's rolling mean (thick)."""
    plt = pyplot()
    order = run_order(log, runs)
    colours = palette(order)
    panels = train_panels(log)
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained", squeeze=False
    )
    flat = list(axes.flat)
    for ax, (key, title) in zip(flat, panels, strict=False):
        ax.set_title(title)
        _train_panel(ax, log, key, RunStyle(order, colours, ()))
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    legend_below(fig, flat)
    if empty_runs:
        footnote(fig, "No training log yet (not run, or empty): " + ", ".join(empty_runs))
    fig.suptitle("Training curves (TRL log history; thick: rolling mean)")
    return fig


def _train_panel(ax: Axes, log: pd.DataFrame, key: str, style: RunStyle) -> None:
    """One logged metric vs training step: each seed raw (thin), each run the mean of its
    seeds' rolling means (thick); a note when the metric was not logged."""
    import pandas as pd
    import seaborn as sns

    data = log[log["metric"] == key].sort_values(["run", "seed", "step"])
    if data.empty:
        note(ax, MISSING_NOTES.get(key, "not logged") if len(log) else "no training log yet")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    smooth = []
    for (run, _), part in data.groupby(["run", "seed"], sort=False, dropna=False):
        window = max(1, len(part) // 15)
        ax.plot(part["step"], part["value"], color=style.colours[run], alpha=0.3, lw=0.8)
        smooth.append(
            part.assign(value=part["value"].rolling(window, center=True, min_periods=1).mean())
        )
    sns.lineplot(
        data=pd.concat(smooth),
        x="step",
        y="value",
        hue="run",
        hue_order=style.drawn(data),
        palette=style.colours,
        errorbar=None,
        ax=ax,
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("")
    if key == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


@dataclass(frozen=True)
class Inputs:
    """What the figures draw from: the summary, `aggregate`'s long tables (by their names in
    aha.report.figures.TABLE_OPTIONS; empty when not given), every replicate's training log in
    one long table, and the runs without one."""

    runs: Mapping[str, RunInfo]
    options: ReportOptions
    summary: pd.DataFrame
    tables: Mapping[str, pd.DataFrame]
    log: pd.DataFrame
    no_log: Sequence[str]


# How each figure of aha.report.figures.FIGURES is drawn from the inputs.
DRAW: dict[str, Callable[[Inputs], Figure]] = {
    "success": lambda i: plot_success(i.summary, i.runs, i.options),
    "patterns": lambda i: plot_groups(
        i.tables["by_pattern"], i.runs, "pattern", "operator pattern",
        "results/summary_by_pattern.tsv",
    ),
    "sizes": lambda i: plot_groups(
        i.tables["by_size"], i.runs, "size", "task size", "results/summary_by_size.tsv"
    ),
    "passk": lambda i: plot_pass_at_k(i.tables["pass_at_k"], i.runs),
    "quality": lambda i: plot_quality(i.summary, i.runs),
    "behaviours": lambda i: plot_behaviours(i.summary, i.runs),
    "reflection": lambda i: plot_reflection(i.summary, i.tables["reflection_words"], i.runs),
    "audit": lambda i: plot_audit(i.tables["audit"], i.runs),
    "training": lambda i: plot_training(i.log, i.runs, i.no_log),
}  # fmt: skip


def read_inputs(
    runs: Mapping[str, RunInfo],
    options: ReportOptions,
    summary: Path,
    tables: Mapping[str, Path | None],
    train_logs: Mapping[str, Mapping[int, Path]],
) -> Inputs:
    """The figures' inputs from their files; a file not given or missing reads as empty."""
    import pandas as pd

    by_run = {
        run: [read_train_log(path, run, seed) for seed, path in train_logs.get(run, {}).items()]
        for run in runs
    }
    logs = [frame for frames in by_run.values() for frame in frames if not frame.empty]
    return Inputs(
        runs=runs,
        options=options,
        summary=read_summary(summary),
        tables={name: read_summary(path) for name, path in tables.items()},
        log=pd.concat(logs, ignore_index=True) if logs else read_train_log(None, ""),
        no_log=[run for run, frames in by_run.items() if all(f.empty for f in frames)],
    )


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    add_input_arguments(p)
    tables = p.add_argument_group("long tables of `aggregate` (optional: a note if absent)")
    for name, option in figures.TABLE_OPTIONS.items():
        tables.add_argument(
            option, dest=f"table_{name}", type=Path, metavar="TSV", help=f"its `{name}` table"
        )
    add_train_log_argument(p)
    outputs = p.add_argument_group("outputs (SVG files)")
    for figure in figures.FIGURES:
        outputs.add_argument(
            f"--{figure.name}", type=Path, required=True, metavar="SVG", help=figure.label
        )
    args = p.parse_args(argv)
    setup_logging()
    try:
        train_logs = paths_by_run_step("--train-log", args.train_log, args.runs, "seed")
    except ValueError as err:
        p.error(str(err))
    tables_given = {name: getattr(args, f"table_{name}") for name in figures.TABLE_OPTIONS}
    inputs = read_inputs(args.runs, args.report, args.summary, tables_given, train_logs)
    with failing_as(prog, OSError):  # an output that cannot be written: one line
        for figure in figures.FIGURES:
            save(DRAW[figure.name](inputs), getattr(args, figure.name))
    log.info("drew %d figures", len(figures.FIGURES))
