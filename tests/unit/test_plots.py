"""The `plots` stage on synthetic results: every figure compares runs, partial inputs are said."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aha.report import figures
from aha.report import style as plot_style
from aha.report.inputs import read_train_log
from aha.stages import plots
from tests.unit.test_report import PATTERNS, SWEEP, train_log_args, write_results

# The file of each figure, as report.smk names them.
FILES = {
    "success": "success.svg",
    "patterns": "success_by_pattern.svg",
    "sizes": "success_by_size.svg",
    "passk": "pass_at_k.svg",
    "quality": "format_length.svg",
    "behaviours": "behaviours.svg",
    "reflection": "reflection.svg",
    "audit": "audit.svg",
    "training": "training.svg",
}
# plots option -> detail table file (tests.unit.test_report.DETAIL_FILES names them)
TABLES = {
    "--by-size": "summary_by_size.tsv",
    "--pass-at-k-table": "pass_at_k.tsv",
    "--audit-table": "audit.tsv",
    "--reflection-table": "reflection_words.tsv",
}


def run_plots(
    results: Path,
    runs: dict,
    out: Path,
    report_cfg: dict | None = None,
    seeds: dict | None = None,
) -> None:
    """The stage as rule plots runs it: every input and output path given."""
    outputs = [arg for name, f in FILES.items() for arg in (f"--{name}", str(out / f))]
    plots.cli(
        [
            "--summary", str(results / "summary.tsv"),
            "--by-pattern", str(results / "summary_by_pattern.tsv"),
            *[arg for flag, f in TABLES.items() for arg in (flag, str(results / f))],
            *train_log_args(results, runs, seeds),
            "--runs", json.dumps(runs),
            "--report", json.dumps(report_cfg or {"seed_reference": True}),
            *outputs,
        ],
        prog="plots",
    )  # fmt: skip


def svg_text(path: Path) -> str:
    """The text of an SVG's <text> elements (kept as text: svg.fonttype none), unescaped."""
    import html

    body = path.read_text(encoding="utf-8")
    assert body.lstrip().startswith(("<?xml", "<svg"))
    return html.unescape(" ".join(re.findall(r"<text[^>]*>(.*?)</text>", body, re.DOTALL)))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("sweep")
    runs = write_results(results, SWEEP)
    run_plots(results, runs, results / "plots")
    return results / "plots"


def test_figures_match_the_rule_outputs() -> None:
    """One table (aha.report.figures) names every figure: its output option, its file (the
    names in here, the ones the report has always had), and how the stage draws it; the long
    tables the figures read are the ones the stage takes."""
    assert {figure.name: figure.file for figure in figures.FIGURES} == FILES
    assert set(plots.DRAW) == set(FILES)
    assert [figures.TABLE_OPTIONS[name] for name in figures.tables_read()] == [
        "--by-pattern",
        *TABLES,
    ]


def test_every_figure_written_and_compares_runs(sweep: Path) -> None:
    for name in FILES.values():
        text = svg_text(sweep / name)
        assert "qwen-a" in text and "tiny-b" in text, name  # hue = run: both in every legend
    success = svg_text(sweep / "success.svg")
    assert "Success rate on held-out prompts (mean over seeds, 95% interval)" in success
    assert "pass@4" in success
    assert "qwen-a step 0 (base model)" in success and "tiny-b step 0 (base model)" in success
    assert plots.SEED_LABEL in success  # a Qwen Hub run and seed_reference on
    assert "Missing" not in success
    quality = svg_text(sweep / "format_length.svg")
    for title in ("Format rate", "correct (solid) vs incorrect (dashed)", "Truncated completions"):
        assert title in quality
    aha = svg_text(sweep / "behaviours.svg")
    for title in ("Self-verification", "Backtracking", "Candidate equations tried"):
        assert title in aha
    patterns = svg_text(sweep / "success_by_pattern.svg")
    for pattern in PATTERNS:
        assert f"pattern {pattern} (n = 48)" in patterns  # 2 prompts x 4 samples x 3 steps x 2 runs


def test_training_figure_has_a_panel_per_reward_function(sweep: Path) -> None:
    text = svg_text(sweep / "training.svg")
    for title in (
        "Mean equation_reward",
        "Mean format_reward",
        "Total reward (weighted)",
        "Reward std",
        "KL to reference",  # one run logged KL: drawn, no note
        "Completion length (tokens)",
        "Learning rate",
    ):
        assert title in text
    assert "KL not logged" not in text
    assert "no training log" not in text.lower()


def test_train_panels_one_per_reward_function(tmp_path: Path) -> None:
    from tests.unit.test_report import train_log, write_jsonl

    path = tmp_path / "train_log.jsonl"
    write_jsonl(path, train_log(3, kl=False))
    panels = [key for key, _ in plots.train_panels(read_train_log(path, "r"))]
    assert panels[:2] == ["rewards/equation_reward/mean", "rewards/format_reward/mean"]
    assert "kl" in panels


def test_no_summary_at_all(tmp_path: Path) -> None:
    run_plots(tmp_path, {"tiny-a": {"steps": [0, 2], "model": {"source": "tiny"}}}, tmp_path)
    assert "no scored checkpoint yet" in svg_text(tmp_path / "success.svg")


def test_train_log_of_an_unknown_run_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log the rule passes for a run --runs lacks would be silently left off: refused."""
    outputs = [arg for name in FILES for arg in (f"--{name}", str(tmp_path / name))]
    argv = ["--summary", "s", "--runs", '{"a": {"steps": [0]}}', "--train-log", "b", "42", "p"]
    with pytest.raises(SystemExit):
        plots.cli([*argv, *outputs], prog="plots")
    assert "--train-log b: not a run of --runs (have: a)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing drawn


def test_share_axis_fits_small_rates_and_keeps_seed_stars_in_view() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 450], [0.03, 0.08])
    ax.fill_between([0, 450], [0.02, 0.06], [0.04, 0.10])
    plot_style.fit_share_axis(ax)
    low, top = ax.get_ylim()
    assert 0.10 < top < 0.13 and low <= 0.0  # 3% and 8% are a third and two thirds up
    ax.scatter([100, 450], [0.25, 0.50])  # seed reference stars
    plot_style.fit_share_axis(ax)
    assert 0.50 < ax.get_ylim()[1] < 0.6
    ax.plot([0, 450], [0.99, 1.0])  # a format rate: never past 100% (+ a margin)
    plot_style.fit_share_axis(ax)
    assert ax.get_ylim()[1] == pytest.approx(1.02)
    plt.close(fig)


REPLICATES = {
    run: {**spec, "seeds": [42, 43, 44]} for run, spec in SWEEP.items()
}  # the sweep with three seeds per run (seed i scores i more successes)


def test_success_figure_with_one_seed_names_it(sweep: Path) -> None:
    assert "qwen-a (1 seed)" in svg_text(sweep / "success.svg")


def _axes_lines(fig) -> dict[str, list[tuple[list, list]]]:
    """{axes title: [(x, y) of each line]} of a figure."""
    return {
        ax.get_title(): [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]
        for ax in fig.axes
    }


def test_breakdown_figures_draw_the_scored_numbers(tmp_path: Path) -> None:
    """The numbers behind pass@k, length, reflection and audit figures, known by hand for the
    synthetic completions (6 prompts x 4 samples; the first `successes` of them correct)."""
    import pandas as pd

    from aha.report import breakdowns as plots_breakdowns
    from aha.report.inputs import runs_from

    spec = {"qwen-a": {**SWEEP["qwen-a"], "seeds": [42, 43]}}
    runs = runs_from(write_results(tmp_path, spec))
    read = lambda name: pd.read_csv(tmp_path / name, sep="\t", na_values=["NA"])  # noqa: E731
    fig = plots_breakdowns.plot_pass_at_k(read("pass_at_k.tsv"), runs)
    (line0, line2, line4) = _axes_lines(fig)["qwen-a"]
    # step 0: 2 successes = prompt 0 with 2 of 4: pass@k = (1 - C(2,k)/C(4,k)) / 6
    assert line0 == ([1, 2, 3, 4], pytest.approx([0.5 / 6, (5 / 6) / 6, 1 / 6, 1 / 6]))
    # step 4: seed 42 has 12 (prompts 0-2 all correct), seed 43 13: the mean over seeds
    k1 = (12 / 24 + 13 / 24) / 2
    assert line4[1][0] == pytest.approx(k1) and line4[1][3] == pytest.approx((3 / 6 + 4 / 6) / 2)
    assert line2[1][0] == pytest.approx((6 / 24 + 7 / 24) / 2)
    reflection = _axes_lines(plots_breakdowns.plot_reflection(read("summary.tsv"), read(
        "reflection_words.tsv"), runs))  # fmt: skip
    # every completion thinks "Try ... not 15. Wait, ... Let me check": 'wait' + 'check'
    assert reflection["Reflection words per completion"] == [([0, 2, 4], [2.0, 2.0, 2.0])]
    with_without = reflection["Success with (solid) vs without (dotted) reflection"]
    # every completion reflects: success with = the success rate, and no line without
    assert with_without == [([0, 2, 4], pytest.approx([2 / 24, 6.5 / 24, k1]))]
    audit = _axes_lines(plots_breakdowns.plot_audit(read("audit.tsv"), runs))
    # "3 * 5" and "3 + 5" for the numbers 3, 5, 7 both leave 7 out
    assert audit["Leaves a number out"] == [([0, 2, 4], [1.0, 1.0, 1.0])]
    assert audit["No answer"] == [([0, 2, 4], [0.0, 0.0, 0.0])]


def test_length_panel_splits_correct_from_incorrect() -> None:
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from aha.report.breakdowns import length_panel
    from aha.report.style import RunStyle

    summary = pd.DataFrame(
        {
            "run": ["r", "r", "r"],
            "seed": [None, 1, 2],
            "step": [0, 5, 5],
            "tokens_mean_correct": [30.0, 50.0, 70.0],
            "tokens_mean_incorrect": [100.0, 120.0, None],
        }
    )
    _fig, ax = matplotlib.pyplot.subplots()
    assert length_panel(ax, summary, RunStyle(["r"], {"r": "C0"}, [0, 5]))
    (correct, incorrect) = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]
    assert correct == ([0, 5], [30.0, 60.0])  # the mean over seeds
    assert incorrect == ([0, 5], [100.0, 120.0])  # a seed without failures adds none
    assert [ln.get_linestyle() for ln in ax.get_lines()] == ["-", "--"]
