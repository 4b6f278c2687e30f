"""The report's breakdowns of one success rate: by operator pattern and task size, the pass@k
curve, completion length by outcome, reflection words and the reward-hacking audit.

Each figure reads one long table of `aggregate` (results/summary_by_*.tsv, pass_at_k.tsv,
audit.tsv, reflection_words.tsv) or summary.tsv. Replicate seeds are combined the way their
numbers allow: counts (successes, audit categories) are pooled over seeds before an interval is
drawn, means (pass@k, words per completion) are averaged over seeds. The `plots` stage
(aha.stages.plots) calls these; a missing table becomes a note on the figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aha.report.inputs import RunInfo, describe_missing, missing_scores, run_order
from aha.report.style import (
    RunStyle,
    fit_share_axis,
    footnote,
    footnote_missing,
    legend_below,
    note,
    percent,
    pyplot,
    run_lines,
    steps_axis,
)
from aha.task.audit import CATEGORIES
from aha.task.behaviours import REFLECTION_WORDS
from aha.task.metrics import wilson_interval

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_GROUP_PANELS = 15
# Audit categories drawn (each a panel); `correct` is the success rate, drawn elsewhere.
AUDIT_PANELS: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "correct")
AUDIT_TITLES = {
    "no_answer": "No answer",
    "reuses_number": "Reuses a number",
    "drops_number": "Leaves a number out",
    "foreign_number": "Uses a number not given",
    "bad_operator": "Operator outside + − × ÷",
    "unary_minus": "Unary minus",
    "echoes_target": "Echoes the target",
    "unparsable": "Unparsable",
}


def pool_groups(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """(run, step, key) rows of a by-pattern or by-size table with successes and n summed over
    seeds and the Wilson 95% interval of the pooled counts: seeds add samples, not weight."""
    import pandas as pd

    data = table.dropna(subset=["n", "successes"])
    rows = []
    for (run, step, group), part in data.groupby(["run", "step", key], sort=True):
        n, wins = int(part["n"].sum()), int(part["successes"].sum())
        if n == 0:
            continue
        lo, hi = wilson_interval(wins, n)
        rows.append(
            {
                "run": run,
                "step": int(step),
                key: group,
                "n": n,
                "successes": wins,
                "success_rate": wins / n,
                "success_lo": lo,
                "success_hi": hi,
            }
        )
    columns = ["run", "step", key, "n", "successes", "success_rate", "success_lo", "success_hi"]
    return pd.DataFrame(rows, columns=columns)


def _empty_figure(title: str, text: str) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    note(ax, text)
    ax.set_axis_off()
    fig.suptitle(title)
    return fig


def plot_groups(
    table: pd.DataFrame, runs: Mapping[str, RunInfo], key: str, label: str, source: str
) -> Figure:
    """Success per group (`key`: "pattern" or "size") vs step, one panel per group, seeds
    pooled: a rise confined to one group is a shortcut or a change of mix, not skill."""

    title = f"Success by {label}"
    if table.empty or key not in table:
        return _empty_figure(title, f"no success-by-{key} table ({source}) yet")
    pooled = pool_groups(table, key)
    if pooled.empty:
        return _empty_figure(title, f"no scored completion in {source} yet")
    plt = pyplot()
    style = RunStyle.of(pooled, runs)
    counts = pooled.groupby(key)["n"].sum().sort_values(ascending=False, kind="stable")
    shown = list(counts.index[:MAX_GROUP_PANELS])
    if key == "size":
        shown.sort()
    ncols = min(5, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.4 * ncols + 0.6, 3.0 * nrows + 0.6),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    for ax, group in zip(axes.flat, shown, strict=False):
        name = f"{group} numbers" if key == "size" else f"pattern {group}"
        _group_panel(ax, pooled[pooled[key] == group], style)
        ax.set_title(f"{name} (n = {int(counts[group])})")
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    legend_below(fig, list(axes.flat))
    left_out = len(counts) - len(shown)
    notes = [f"{left_out} rarer {label}s not shown"] if left_out else []
    footnote(fig, "\n".join([*notes, describe_missing(missing_scores(pooled, runs), runs)]).strip())
    fig.suptitle(
        f"{title} (seeds pooled, 95% Wilson intervals; n = completions of all runs and steps)"
    )
    return fig


def _group_panel(ax: Axes, data: pd.DataFrame, style: RunStyle) -> None:
    """One group's pooled success vs step per run, its Wilson intervals as bars, 0-100%."""
    run_lines(ax, data, "success_rate", style)
    for run, part in data.groupby("run", sort=False):
        ax.vlines(part["step"], part["success_lo"], part["success_hi"], color=style.colours[run])
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(percent())
    steps_axis(ax, style.ticks)
    ax.set_xlabel("step")
    ax.set_ylabel("success rate")


def plot_pass_at_k(curves: pd.DataFrame, runs: Mapping[str, RunInfo]) -> Figure:
    """pass@k for k = 1..K, one line per step (mean over seeds), one panel per run: curves that
    rise at k = 1 but meet at k = K sharpened sampling without widening what is reachable."""
    title = "pass@k curves: does training raise pass@1 only, or the reachable set too?"
    data = curves.dropna(subset=["pass_at_k"]) if "pass_at_k" in curves else curves[:0]
    if data.empty:
        return _empty_figure(title, "no pass@k table (results/pass_at_k.tsv) yet")
    plt = pyplot()
    import seaborn as sns

    mean = data.groupby(["run", "step", "k"], as_index=False)["pass_at_k"].mean()
    order = [r for r in run_order(mean, runs) if r in set(mean["run"])]
    steps = sorted(set(mean["step"].astype(int)))
    shades = dict(zip(steps, sns.color_palette("viridis", len(steps)), strict=True))
    fig, axes = plt.subplots(
        1, len(order), figsize=(5.2 * len(order), 4.4), layout="constrained", squeeze=False
    )
    for ax, run in zip(axes.flat, order, strict=True):
        part = mean[mean["run"] == run]
        for step, line in part.groupby("step", sort=True):
            line = line.sort_values("k")
            style = {"ls": "--", "color": "0.3"} if step == 0 else {"color": shades[int(step)]}
            label = "step 0 (base model)" if step == 0 else f"step {int(step)}"
            ax.plot(line["k"], line["pass_at_k"], marker="o", label=label, **style)
        ks = sorted(set(part["k"].astype(int)))
        ax.set_xticks(ks)
        ax.set_xlabel("k (samples per prompt)")
        ax.set_ylabel("pass@k (mean over prompts and seeds)")
        ax.yaxis.set_major_formatter(percent())
        fit_share_axis(ax)
        ax.set_title(run)
        ax.legend(fontsize=8, title="checkpoint", title_fontsize=8)
    fig.suptitle(title)
    return fig


def length_panel(ax: Axes, summary: pd.DataFrame, style: RunStyle) -> bool:
    """Mean tokens of correct (solid) and incorrect (dashed) completions vs step per run, mean
    over seeds: longer failures that hit the limit are not longer reasoning."""
    columns = ("tokens_mean_correct", "tokens_mean_incorrect")
    if summary.empty or not set(columns) <= set(summary.columns):
        steps_axis(ax, style.ticks)
        note(ax, "no length by outcome in summary.tsv yet")
        return False
    lines = [(columns[0], "-", "correct"), (columns[1], "--", "incorrect")]
    return _mean_lines(ax, summary, lines, style)


def plot_reflection(
    summary: pd.DataFrame, words: pd.DataFrame, runs: Mapping[str, RunInfo]
) -> Figure:
    """DeepSeek-R1's reflection words per completion, the share that reflects, success with vs
    without reflection, and each word's rate per step (first run, mean over seeds)."""
    plt = pyplot()
    style = RunStyle.of(summary, runs)
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.6), layout="constrained")
    panels = (
        ("reflection_words_mean", "Reflection words per completion", "words (mean)"),
        ("reflection_share", "Completions with any reflection word", "share of completions"),
    )
    for ax, (column, title, ylabel) in zip(axes, panels, strict=False):
        _mean_lines(ax, summary, [(column, "-", "")], style)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(bottom=0)
    axes[1].yaxis.set_major_formatter(percent())
    pair = [
        ("success_with_reflection", "-", "with"),
        ("success_without_reflection", ":", "without"),
    ]
    _mean_lines(axes[2], summary, pair, style)
    axes[2].set_title("Success with (solid) vs without (dotted) reflection")
    axes[2].set_ylabel("success rate")
    axes[2].yaxis.set_major_formatter(percent())
    for ax in axes[1:3]:
        fit_share_axis(ax)
    _word_heatmap(axes[3], words, style.order)
    legend_below(fig, list(axes[:3]))
    footnote_missing(fig, summary, runs)
    fig.suptitle("Reflection words in the thinking (wait, mistake, however, but, retry, ...)")
    return fig


def _mean_lines(
    ax: Axes,
    summary: pd.DataFrame,
    columns: Sequence[tuple[str, str, str]],
    style: RunStyle,
) -> bool:
    """Each (column, linestyle, label suffix) vs step per run, the mean over seeds; False (and
    a note) when nothing is drawn."""
    steps_axis(ax, style.ticks)
    drawn = False
    for run in style.drawn(summary.get("run", [])):
        part = summary[summary["run"] == run]
        for column, ls, what in columns:
            if column not in part:
                continue
            line = part.dropna(subset=[column]).groupby("step")[column].mean()
            if len(line):
                label = f"{run}: {what}" if what else run
                ax.plot(line.index, line.values, ls=ls, marker="o", color=style.colours[run],
                        label=label)  # fmt: skip
                drawn = True
    if not drawn:
        note(ax, "no scored checkpoint yet")
    steps_axis(ax, style.ticks)
    return drawn


def _word_heatmap(ax: Axes, words: pd.DataFrame, order: Sequence[str]) -> None:
    import seaborn as sns

    data = words.dropna(subset=["per_completion"]) if "per_completion" in words else words[:0]
    runs = [r for r in order if r in set(data.get("run", []))]
    if not runs:
        note(ax, "no reflection-word table\n(results/reflection_words.tsv) yet")
        ax.set_axis_off()
        return
    part = data[data["run"] == runs[0]]
    grid = part.pivot_table(index="word", columns="step", values="per_completion", aggfunc="mean")
    grid = grid.reindex([w for w in REFLECTION_WORDS if w in grid.index])
    sns.heatmap(grid, ax=ax, cmap="rocket_r", annot=True, fmt=".2f", cbar=False,
                annot_kws={"fontsize": 7})  # fmt: skip
    ax.set_title(f"Per word, per completion ({runs[0]})")
    ax.set_xlabel("step")
    ax.set_ylabel("")


def plot_audit(audit: pd.DataFrame, runs: Mapping[str, RunInfo]) -> Figure:
    """The share of completions in each reward-hacking category vs step per run, seeds pooled:
    a category that grows while success grows is the policy probing the reward."""
    title = "Reward-hacking audit: what the refused answers do"
    data = audit.dropna(subset=["count", "n"]) if "count" in audit else audit[:0]
    if data.empty:
        return _empty_figure(title, "no audit table (results/audit.tsv) yet")
    plt = pyplot()
    pooled = data.groupby(["run", "step", "category"], as_index=False)[["count", "n"]].sum()
    pooled["share"] = pooled["count"] / pooled["n"]
    style = RunStyle.of(pooled, runs)
    ncols = 4
    fig, axes = plt.subplots(
        math.ceil(len(AUDIT_PANELS) / ncols), ncols, figsize=(18, 7.4), layout="constrained"
    )
    for ax, category in zip(axes.flat, AUDIT_PANELS, strict=True):
        part = pooled[pooled["category"] == category]
        for run in style.drawn(part):
            line = part[part["run"] == run].sort_values("step")
            ax.plot(line["step"], line["share"], marker="o", color=style.colours[run], label=run)
        steps_axis(ax, style.ticks)
        ax.yaxis.set_major_formatter(percent())
        fit_share_axis(ax)
        ax.set_title(AUDIT_TITLES[category])
        ax.set_ylabel("share of completions")
    legend_below(fig, list(axes.flat))
    footnote_missing(fig, pooled, runs)
    fig.suptitle(f"{title} (seeds pooled; an answer may be in several categories)")
    return fig
