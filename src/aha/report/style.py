"""Drawing helpers shared by the report's figures (`aha.stages.plots`, `aha.report.breakdowns`).

One theme, one colour per run in every figure, a step axis that shows a missing checkpoint as a
gap, and notes drawn on a panel instead of errors, so a partial run still gets a report.
Matplotlib and seaborn are imported inside the functions: building the DAG never loads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha.report.inputs import RunInfo, describe_missing, missing_scores, run_order

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pyplot() -> Any:
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


@dataclass(frozen=True)
class RunStyle:
    """How every panel of one figure draws its runs: in this order (configured runs first),
    one colour each (the same run, the same colour in every figure), on these step ticks."""

    order: Sequence[str]
    colours: Mapping[str, Any]
    ticks: Sequence[int]

    @classmethod
    def of(cls, data: pd.DataFrame, runs: Mapping[str, RunInfo]) -> RunStyle:
        """The style of a figure of `data` (a table with run and step columns)."""
        order = run_order(data, runs)
        return cls(order, palette(order), configured_steps(data, runs))

    def drawn(self, data: Any) -> list[str]:
        """The runs of `data` (a table, or its run column), in this order."""
        present = set(data["run"] if hasattr(data, "columns") else data)
        return [run for run in self.order if run in present]


def note(ax: Axes, text: str) -> None:
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


def footnote(fig: Figure, text: str) -> None:
    """A note under the panels (above the legend); constrained layout keeps room for it."""
    if text:
        fig.supxlabel(text, fontsize=9, color="#9a6700")


def footnote_missing(fig: Figure, data: pd.DataFrame, runs: Mapping[str, RunInfo]) -> None:
    """The footnote naming the configured (run, step, seed) that `data` has no scores of."""
    footnote(fig, describe_missing(missing_scores(data, runs), runs))


def configured_steps(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> list[int]:
    """Every configured step and every scored one: the x ticks, so a missing step shows a gap."""
    return sorted({s for r in runs.values() for s in r.steps} | set(summary["step"].astype(int)))


def steps_axis(ax: Axes, steps: Iterable[int]) -> None:
    ticks = sorted(set(steps))
    if ticks:
        ax.set_xticks(ticks)
        pad = (ticks[-1] - ticks[0]) * 0.04 or 0.5
        ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
    ax.set_xlabel("training step (0 = base model)")


def metric_panel(
    ax: Axes, summary: pd.DataFrame, column: str, style: RunStyle, share: bool
) -> bool:
    """`column` vs step, one line per run. False (and a note on the panel) when there is
    nothing to draw."""
    steps_axis(ax, style.ticks)
    if share:
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(percent())
    if summary.empty:
        note(ax, "no scored checkpoint yet")
        return False
    if column not in summary:
        note(ax, f"no column {column!r} in summary.tsv")
        return False
    data = summary.dropna(subset=[column])
    if data.empty:
        note(ax, "no scored checkpoint yet")
        return False
    run_lines(ax, data, column, style)
    steps_axis(ax, style.ticks)  # seaborn may have autoscaled
    return True


def run_lines(ax: Axes, data: pd.DataFrame, column: str, style: RunStyle) -> None:
    """`column` vs step, one line with markers per run of `data`, in the style's colours."""
    import seaborn as sns

    sns.lineplot(
        data=data,
        x="step",
        y=column,
        hue="run",
        hue_order=style.drawn(data),
        palette=style.colours,
        marker="o",
        errorbar=None,
        ax=ax,
    )


def fit_share_axis(ax: Axes) -> None:
    """A share axis from 0 to a little above what is drawn (at most 100%): 3% and 8% must look
    different. Called after everything on the panel is drawn, seed stars included."""
    lines = [y for line in ax.get_lines() for y in map(float, line.get_ydata()) if y == y]
    shapes = [float(y) for c in ax.collections for y in c.get_datalim(ax.transData).intervaly]
    top = max([0.0, *lines, *(y for y in shapes if abs(y) != float("inf"))])
    top = min(1.0, max(0.05, top * 1.15))
    ax.set_ylim(-0.02 * top, top + 0.02 * top)


def percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
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


def pd_concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate, skipping empty frames (pandas warns on them)."""
    import pandas as pd

    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else frames[0]


def save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
