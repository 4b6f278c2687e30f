"""Stage `plots`: the report's seaborn SVG figures, for `snakemake --report`.

Researchers judge this experiment by looking, so every figure compares runs (hue = run, one
colour per run in every figure) on the same axes, and missing inputs are drawn as a note on the
figure rather than crashing the report: a partial run still gets figures that say what is not
there yet. Where each figure goes is the rule's business (workflow/rules/report.smk).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    describe_missing,
    missing_scores,
    parse_options,
    parse_runs,
    paths_by_run_step,
    read_summary,
    read_train_log,
    run_order,
)
from aha.report.style import (
    configured_steps,
    fit_share_axis,
    footnote,
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

# The seed's (philschmid mini-R1) reported success rates: read off training-time completions,
# not scored on held-out prompts, so they are drawn as reference markers, never as a curve.
SEED_REFERENCE: tuple[tuple[int, float], ...] = ((100, 0.25), (200, 0.40), (450, 0.50))
SEED_LABEL = "seed (Qwen2.5-3B): training-time observations, not held-out"

# Figure name (its output option) -> what it shows, in the order they are drawn.
FIGURES: dict[str, str] = {
    "success": "success rate and pass@k vs step",
    "patterns": "success by operator pattern",
    "sizes": "success by task size (3 or 4 numbers)",
    "passk": "pass@k for k = 1..K at every checkpoint",
    "quality": "format rate, answers using the numbers, length by outcome, truncation vs step",
    "behaviours": "aha behaviours vs step",
    "reflection": "reflection words per completion and success with vs without them",
    "audit": "reward-hacking audit: refused answers by category vs step",
    "training": "training curves (TRL log history)",
}
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
    order = run_order(summary, runs)
    colours = palette(order)
    seed = options.seed_reference and any(r.seed_comparable for r in runs.values())
    ticks = configured_steps(summary, runs)
    seed_ticks = ticks + ([s for s, _ in SEED_REFERENCE] if seed else [])
    fig, (ax, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    success_panel(ax, summary, order, colours, seed_ticks)
    ax.set_title("Success rate on held-out prompts (mean over seeds, 95% interval)")
    ax.set_ylabel("success rate (equation correct)")
    if seed:
        xs, ys = zip(*SEED_REFERENCE, strict=True)
        ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=5, label=SEED_LABEL)
    drawn_k = metric_panel(ax_k, summary, "pass_at_k", order, colours, True, ticks)
    for panel in (ax, ax_k):
        fit_share_axis(panel)
    ks = sorted({int(k) for k in summary.get("k", []) if k == k}) if drawn_k else []
    k_text = "/".join(map(str, ks)) if ks else "k"
    ax_k.set_title(f"pass@{k_text} (any of {k_text} samples per prompt correct)")
    ax_k.set_ylabel(f"pass@{k_text}")
    legend_below(fig, [ax, ax_k])
    footnote(fig, describe_missing(missing_scores(summary, runs), runs))
    fig.suptitle("Does GRPO teach the model to solve Countdown?")
    return fig


def success_panel(
    ax: Axes,
    summary: pd.DataFrame,
    order: Sequence[str],
    colours: Mapping[str, Any],
    ticks: Sequence[int],
) -> bool:
    """Success vs step per run: each seed a thin line, the mean over seeds a thick one in a band
    (the 95% t interval across seeds; with one seed, which has none, that seed's Wilson
    interval), and the step-0 baseline, the untrained model sampled once per run, as a dotted
    line: it is every seed's step 0. False (and a note) when nothing is scored."""
    from aha.stages.aggregate import across_seeds

    steps_axis(ax, ticks)
    ax.yaxis.set_major_formatter(percent())
    data = summary.dropna(subset=["success_rate"]) if "success_rate" in summary else summary[:0]
    if data.empty or "n_completions" not in data:
        note(ax, "no scored checkpoint yet")
        return False
    seeds = data["seed"] if "seed" in data else data["step"] * float("nan")
    base = data[seeds.isna() & (data["step"] == 0)]
    trained = data[seeds.notna()]
    mean = across_seeds(data)
    for run in [r for r in order if r in set(data["run"])]:
        colour = colours[run]
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
    steps_axis(ax, ticks)
    return True


def _panels_figure(
    summary: pd.DataFrame,
    runs: Mapping[str, RunInfo],
    panels: Sequence[tuple[str, str, str, bool]],
    title: str,
) -> Figure:
    plt = pyplot()
    order = run_order(summary, runs)
    colours = palette(order)
    ticks = configured_steps(summary, runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), layout="constrained")
    for ax, (column, panel_title, ylabel, share) in zip(axes, panels, strict=True):
        if column == LENGTH_PANEL:
            length_panel(ax, summary, order, colours, ticks)
        else:
            metric_panel(ax, summary, column, order, colours, share, ticks)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
    legend_below(fig, axes)
    footnote(fig, describe_missing(missing_scores(summary, runs), runs))
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
    import pandas as pd
    import seaborn as sns

    order = [*runs, *sorted(set(log["run"]) - set(runs))]
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
        data = log[log["metric"] == key].sort_values(["run", "seed", "step"])
        if data.empty:
            note(ax, MISSING_NOTES.get(key, "not logged") if len(log) else "no training log yet")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        smooth = []
        for (run, _), part in data.groupby(["run", "seed"], sort=False, dropna=False):
            window = max(1, len(part) // 15)
            ax.plot(part["step"], part["value"], color=colours[run], alpha=0.3, lw=0.8)
            smooth.append(
                part.assign(value=part["value"].rolling(window, center=True, min_periods=1).mean())
            )
        sns.lineplot(
            data=pd.concat(smooth),
            x="step",
            y="value",
            hue="run",
            hue_order=[r for r in order if r in set(data["run"])],
            palette=colours,
            errorbar=None,
            ax=ax,
        )
        ax.set_xlabel("training step")
        ax.set_ylabel("")
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    legend_below(fig, flat)
    if empty_runs:
        footnote(fig, "No training log yet (not run, or empty): " + ", ".join(empty_runs))
    fig.suptitle("Training curves (TRL log history; thick: rolling mean)")
    return fig


def cli(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="Seaborn SVG figures of the report (missing inputs become notes)."
    )
    add_input_arguments(parser)
    tables = parser.add_argument_group("long tables of `aggregate` (optional: a note if absent)")
    tables.add_argument("--by-pattern", type=Path, help="results/summary_by_pattern.tsv")
    tables.add_argument("--by-size", type=Path, help="results/summary_by_size.tsv")
    tables.add_argument("--pass-at-k-table", type=Path, help="results/pass_at_k.tsv")
    tables.add_argument("--audit-table", type=Path, help="results/audit.tsv")
    tables.add_argument("--reflection-table", type=Path, help="results/reflection_words.tsv")
    parser.add_argument(
        "--train-log",
        nargs=3,
        action="append",
        metavar=("RUN", "SEED", "PATH"),
        help="a replicate's TRL log history (train_log.jsonl), read when present; once per seed",
    )
    outputs = parser.add_argument_group("outputs (SVG files)")
    for name, shows in FIGURES.items():
        outputs.add_argument(f"--{name}", type=Path, required=True, metavar="SVG", help=shows)
    args = parser.parse_args(argv)
    import pandas as pd

    runs = parse_runs(args.runs)
    try:
        train_logs = paths_by_run_step("--train-log", args.train_log, runs, "seed")
    except ValueError as err:
        parser.error(str(err))
    options = parse_options(args.report)
    summary = read_summary(args.summary)
    by_pattern = read_summary(args.by_pattern)
    by_run = {
        run: [read_train_log(path, run, seed) for seed, path in train_logs.get(run, {}).items()]
        for run in runs
    }
    empty = [run for run, logs in by_run.items() if all(log.empty for log in logs)]
    logs = [log for run_logs in by_run.values() for log in run_logs if not log.empty]
    log = pd.concat(logs, ignore_index=True) if logs else read_train_log(None, "")
    save(plot_success(summary, runs, options), args.success)
    save(plot_quality(summary, runs), args.quality)
    save(plot_behaviours(summary, runs), args.behaviours)
    save(plot_training(log, runs, empty), args.training)
    save(
        plot_groups(
            by_pattern, runs, "pattern", "operator pattern", "results/summary_by_pattern.tsv"
        ),
        args.patterns,
    )
    save(
        plot_groups(
            read_summary(args.by_size), runs, "size", "task size", "results/summary_by_size.tsv"
        ),
        args.sizes,
    )
    save(plot_pass_at_k(read_summary(args.pass_at_k_table), runs), args.passk)
    save(plot_reflection(summary, read_summary(args.reflection_table), runs), args.reflection)
    save(plot_audit(read_summary(args.audit_table), runs), args.audit)
