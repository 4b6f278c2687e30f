"""The `plots` and `tables` stages on synthetic results: several runs, partial inputs, hostile text.

The synthetic results go through the real `aha.score` code, so the numbers the figures and tables
show are the ones the pipeline would compute for these completions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aha import report, score

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
QWEN = {"source": "hub", "name_or_path": "Qwen/Qwen2.5-3B-Instruct"}
TINY = {"source": "tiny", "name_or_path": "Qwen/Qwen2.5-3B-Instruct"}  # schema default name
PATTERNS = ("++", "+-", "-*")


def completion(ok: bool, i: int) -> str:
    """A completion with verification/backtracking words and hostile markup in the thinking."""
    answer = "3 * 5" if ok else "3 + 5"
    return (
        f" We have 3, 5, 7. Try 3 + 5 = 8, not 15. Wait, 3 * 5 = 15. Let me check. {HOSTILE} #{i}"
        f"</think>\n<answer>{answer}</answer>"
    )


def synthetic_samples(run: str, step: int, successes: int, n_prompts: int = 6, k: int = 4):
    """n_prompts x k completions of which the first `successes` (in order) are correct."""
    samples = []
    for i in range(n_prompts * k):
        ok = i < successes
        samples.append(
            {
                "run": run,
                "step": step,
                "prompt_id": i // k,
                "sample_index": i % k,
                "nums": [3, 5, 7],
                "target": 15,
                "pattern": PATTERNS[(i // k) % len(PATTERNS)],
                "text": completion(ok, i),
                "num_tokens": 40 + step,
                "truncated": i % 5 == 0,
                "format_reward": 1.0,
                "equation_reward": 1.0 if ok else 0.0,
            }
        )
    return samples


def train_log(max_step: int, kl: bool) -> list[dict[str, Any]]:
    """TRL 1.16 GRPOTrainer log history: per-step entries, then the final summary entry."""
    rows = []
    for step in range(1, max_step + 1):
        row = {
            "loss": 0.01,
            "grad_norm": 0.5,
            "learning_rate": 5e-5,
            "num_tokens": 1000.0 * step,
            "completions/mean_length": 40.0 + step,
            "rewards/format_reward/mean": min(1.0, 0.2 * step),
            "rewards/format_reward/std": 0.1,
            "rewards/equation_reward/mean": 0.05 * step,
            "rewards/equation_reward/std": 0.2,
            "reward": 0.1 + 0.05 * step,
            "reward_std": 0.3,
            "frac_reward_zero_std": 0.0,
            "entropy": None,  # TRL writes None for an all-NaN metric
            "epoch": 0.01 * step,
            "step": step,
        }
        if kl:
            row["kl"] = 0.001 * step
        rows.append(row)
    rows.append({"train_runtime": 12.0, "train_loss": 0.01, "epoch": 0.1, "step": max_step})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_results(results: Path, spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write runs/, summary.tsv and summary_by_pattern.tsv; returns the --runs mapping.

    spec: {run: {"model": {...}, "steps": [...], "successes": {step: n} (scored steps),
    "empty": [steps with an empty samples file], "log": "kl" | "nokl" | "empty" | None}}.
    """
    records = []
    for run, s in spec.items():
        run_dir = results / "runs" / run
        for step, wins in s["successes"].items():
            samples = synthetic_samples(run, step, wins)
            write_jsonl(run_dir / "samples" / f"step-{step}.jsonl", samples)
            records.append(json.loads(json.dumps(score.score(samples, run, step))))
        for step in s.get("empty", []):
            write_jsonl(run_dir / "samples" / f"step-{step}.jsonl", [])
        log = s.get("log", "nokl")
        if log in {"kl", "nokl"}:
            write_jsonl(run_dir / "train_log.jsonl", train_log(max(s["steps"]), kl=log == "kl"))
        elif log == "empty":
            write_jsonl(run_dir / "train_log.jsonl", [])
    summary, by_pattern = score.aggregate(records)
    summary.to_csv(results / "summary.tsv", sep="\t", index=False, na_rep="NA")
    by_pattern.to_csv(results / "summary_by_pattern.tsv", sep="\t", index=False, na_rep="NA")
    return {run: {"steps": s["steps"], "model": s["model"]} for run, s in spec.items()}


SWEEP = {
    "qwen-a": {"model": QWEN, "steps": [0, 2, 4], "successes": {0: 2, 2: 6, 4: 12}, "log": "kl"},
    "tiny-b": {"model": TINY, "steps": [0, 2, 4], "successes": {0: 1, 2: 3, 4: 5}, "log": "nokl"},
}
PARTIAL = {
    # only step 0 scored, step 2 sampled but empty, step 4 never ran; empty training log
    "tiny-a": {
        "model": TINY,
        "steps": [0, 2, 4],
        "successes": {0: 3},
        "empty": [2],
        "log": "empty",
    },
    # nothing at all yet
    "tiny-b": {"model": TINY, "steps": [0, 2, 4], "successes": {}, "log": None},
}


def run_plots(results: Path, runs: dict, out: Path, report_cfg: dict | None = None) -> None:
    report.cli_plots(
        [
            "--summary", str(results / "summary.tsv"),
            "--by-pattern", str(results / "summary_by_pattern.tsv"),
            "--runs", json.dumps(runs),
            "--runs-dir", str(results / "runs"),
            "--report", json.dumps(report_cfg or {"seed_reference": True}),
            "--out-dir", str(out),
        ],
        prog="plots",
    )  # fmt: skip


def run_tables(results: Path, runs: dict, out: Path, n: int = 2) -> None:
    report.cli_tables(
        [
            "--summary", str(results / "summary.tsv"),
            "--runs", json.dumps(runs),
            "--runs-dir", str(results / "runs"),
            "--report", json.dumps({"examples_per_checkpoint": n}),
            "--out-dir", str(out),
        ],
        prog="tables",
    )  # fmt: skip


def svg_text(path: Path) -> str:
    """The text of an SVG's <text> elements (kept as text: svg.fonttype none), unescaped."""
    import html

    body = path.read_text(encoding="utf-8")
    assert body.lstrip().startswith(("<?xml", "<svg"))
    return html.unescape(" ".join(re.findall(r"<text[^>]*>(.*?)</text>", body, re.DOTALL)))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    results = tmp_path_factory.mktemp("sweep")
    runs = write_results(results, SWEEP)
    run_plots(results, runs, results / "plots")
    run_tables(results, runs, results / "tables")
    return results, runs


def test_every_figure_written_and_compares_runs(sweep: tuple[Path, dict]) -> None:
    results, _ = sweep
    for name in report.FIGURES.values():
        text = svg_text(results / "plots" / name)
        assert "qwen-a" in text and "tiny-b" in text, name  # hue = run: both in every legend
    success = svg_text(results / "plots" / "success.svg")
    assert "Success rate on held-out prompts (95% interval)" in success
    assert "pass@4" in success
    assert "qwen-a step 0 (base model)" in success and "tiny-b step 0 (base model)" in success
    assert report.SEED_LABEL in success  # a Qwen Hub run and seed_reference on
    assert "Missing" not in success
    quality = svg_text(results / "plots" / "format_length.svg")
    for title in ("Format rate", "Completion length", "Truncated completions"):
        assert title in quality
    aha = svg_text(results / "plots" / "behaviours.svg")
    for title in ("Self-verification", "Backtracking", "Candidate equations tried"):
        assert title in aha
    patterns = svg_text(results / "plots" / "success_by_pattern.svg")
    for pattern in PATTERNS:
        assert f"pattern {pattern} (n = 48)" in patterns  # 2 prompts x 4 samples x 3 steps x 2 runs


def test_training_figure_has_a_panel_per_reward_function(sweep: tuple[Path, dict]) -> None:
    results, _ = sweep
    text = svg_text(results / "plots" / "training.svg")
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


def test_read_train_log_keeps_step_metrics_only(tmp_path: Path) -> None:
    path = tmp_path / "train_log.jsonl"
    write_jsonl(path, train_log(3, kl=False))
    path.write_text(path.read_text() + "not json\n")
    log = report.read_train_log(path, "r")
    assert sorted(set(log["step"])) == [1, 2, 3]  # the final summary entry is not a step
    assert "entropy" not in set(log["metric"])  # None dropped
    assert "train_runtime" not in set(log["metric"])
    eq = log[log["metric"] == "rewards/equation_reward/mean"].sort_values("step")
    assert eq["value"].tolist() == pytest.approx([0.05, 0.10, 0.15])
    panels = [key for key, _ in report.train_panels(log)]
    assert panels[:2] == ["rewards/equation_reward/mean", "rewards/format_reward/mean"]
    assert "kl" in panels
    assert report.read_train_log(tmp_path / "absent.jsonl", "r").empty


def test_summary_table_has_a_row_per_run_and_step(sweep: tuple[Path, dict]) -> None:
    results, runs = sweep
    page = (results / "tables" / "summary.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td>", page)
    assert rows == [(run, str(s)) for run in runs for s in runs[run]["steps"]]
    # qwen-a step 4: 12 of 24 completions correct; Wilson 95% [31.4%, 68.6%]
    assert "50.0% [31.4%, 68.6%]" in page
    assert 'class="missing"' not in page


def test_examples_side_by_side_and_escaped(sweep: tuple[Path, dict]) -> None:
    results, _ = sweep
    for run, spec in SWEEP.items():
        page = (results / "tables" / f"examples-{run}.html").read_text(encoding="utf-8")
        assert "<script" not in page.lower() and "<img" not in page.lower()
        assert "onerror=alert(1)&gt;" in page and "&lt;script&gt;" in page
        assert "default-src &#x27;none&#x27;" in page or "default-src 'none'" in page
        for step, wins in spec["successes"].items():
            assert f"{run} · step {step}" in page
            assert f"{wins} of 24 completions successful" in page
        # 2 examples per side per step, each with its answer and rewards
        wins = spec["successes"].values()
        assert page.count('<td class="ok">') == sum(min(w, 2) for w in wins)
        assert page.count('<td class="fail">') == sum(min(24 - w, 2) for w in wins)
        assert page.count("no other successful completion at this step") == sum(
            w == 1 for w in wins
        )
        assert page.count('answer: <span class="answer">3 * 5</span>') == sum(
            min(w, 2) for w in wins
        )
        assert "equation reward 1.0" in page and "equation reward 0.0" in page
        assert '<span class="tag">verify</span><span class="tag">backtrack</span>' in page


def test_pick_examples_reproducible_distinct_prompts() -> None:
    samples = synthetic_samples("r", 0, successes=9, n_prompts=6, k=4)  # prompts 0, 1 and one of 2
    good, bad = report.pick_examples(samples, 3, "r/0")
    assert all(report.is_success(s) for s in good) and not any(report.is_success(s) for s in bad)
    assert len({s["prompt_id"] for s in good}) == 3  # 3 distinct prompts hold successes
    assert len({s["prompt_id"] for s in bad}) == 3
    assert (good, bad) == report.pick_examples(samples, 3, "r/0")
    good4, _ = report.pick_examples(samples, 20, "r/0")
    assert len(good4) == 9  # no more than there are


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    results = tmp_path_factory.mktemp("partial")
    runs = write_results(results, PARTIAL)
    (results / "summary_by_pattern.tsv").unlink()
    run_plots(results, runs, results / "plots", {"seed_reference": True})
    run_tables(results, runs, results / "tables")
    return results, runs


def test_partial_figures_say_what_is_missing(partial: tuple[Path, dict]) -> None:
    results, _ = partial
    missing = "Missing (not run yet, or failed): tiny-a step 2, 4; tiny-b step 0, 2, 4"
    for name in ("success.svg", "format_length.svg", "behaviours.svg"):
        assert missing in svg_text(results / "plots" / name), name
    success = svg_text(results / "plots" / "success.svg")
    assert "tiny-a step 0 (base model)" in success
    assert report.SEED_LABEL not in success  # tiny runs only: the seed's numbers are not drawn
    training = svg_text(results / "plots" / "training.svg")
    assert training.count("no training log yet") == len(report.train_panels(
        report.read_train_log(Path("absent"), "x")
    ))  # fmt: skip
    assert "No training log yet (not run, or empty): tiny-a, tiny-b" in training
    patterns = svg_text(results / "plots" / "success_by_pattern.svg")
    assert "no success-by-pattern table" in patterns


def test_partial_tables_say_what_is_missing(partial: tuple[Path, dict]) -> None:
    results, _ = partial
    page = (results / "tables" / "summary.html").read_text(encoding="utf-8")
    assert re.findall(r'<tr class="missing"><td>([^<]+)</td><td>(\d+)</td>', page) == [
        ("tiny-a", "2"),
        ("tiny-a", "4"),
        ("tiny-b", "0"),
        ("tiny-b", "2"),
        ("tiny-b", "4"),
    ]
    a = (results / "tables" / "examples-tiny-a.html").read_text(encoding="utf-8")
    assert "3 of 24 completions successful" in a
    assert "(empty samples file)" in a  # step 2
    assert a.count("missing: no samples file") == 1  # step 4
    b = (results / "tables" / "examples-tiny-b.html").read_text(encoding="utf-8")
    assert b.count("missing: no samples file") == 3


def test_no_summary_at_all(tmp_path: Path) -> None:
    runs = {"tiny-a": {"steps": [0, 2], "model": TINY}}
    run_plots(tmp_path, runs, tmp_path / "plots")
    run_tables(tmp_path, runs, tmp_path / "tables")
    assert "no scored checkpoint yet" in svg_text(tmp_path / "plots" / "success.svg")
    page = (tmp_path / "tables" / "summary.html").read_text(encoding="utf-8")
    assert page.count('<tr class="missing">') == 2


def test_seed_reference_follows_config_and_model(tmp_path: Path) -> None:
    one = {"qwen-a": SWEEP["qwen-a"]}
    runs = write_results(tmp_path, one)
    run_plots(tmp_path, runs, tmp_path / "on", {"seed_reference": True})
    run_plots(tmp_path, runs, tmp_path / "off", {"seed_reference": False})
    assert report.SEED_LABEL in svg_text(tmp_path / "on" / "success.svg")
    assert report.SEED_LABEL not in svg_text(tmp_path / "off" / "success.svg")
    # a single run without KL (beta 0): the panel says why it is empty
    runs_nokl = write_results(tmp_path / "nokl", {"tiny-b": SWEEP["tiny-b"]})
    run_plots(tmp_path / "nokl", runs_nokl, tmp_path / "nokl" / "plots")
    assert "KL not logged" in svg_text(tmp_path / "nokl" / "plots" / "training.svg")


def test_share_axis_fits_small_rates_and_keeps_seed_stars_in_view() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 450], [0.03, 0.08])
    ax.fill_between([0, 450], [0.02, 0.06], [0.04, 0.10])
    report.fit_share_axis(ax)
    low, top = ax.get_ylim()
    assert 0.10 < top < 0.13 and low <= 0.0  # 3% and 8% are a third and two thirds up
    ax.scatter([100, 450], [0.25, 0.50])  # seed reference stars
    report.fit_share_axis(ax)
    assert 0.50 < ax.get_ylim()[1] < 0.6
    ax.plot([0, 450], [0.99, 1.0])  # a format rate: never past 100% (+ a margin)
    report.fit_share_axis(ax)
    assert ax.get_ylim()[1] == pytest.approx(1.02)
    plt.close(fig)


def test_environment_page_lists_versions(sweep: tuple[Path, dict]) -> None:
    from importlib import metadata

    page = (sweep[0] / "tables" / "environment.html").read_text(encoding="utf-8")
    for name in ("trl", "transformers", "torch", "snakemake"):
        assert f"<tr><th>{name}</th><td>{metadata.version(name)}</td></tr>" in page


def test_bad_runs_argument_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--runs"):
        report.parse_runs("[1, 2]")


def test_examples_without_successes_or_closing_tag(tmp_path: Path) -> None:
    samples = synthetic_samples("tiny-a", 0, successes=0, n_prompts=2, k=2)
    samples[0]["text"] = "1 + 2 = 3, no closing tag"  # truncated thinking: no </think>
    write_jsonl(tmp_path / "runs" / "tiny-a" / "samples" / "step-0.jsonl", samples)
    run = report.RunInfo("tiny-a", (0,), "tiny", "Qwen/Qwen2.5-3B-Instruct")
    page = report.examples_page(run, tmp_path / "runs", 4)  # all 4 failures are shown
    assert "the offline tiny model built by the workflow" in page and "Qwen" not in page
    assert "0 of 4 completions successful" in page
    assert page.count("no successful completion at this step") == 1
    assert "no other" not in page  # the failed column is full
    assert page.count('<td class="fail">') == 4
    assert page.count("after &lt;/think&gt;") == 3  # not for the unclosed completion
    assert page.count("(no &lt;/think&gt;)") == 1
    assert "1 + 2 = 3, no closing tag" in page
