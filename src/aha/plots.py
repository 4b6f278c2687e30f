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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha.report_inputs import (
    ReportOptions,
    RunInfo,
    add_input_arguments,
    describe_missing,
    missing_steps,
    parse_options,
    parse_runs,
    paths_by_run_step,
    read_summary,
    read_train_log,
    run_order,
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
    "quality": "format rate, answers using the numbers, length, truncation vs step",
    "behaviours": "aha behaviours vs step",
    "training": "training curves (TRL log history)",
}
# summary.tsv columns drawn as "metric vs step" panels: (column, panel title, y label, share?).
QUALITY_PANELS = (
    ("format_rate", "Format rate", "share of completions", True),
    ("numbers_ok_share", "Answer uses the given numbers", "share of completions", True),
    ("tokens_mean", "Completion length", "tokens (mean)", False),
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
MAX_PATTERN_PANELS = 15


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    # Text stays text in the SVG: searchable, selectable and smaller than glyph paths.
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "aha-countdown"  # stable ids: reruns give identical files
    return plt


def palette(order: Sequence[str]) -> dict[str, Any]:
    """One colour per run, the same in every figure."""
    import seaborn as sns

    return dict(zip(order, sns.color_palette("colorblind", max(len(order), 1)), strict=False))


def _note(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="0.35",
        wrap=True,
        bbox={"boxstyle": "round", "facecolor": "0.96", "edgecolor": "0.8"},
    )


def _footnote(fig: Figure, text: str) -> None:
    """A note under the panels (above the legend); constrained layout keeps room for it."""
    if text:
        fig.supxlabel(text, fontsize=9, color="#9a6700")


def configured_steps(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> list[int]:
    """Every configured step and every scored one: the x ticks, so a missing step shows a gap."""
    return sorted({s for r in runs.values() for s in r.steps} | set(summary["step"].astype(int)))


def _steps_axis(ax: Axes, steps: Iterable[int]) -> None:
    ticks = sorted(set(steps))
    if ticks:
        ax.set_xticks(ticks)
        pad = (ticks[-1] - ticks[0]) * 0.04 or 0.5
        ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
    ax.set_xlabel("training step (0 = base model)")


def _metric_panel(
    ax: Axes,
    summary: pd.DataFrame,
    column: str,
    order: Sequence[str],
    colours: Mapping[str, Any],
    share: bool,
    ticks: Sequence[int],
    band: tuple[str, str] | None = None,
) -> bool:
    """`column` vs step, one line per run; an interval band when `band` names lo/hi columns.

    False (and a note on the panel) when there is nothing to draw.
    """
    import seaborn as sns

    _steps_axis(ax, ticks)
    if share:
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(_percent())
    if summary.empty:
        _note(ax, "no scored checkpoint yet")
        return False
    if column not in summary:
        _note(ax, f"no column {column!r} in summary.tsv")
        return False
    data = summary.dropna(subset=[column])
    if data.empty:
        _note(ax, "no scored checkpoint yet")
        return False
    hue_order = [r for r in order if r in set(data["run"])]
    sns.lineplot(
        data=data,
        x="step",
        y=column,
        hue="run",
        hue_order=hue_order,
        palette=colours,
        marker="o",
        errorbar=None,
        ax=ax,
    )
    if band and set(band) <= set(data.columns):
        for run, part in data.groupby("run", sort=False):
            part = part.dropna(subset=list(band)).sort_values("step")
            ax.fill_between(
                part["step"], part[band[0]], part[band[1]], color=colours[run], alpha=0.18, lw=0
            )
            ax.vlines(part["step"], part[band[0]], part[band[1]], color=colours[run], lw=1.2)
    _steps_axis(ax, ticks)  # seaborn may have autoscaled
    return True


def fit_share_axis(ax: Axes) -> None:
    """A share axis from 0 to a little above what is drawn (at most 100%): 3% and 8% must look
    different. Called after everything on the panel is drawn, seed stars included."""
    lines = [y for line in ax.get_lines() for y in map(float, line.get_ydata()) if y == y]
    shapes = [float(y) for c in ax.collections for y in c.get_datalim(ax.transData).intervaly]
    top = max([0.0, *lines, *(y for y in shapes if abs(y) != float("inf"))])
    top = min(1.0, max(0.05, top * 1.15))
    ax.set_ylim(-0.02 * top, top + 0.02 * top)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the figure, gathered from every panel (runs, baselines, seed points)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3)


def plot_success(
    summary: pd.DataFrame, runs: Mapping[str, RunInfo], options: ReportOptions
) -> Figure:
    """Success rate (95% Wilson band) and pass@k vs step, step-0 baselines, seed reference."""
    plt = _pyplot()
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
    drawn_k = _metric_panel(ax_k, summary, "pass_at_k", order, colours, True, ticks)
    for panel in (ax, ax_k):
        fit_share_axis(panel)
    ks = sorted({int(k) for k in summary.get("k", []) if k == k}) if drawn_k else []
    k_text = "/".join(map(str, ks)) if ks else "k"
    ax_k.set_title(f"pass@{k_text} (any of {k_text} samples per prompt correct)")
    ax_k.set_ylabel(f"pass@{k_text}")
    _legend_below(fig, [ax, ax_k])
    _footnote(fig, describe_missing(missing_steps(summary, runs)))
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
    from aha.aggregate import across_seeds

    _steps_axis(ax, ticks)
    ax.yaxis.set_major_formatter(_percent())
    data = summary.dropna(subset=["success_rate"]) if "success_rate" in summary else summary[:0]
    if data.empty or "n_completions" not in data:
        _note(ax, "no scored checkpoint yet")
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
    _steps_axis(ax, ticks)
    return True


def pd_concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate, skipping empty frames (pandas warns on them)."""
    import pandas as pd

    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else frames[0]


def _panels_figure(
    summary: pd.DataFrame,
    runs: Mapping[str, RunInfo],
    panels: Sequence[tuple[str, str, str, bool]],
    title: str,
) -> Figure:
    plt = _pyplot()
    order = run_order(summary, runs)
    colours = palette(order)
    ticks = configured_steps(summary, runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), layout="constrained")
    for ax, (column, panel_title, ylabel, share) in zip(axes, panels, strict=True):
        _metric_panel(ax, summary, column, order, colours, share, ticks)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
    _legend_below(fig, axes)
    _footnote(fig, describe_missing(missing_steps(summary, runs)))
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
    plt = _pyplot()
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
            _note(ax, MISSING_NOTES.get(key, "not logged") if len(log) else "no training log yet")
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
    _legend_below(fig, flat)
    if empty_runs:
        _footnote(fig, "No training log yet (not run, or empty): " + ", ".join(empty_runs))
    fig.suptitle("Training curves (TRL log history; thick: rolling mean)")
    return fig


def plot_patterns(by_pattern: pd.DataFrame, runs: Mapping[str, RunInfo]) -> Figure:
    """Success per operator pattern vs step: a rise confined to one pattern is a shortcut."""
    plt = _pyplot()
    import seaborn as sns

    if by_pattern.empty or "pattern" not in by_pattern:
        fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
        _note(ax, "no success-by-pattern table (results/summary_by_pattern.tsv) yet")
        ax.set_axis_off()
        fig.suptitle("Success by operator pattern")
        return fig
    order = run_order(by_pattern, runs)
    colours = palette(order)
    ticks = configured_steps(by_pattern, runs)
    counts = by_pattern.groupby("pattern")["n"].sum().sort_values(ascending=False)
    shown = list(counts.index[:MAX_PATTERN_PANELS])
    ncols = min(5, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.4 * ncols, 3.0 * nrows + 0.6),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    for ax, pattern in zip(axes.flat, shown, strict=False):
        data = by_pattern[by_pattern["pattern"] == pattern].dropna(subset=["success_rate"])
        sns.lineplot(
            data=data,
            x="step",
            y="success_rate",
            hue="run",
            hue_order=[r for r in order if r in set(data["run"])],
            palette=colours,
            marker="o",
            errorbar=None,
            ax=ax,
        )
        for run, part in data.groupby("run", sort=False):
            ax.vlines(part["step"], part["success_lo"], part["success_hi"], color=colours[run])
        ax.set_title(f"pattern {pattern} (n = {int(counts[pattern])})")
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(_percent())
        _steps_axis(ax, ticks)
        ax.set_xlabel("step")
        ax.set_ylabel("success rate")
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    _legend_below(fig, list(axes.flat))
    left_out = len(counts) - len(shown)
    notes = [f"{left_out} rarer patterns not shown"] if left_out else []
    _footnote(fig, "\n".join([*notes, describe_missing(missing_steps(by_pattern, runs))]).strip())
    fig.suptitle(
        "Success by operator pattern (95% intervals; n = completions of all runs and steps)"
    )
    return fig


def save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def cli(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="Seaborn SVG figures of the report (missing inputs become notes)."
    )
    add_input_arguments(parser)
    parser.add_argument("--by-pattern", type=Path, help="results/summary_by_pattern.tsv (optional)")
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
    save(plot_patterns(by_pattern, runs), args.patterns)
