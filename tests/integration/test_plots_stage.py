"""The plots stage run whole over synthetic results, several times per test: the integration tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.report import style as plot_style
from aha.report.inputs import read_train_log
from aha.stages import plots
from tests.unit.test_plots import (
    REPLICATES,
    run_plots,
    svg_text,
)
from tests.unit.test_report import PARTIAL, SWEEP, write_results


def test_partial_figures_say_what_is_missing(tmp_path: Path) -> None:
    runs = write_results(tmp_path, PARTIAL)
    (tmp_path / "summary_by_pattern.tsv").unlink()
    run_plots(tmp_path, runs, tmp_path / "plots", {"seed_reference": True})
    missing = "Missing (not run yet, or failed): tiny-a step 2, 4; tiny-b step 0, 2, 4"
    for name in ("success.svg", "format_length.svg", "behaviours.svg"):
        assert missing in svg_text(tmp_path / "plots" / name), name
    success = svg_text(tmp_path / "plots" / "success.svg")
    assert "tiny-a step 0 (base model)" in success
    assert plots.SEED_LABEL not in success  # tiny runs only: the seed's numbers are not drawn
    training = svg_text(tmp_path / "plots" / "training.svg")
    assert training.count("no training log yet") == len(
        plots.train_panels(read_train_log(None, "x"))
    )
    assert "No training log yet (not run, or empty): tiny-a, tiny-b" in training
    patterns = svg_text(tmp_path / "plots" / "success_by_pattern.svg")
    assert "no success-by-pattern table" in patterns


def test_seed_reference_follows_config_and_model(tmp_path: Path) -> None:
    one = {"qwen-a": SWEEP["qwen-a"]}
    runs = write_results(tmp_path, one)
    run_plots(tmp_path, runs, tmp_path / "on", {"seed_reference": True})
    run_plots(tmp_path, runs, tmp_path / "off", {"seed_reference": False})
    assert plots.SEED_LABEL in svg_text(tmp_path / "on" / "success.svg")
    assert plots.SEED_LABEL not in svg_text(tmp_path / "off" / "success.svg")
    # a single run without KL (beta 0): the panel says why it is empty
    runs_nokl = write_results(tmp_path / "nokl", {"tiny-b": SWEEP["tiny-b"]})
    run_plots(tmp_path / "nokl", runs_nokl, tmp_path / "nokl" / "plots")
    assert "KL not logged" in svg_text(tmp_path / "nokl" / "plots" / "training.svg")


def test_success_figure_with_three_seeds(tmp_path: Path) -> None:
    """Three seeds: a thin line per seed from the shared step 0, the mean over seeds in its t
    band, the baseline; the legend counts the seeds. One seed says "1 seed"."""
    runs = write_results(tmp_path, REPLICATES)
    seeds = {run: spec["seeds"] for run, spec in REPLICATES.items()}
    run_plots(tmp_path, runs, tmp_path / "plots", seeds=seeds)
    text = svg_text(tmp_path / "plots" / "success.svg")
    assert "qwen-a (3 seeds)" in text and "tiny-b (3 seeds)" in text
    assert "qwen-a step 0 (base model)" in text
    assert "training.svg" in {p.name for p in (tmp_path / "plots").iterdir()}
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    summary = pd.read_csv(tmp_path / "summary.tsv", sep="\t", na_values=["NA"])
    fig, ax = matplotlib.pyplot.subplots()
    order = ["qwen-a", "tiny-b"]
    style = plot_style.RunStyle(order, plot_style.palette(order), [0, 2, 4])
    assert plots.success_panel(ax, summary, style)
    # per run: 3 thin seed lines from step 0 + 1 mean line; a dotted baseline each
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() != ":"]
    assert len(lines) == 2 * (3 + 1)
    seed_line = lines[0]
    assert list(seed_line.get_xdata()) == [0, 2, 4]  # starts at the shared baseline
    assert list(seed_line.get_ydata()) == [2 / 24, 6 / 24, 12 / 24]
    mean_line = lines[3]
    assert list(mean_line.get_ydata()) == pytest.approx([2 / 24, 7 / 24, 13 / 24])
    matplotlib.pyplot.close(fig)
