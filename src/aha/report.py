"""Stages `plots` (seaborn SVG figures) and `tables` (HTML tables) for `snakemake --report`.

Researchers judge this experiment by looking, so every figure compares runs (hue = run) on the
same axes, and missing inputs are drawn as a note on the figure rather than crashing the report:
a partial run still gets a report that says what is not there yet. Completions are model output,
i.e. hostile input: every piece of text is HTML-escaped and the pages carry a Content Security
Policy that forbids scripts.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import behaviours
from aha.config import run_view, steps

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The seed's (philschmid mini-R1) reported success rates: read off training-time completions,
# not scored on held-out prompts, so they are drawn as reference markers, never as a curve.
SEED_REFERENCE: tuple[tuple[int, float], ...] = ((100, 0.25), (200, 0.40), (450, 0.50))
SEED_LABEL = "seed (Qwen2.5-3B): training-time observations, not held-out"

# Figure name -> file name; the rule's outputs use the same names.
FIGURES: dict[str, str] = {
    "success": "success.svg",
    "quality": "format_length.svg",
    "behaviours": "behaviours.svg",
    "training": "training.svg",
    "patterns": "success_by_pattern.svg",
}
SUMMARY_TABLE = "summary.html"
ENVIRONMENT_TABLE = "environment.html"
# Distributions whose versions decide the numbers (read from metadata: nothing is imported).
VERSIONED = (
    "torch", "transformers", "trl", "datasets", "accelerate", "peft", "tokenizers",
    "vllm", "deepspeed", "bitsandbytes", "snakemake", "pandas", "seaborn", "matplotlib",
    "aha-countdown",
)  # fmt: skip
EXAMPLES_TABLE = "examples-{run}.html"

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
MAX_TEXT_CHARS = 6000  # per completion shown; longer text is cut with a note


# ----------------------------------------------------------------------------- the rules' side

PLOTS_DIR = "results/plots"
TABLES_DIR = "results/tables"


def report_files(runs: Iterable[str]) -> list[str]:
    """Every file the report rules write, for `rule all` (so `--report` finds them)."""
    tables = [SUMMARY_TABLE, ENVIRONMENT_TABLE, *(EXAMPLES_TABLE.format(run=r) for r in runs)]
    return [f"{PLOTS_DIR}/{f}" for f in FIGURES.values()] + [f"{TABLES_DIR}/{t}" for t in tables]


def runs_argument(config: Mapping[str, Any]) -> dict[str, Any]:
    """The --runs value of both stages: each run's steps (0 + checkpoints) and model."""
    out = {}
    for run in config["runs"]:
        model = run_view(dict(config), run)["model"]
        out[run] = {
            "steps": steps(dict(config), run),
            "model": {k: model.get(k) for k in ("source", "name_or_path")},
        }
    return out


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunInfo:
    """What the report needs of one configured run."""

    name: str
    steps: tuple[int, ...]
    model_source: str
    model_name: str

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
    """The `report` config section."""

    examples_per_checkpoint: int = 3
    seed_reference: bool = True


def parse_runs(text: str) -> dict[str, RunInfo]:
    """`{"run": {"steps": [0, 50], "model": {"source": "hub", "name_or_path": "..."}}}`."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("--runs: expected a JSON object {run: {steps, model}}")
    runs = {}
    for name, spec in raw.items():
        model = spec.get("model") or {}
        run_steps = tuple(int(s) for s in spec.get("steps", [0]))
        runs[name] = RunInfo(
            name, run_steps, str(model.get("source", "")), str(model.get("name_or_path", ""))
        )
    return runs


def parse_options(text: str) -> ReportOptions:
    raw = json.loads(text) if text else {}
    return ReportOptions(
        examples_per_checkpoint=int(raw.get("examples_per_checkpoint", 3)),
        seed_reference=bool(raw.get("seed_reference", True)),
    )


def read_summary(path: Path | None) -> pd.DataFrame:
    """results/summary.tsv as a DataFrame; empty (with run and step columns) when missing."""
    import pandas as pd

    if path is None or not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({"run": pd.Series(dtype=str), "step": pd.Series(dtype=int)})
    df = pd.read_csv(path, sep="\t", na_values=["NA"])
    df["run"] = df["run"].astype(str)
    return df


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, number of unreadable lines); a missing file reads as no records."""
    records: list[dict[str, Any]] = []
    bad = 0
    if not path.exists():
        return records, bad
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    return records, bad


def read_train_log(path: Path, run: str) -> pd.DataFrame:
    """Long table (run, step, metric, value) of a TRL log history; empty when missing.

    Only per-step training entries count (those with a `step` and a reward or loss metric); the
    final summary entry (train_runtime, ...) and None values (TRL's all-NaN metric) are dropped.
    """
    import pandas as pd

    records, _ = read_jsonl(path)
    rows = []
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int | float) or "train_runtime" in rec:
            continue
        for key, value in rec.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                rows.append({"run": run, "step": int(step), "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=["run", "step", "metric", "value"])


def missing_steps(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> dict[str, list[int]]:
    """Configured (run, step) pairs without a scored row: not run yet, or failed."""
    have = set(zip(summary["run"], summary["step"].astype(int), strict=True))
    missing = {}
    for run in runs.values():
        lost = [s for s in run.steps if (run.name, s) not in have]
        if lost:
            missing[run.name] = lost
    return missing


def describe_missing(missing: Mapping[str, Sequence[int]]) -> str:
    parts = [f"{run} step {', '.join(map(str, steps))}" for run, steps in missing.items()]
    return "Missing (not run yet, or failed): " + "; ".join(parts) if parts else ""


def run_order(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> list[str]:
    """Configured runs first (config order), then any other run found in the data."""
    extra = sorted(set(summary["run"]) - set(runs)) if len(summary) else []
    return [*runs, *extra]


# ----------------------------------------------------------------------------- figures


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
    band = ("success_lo", "success_hi")
    drawn = _metric_panel(ax, summary, "success_rate", order, colours, True, seed_ticks, band)
    ax.set_title("Success rate on held-out prompts (95% interval)")
    ax.set_ylabel("success rate (equation correct)")
    if drawn:
        base = summary[(summary["step"] == 0)].dropna(subset=["success_rate"])
        for _, row in base.iterrows():
            ax.axhline(
                row["success_rate"],
                color=colours[row["run"]],
                ls=":",
                lw=1.2,
                label=f"{row['run']} step 0 (base model)",
            )
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
    """Training curves from TRL's log history: raw (thin) and a rolling mean (thick) per run."""
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
        data = log[log["metric"] == key].sort_values(["run", "step"])
        if data.empty:
            _note(ax, MISSING_NOTES.get(key, "not logged") if len(log) else "no training log yet")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        smooth = []
        for run, part in data.groupby("run", sort=False):
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


def _add_input_arguments(parser: argparse.ArgumentParser, runs_dir_help: str) -> None:
    """The inputs both report stages read: summary, runs and their steps, report options."""
    parser.add_argument("--summary", type=Path, required=True, help="results/summary.tsv")
    parser.add_argument(
        "--runs",
        required=True,
        help='JSON {run: {"steps": [0, ...], "model": {"source", "name_or_path"}}}',
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("results/runs"), help=runs_dir_help)
    parser.add_argument("--report", default="{}", help="the report config section as JSON")


def cli_plots(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="Seaborn SVG figures of the report (missing inputs become notes)."
    )
    _add_input_arguments(parser, runs_dir_help="where RUN/train_log.jsonl lies (read when present)")
    parser.add_argument("--by-pattern", type=Path, help="results/summary_by_pattern.tsv (optional)")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the SVG files")
    args = parser.parse_args(argv)
    import pandas as pd

    runs = parse_runs(args.runs)
    options = parse_options(args.report)
    summary = read_summary(args.summary)
    by_pattern = read_summary(args.by_pattern)
    logs = [read_train_log(args.runs_dir / run / "train_log.jsonl", run) for run in runs]
    empty = [run for run, log in zip(runs, logs, strict=True) if log.empty]
    log = pd.concat(logs, ignore_index=True) if logs else read_train_log(Path("/dev/null"), "")
    out = args.out_dir
    save(plot_success(summary, runs, options), out / FIGURES["success"])
    save(plot_quality(summary, runs), out / FIGURES["quality"])
    save(plot_behaviours(summary, runs), out / FIGURES["behaviours"])
    save(plot_training(log, runs, empty), out / FIGURES["training"])
    save(plot_patterns(by_pattern, runs), out / FIGURES["patterns"])


# ----------------------------------------------------------------------------- tables

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em;
       color: #1f2328; font-size: 14px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.missing td { color: #9a6700; background: #fff8c5; }
.note { color: #57606a; } .warn { color: #9a6700; }
table.examples { table-layout: fixed; width: 100%; }
table.examples td { width: 50%; }
.ok { border-top: 4px solid #1a7f37; } .fail { border-top: 4px solid #cf222e; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: 6px;
      margin: 4px 0; font-size: 12.5px; max-height: 28em; overflow: auto; }
.tag { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 8px;
       background: #ddf4ff; font-size: 12px; }
.answer { font-family: ui-monospace, monospace; background: #fff8c5; padding: 1px 4px; }
"""
# No scripts, no remote content: even a completion that escaped escaping could not run.
CSP = "default-src 'none'; style-src 'unsafe-inline'"
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def _pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{100 * float(value):.1f}%"


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{float(value):.{digits}f}"


def summary_table(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> str:
    """HTML page: one row per (run, step), and a marked row per configured step not scored."""
    missing = missing_steps(summary, runs)
    head = (
        "run", "step", "prompts × k", "success [95% CI]", "pass@1", "pass@k", "format",
        "numbers ok", "tokens mean / median", "truncated", "verify", "backtrack", "candidates",
    )  # fmt: skip
    rows = []
    for run in run_order(summary, runs):
        part = summary[summary["run"] == run]
        scored = {int(r["step"]): r for _, r in part.iterrows()}
        steps = sorted(set(scored) | set(missing.get(run, [])))
        for step in steps:
            r = scored.get(step)
            if r is None:
                cells = f'<td colspan="{len(head) - 2}">missing: not scored yet, or failed</td>'
                rows.append(f'<tr class="missing"><td>{esc(run)}</td><td>{step}</td>{cells}</tr>')
                continue
            k = "–" if r.get("k") != r.get("k") else int(r["k"])
            values = (
                f"{int(r['n_prompts'])} × {k}",
                f"{_pct(r['success_rate'])} [{_pct(r['success_lo'])}, {_pct(r['success_hi'])}]",
                _pct(r["pass_at_1"]),
                f"{_pct(r['pass_at_k'])} (k={k})",
                _pct(r["format_rate"]),
                _pct(r.get("numbers_ok_share")),
                f"{_num(r['tokens_mean'])} / {_num(r['tokens_median'], 0)}",
                _pct(r["truncated_share"]),
                _pct(r["verify_share"]),
                _pct(r["backtrack_share"]),
                _num(r["candidates_mean"], 2),
            )
            cells = "".join(f'<td class="num">{esc(v)}</td>' for v in values)
            rows.append(f"<tr><td>{esc(run)}</td><td>{step}</td>{cells}</tr>")
    if not rows:
        body = '<p class="warn">No scored checkpoint yet: results/summary.tsv is empty.</p>'
        return page("Summary per run and checkpoint", body)
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    intro = (
        '<p class="note">Success: the equation uses each number once and equals the target '
        "(Wilson 95% interval over completions). pass@k: unbiased estimate over prompts.</p>"
    )
    table = f"<table><thead><tr>{header}</tr></thead><tbody>\n" + "\n".join(rows)
    return page("Summary per run and checkpoint", intro + table + "\n</tbody></table>")


def is_success(sample: Mapping[str, Any]) -> bool:
    try:
        return float(sample.get("equation_reward", 0.0)) == 1.0
    except (TypeError, ValueError):
        return False


def pick_examples(
    samples: Sequence[dict[str, Any]], n: int, seed: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Up to `n` successes and `n` failures, from distinct prompts where possible.

    Random but reproducible (seeded by run and step), so the page does not cherry-pick.
    """
    rng = random.Random(seed)
    picked = []
    for wanted in (True, False):
        pool = [s for s in samples if is_success(s) == wanted]
        rng.shuffle(pool)
        seen: set[Any] = set()
        first, rest = [], []
        for s in pool:
            (rest if s.get("prompt_id") in seen else first).append(s)
            seen.add(s.get("prompt_id"))
        picked.append((first + rest)[:n])
    return picked[0], picked[1]


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n… ({len(text) - MAX_TEXT_CHARS} more characters)"


def completion_cell(sample: Mapping[str, Any] | None, kind: str, row: int, shown: int) -> str:
    """One completion: task, thinking, answer, rewards and detected behaviours; all escaped.

    An empty cell (row `row`, `shown` examples of this kind) says why it is empty, once.
    """
    if sample is None:
        if row == 0:
            return f'<td class="note">no {kind} completion at this step</td>'
        if row == shown:
            return f'<td class="note">no other {kind} completion at this step</td>'
        return "<td></td>"
    text = str(sample.get("text", ""))
    end = text.find(behaviours.THINK_END)
    think = text if end < 0 else text[:end]
    after = "" if end < 0 else text[end + len(behaviours.THINK_END) :]
    answers = ANSWER.findall(after) or ANSWER.findall(text)
    answer = (
        f'<span class="answer">{esc(answers[-1].strip())}</span>'
        if answers
        else '<span class="warn">no &lt;answer&gt; tag</span>'
    )
    found = behaviours.detect(text)
    tags = [name for name in ("verify", "backtrack") if found[name]]
    tags.append(f"{found['candidates']} candidates")
    nums = sample.get("nums")
    nums = ", ".join(map(str, nums)) if isinstance(nums, list) else nums
    truncated = " · truncated" if sample.get("truncated") else ""
    tags_html = "".join(f'<span class="tag">{esc(t)}</span>' for t in tags)
    after_html = (
        f"<div><b>after &lt;/think&gt;</b></div><pre>{esc(_clip(after))}</pre>" if end >= 0 else ""
    )
    closing = "" if end >= 0 else ' <span class="warn">(no &lt;/think&gt;)</span>'
    return (
        f'<td class="{"ok" if kind == "successful" else "fail"}">'
        f"<div>numbers [{esc(nums)}] → target {esc(sample.get('target'))}"
        f" · pattern {esc(sample.get('pattern'))} · prompt {esc(sample.get('prompt_id'))}"
        f" / sample {esc(sample.get('sample_index'))}</div>"
        f"<div><b>&lt;think&gt;</b>{closing}</div><pre>{esc(_clip(think))}</pre>"
        f"{after_html}"
        f"<div>answer: {answer}</div>"
        f"<div>format reward {esc(sample.get('format_reward'))} · equation reward "
        f"{esc(sample.get('equation_reward'))} · {esc(sample.get('num_tokens'))} tokens"
        f"{truncated}</div>"
        f"<div>{tags_html}</div></td>"
    )


def examples_section(path: Path, run: str, step: int, n: int) -> str:
    """One checkpoint: a note when its samples are missing or empty, else pairs side by side."""
    title = f"<h2>{esc(run)} · step {step}{' (base model)' if step == 0 else ''}</h2>"
    if not path.exists():
        return (
            title
            + f'<p class="warn">missing: no samples file {esc(path)} (not run yet, or failed)</p>'
        )
    samples, bad = read_jsonl(path)
    samples = [s for s in samples if isinstance(s, dict) and "text" in s]
    note = f'<p class="warn">{bad} unreadable line(s) skipped</p>' if bad else ""
    if not samples:
        return (
            title + note + f'<p class="warn">no completions in {esc(path)} (empty samples file)</p>'
        )
    wins = sum(is_success(s) for s in samples)
    good, bad_ones = pick_examples(samples, n, f"{run}/{step}")
    stats = (
        f'<p class="note">{wins} of {len(samples)} completions successful; '
        f"showing up to {n} of each, drawn at random (fixed seed).</p>"
    )
    rows = [
        "<tr>"
        + completion_cell(good[i] if i < len(good) else None, "successful", i, len(good))
        + completion_cell(bad_ones[i] if i < len(bad_ones) else None, "failed", i, len(bad_ones))
        + "</tr>"
        for i in range(max(len(good), len(bad_ones), 1))
    ]
    table = (
        '<table class="examples"><thead><tr><th>successful</th><th>failed</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    return title + note + stats + table


def examples_page(run: RunInfo, runs_dir: Path, n: int) -> str:
    sections = [
        examples_section(runs_dir / run.name / "samples" / f"step-{step}.jsonl", run.name, step, n)
        for step in run.steps
    ]
    intro = (
        f'<p class="note">Model: {esc(run.model_label)}. The prompt ends with '
        "the prefilled &lt;think&gt;; the completion continues inside it. Model output is shown "
        "verbatim (escaped). Behaviour tags come from aha.behaviours.</p>"
    )
    return page(f"Example completions: {run.name}", intro + "\n".join(sections))


def git_revision(workflow_dir: Path | None) -> str:
    """`git describe` of the workflow checkout, '+ uncommitted changes' when dirty; '' if none."""
    import subprocess

    if workflow_dir is None:
        return ""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(workflow_dir),
                "describe",
                "--always",
                "--dirty=+ uncommitted changes",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def environment_page(workflow_dir: Path | None) -> str:
    """Versions of Python and the packages that decide the numbers, and the workflow revision."""
    import platform
    from importlib import metadata

    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in VERSIONED:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    revision = git_revision(workflow_dir)
    rows.append(("workflow revision", revision or "unknown (not a git checkout)"))
    body = (
        '<p class="note">The environment that ran the report rules. Every rule runs the same '
        "pinned environment (pyproject.toml for CPU, environment.yml for GPUs); GPU-only "
        "packages show as not installed on CPU.</p><table><tbody>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        + "</tbody></table>"
    )
    return page("Software versions", body)


def cli_tables(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="HTML tables of the report: summary and example completions."
    )
    _add_input_arguments(
        parser, runs_dir_help="where RUN/samples/step-STEP.jsonl lie (read when present)"
    )
    parser.add_argument(
        "--workflow-dir", type=Path, help="workflow checkout whose git revision is reported"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help=f"folder for {SUMMARY_TABLE}, {ENVIRONMENT_TABLE} and "
        f"{EXAMPLES_TABLE.format(run='RUN')}",
    )
    args = parser.parse_args(argv)
    runs = parse_runs(args.runs)
    options = parse_options(args.report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = read_summary(args.summary)
    (args.out_dir / SUMMARY_TABLE).write_text(summary_table(summary, runs), encoding="utf-8")
    env = environment_page(args.workflow_dir)
    (args.out_dir / ENVIRONMENT_TABLE).write_text(env, encoding="utf-8")
    for run in runs.values():
        text = examples_page(run, args.runs_dir, options.examples_per_checkpoint)
        (args.out_dir / EXAMPLES_TABLE.format(run=run.name)).write_text(text, encoding="utf-8")
