"""The `tables` stage on synthetic results: summary, example completions, environment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aha import metrics, rewards, tables
from aha.report_inputs import RunInfo
from tests.test_report import (
    PARTIAL,
    SWEEP,
    TINY,
    samples_args,
    synthetic_samples,
    write_jsonl,
    write_results,
)


def run_tables(results: Path, runs: dict, out: Path, n: int = 2, seeds: dict | None = None) -> None:
    """The stage as rule tables runs it: every input and output path given."""
    pages = [
        arg for run in runs for arg in ("--examples-page", run, str(out / f"examples-{run}.html"))
    ]
    tables.cli(
        [
            "--summary", str(results / "summary.tsv"),
            *samples_args(results, runs, seeds),
            "--runs", json.dumps(runs),
            "--report", json.dumps({"examples_per_checkpoint": n}),
            "--summary-page", str(out / "summary.html"),
            "--environment-page", str(out / "environment.html"),
            *pages,
        ],
        prog="tables",
    )  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    results = tmp_path_factory.mktemp("sweep")
    runs = write_results(results, SWEEP)
    run_tables(results, runs, results / "tables")
    return results / "tables", runs


def test_summary_table_has_a_row_per_run_and_step(sweep: tuple[Path, dict]) -> None:
    out, runs = sweep
    page = (out / "summary.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td>", page)
    base = "base (every seed)"
    assert rows == [
        (run, base if s == 0 else "42", str(s)) for run in runs for s in runs[run]["steps"]
    ]
    # qwen-a step 4: 12 of 24 completions correct; Wilson 95% [31.4%, 68.6%]
    assert "50.0% [31.4%, 68.6%]" in page
    assert 'class="missing"' not in page


def test_examples_side_by_side_and_escaped(sweep: tuple[Path, dict]) -> None:
    out, _ = sweep
    for run, spec in SWEEP.items():
        page = (out / f"examples-{run}.html").read_text(encoding="utf-8")
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


def test_environment_page_lists_versions(sweep: tuple[Path, dict]) -> None:
    from importlib import metadata

    page = (sweep[0] / "environment.html").read_text(encoding="utf-8")
    for name in ("trl", "transformers", "torch", "snakemake"):
        assert f"<tr><th>{name}</th><td>{metadata.version(name)}</td></tr>" in page


def test_pick_examples_reproducible_distinct_prompts() -> None:
    samples = synthetic_samples("r", 0, successes=9, n_prompts=6, k=4)  # prompts 0, 1 and one of 2
    good, bad = tables.pick_examples(samples, 3, "r/0")
    assert all(map(metrics.is_success, good)) and not any(map(metrics.is_success, bad))
    assert len({s["prompt_id"] for s in good}) == 3  # 3 distinct prompts hold successes
    assert len({s["prompt_id"] for s in bad}) == 3
    assert (good, bad) == tables.pick_examples(samples, 3, "r/0")
    good4, _ = tables.pick_examples(samples, 20, "r/0")
    assert len(good4) == 9  # no more than there are


def test_partial_tables_say_what_is_missing(tmp_path: Path) -> None:
    runs = write_results(tmp_path, PARTIAL)
    run_tables(tmp_path, runs, tmp_path / "tables")
    page = (tmp_path / "tables" / "summary.html").read_text(encoding="utf-8")
    assert re.findall(r'<tr class="missing"><td>([^<]+)</td><td>–</td><td>(\d+)</td>', page) == [
        ("tiny-a", "2"),
        ("tiny-a", "4"),
        ("tiny-b", "0"),
        ("tiny-b", "2"),
        ("tiny-b", "4"),
    ]
    a = (tmp_path / "tables" / "examples-tiny-a.html").read_text(encoding="utf-8")
    assert "3 of 24 completions successful" in a
    assert "(empty samples file)" in a  # step 2
    assert a.count("missing: no samples file") == 1  # step 4
    b = (tmp_path / "tables" / "examples-tiny-b.html").read_text(encoding="utf-8")
    assert b.count("missing: no samples file") == 3


def test_no_summary_at_all(tmp_path: Path) -> None:
    run_tables(tmp_path, {"tiny-a": {"steps": [0, 2], "model": TINY}}, tmp_path / "tables")
    page = (tmp_path / "tables" / "summary.html").read_text(encoding="utf-8")
    assert page.count('<tr class="missing">') == 2


def test_examples_without_successes_or_closing_tag(tmp_path: Path) -> None:
    samples = synthetic_samples("tiny-a", 0, successes=0, n_prompts=2, k=2)
    samples[0]["text"] = "1 + 2 = 3, no closing tag"  # truncated thinking: no </think>
    write_jsonl(tmp_path / "step-0.jsonl", samples)
    run = RunInfo("tiny-a", (0, 2), "tiny", "Qwen/Qwen2.5-3B-Instruct")
    page = tables.examples_page(run, {0: tmp_path / "step-0.jsonl"}, 4)  # all 4 failures shown
    assert "the offline tiny model built by the workflow" in page and "Qwen" not in page
    assert "0 of 4 completions successful" in page
    assert page.count("no successful completion at this step") == 1
    assert "no other" not in page  # the failed column is full
    assert page.count('<td class="fail">') == 4
    assert page.count("after &lt;/think&gt;") == 3  # not for the unclosed completion
    assert page.count("(no &lt;/think&gt;)") == 1
    assert "1 + 2 = 3, no closing tag" in page
    assert page.count("no &lt;answer&gt;…&lt;/answer&gt; on one line") == 1
    assert "missing: no samples file given for this step" in page  # step 2: no path


def test_examples_show_the_answer_the_reward_scored(tmp_path: Path) -> None:
    """Two <answer> tags: the reward scores the first one-line one, and so does the page."""
    texts = [
        "3 * 5 = 15.</think>\n<answer>3 * 5</answer>\nor <answer>3 + 5</answer>",  # first right
        "Hmm.</think>\n<answer>5 + 7</answer> no: <answer>7 + 3 + 5</answer>",  # first wrong
        "<answer>\n7 * 5</answer></think>\n<answer>5 * 3</answer>",  # first spans lines
    ]
    samples = synthetic_samples("r", 0, successes=0, n_prompts=len(texts), k=1)
    for sample, text in zip(samples, texts, strict=True):
        sample["text"] = text
        sample["nums"], sample["target"] = [3, 5], 15
        sample["equation_reward"] = rewards.equation_reward([text], target=[15], nums=[[3, 5]])[0]
    assert [s["equation_reward"] for s in samples] == [1.0, 0.0, 1.0]
    write_jsonl(tmp_path / "step-0.jsonl", samples)
    page = tables.examples_page(RunInfo("r", (0,), "tiny", ""), {0: tmp_path / "step-0.jsonl"}, 3)
    cell = r'<td class="(ok|fail)">.*?answer: <span class="answer">(.*?)</span>'
    shown = re.findall(cell, page, re.DOTALL)
    assert sorted(shown) == [("fail", "5 + 7"), ("ok", "3 * 5"), ("ok", "5 * 3")]


def test_summary_table_with_three_seeds(tmp_path: Path) -> None:
    """A row per (run, seed, step), grouped by step; step 0 once, as every seed's baseline."""
    spec = {"tiny-b": {**SWEEP["tiny-b"], "seeds": [42, 43, 44]}}
    runs = write_results(tmp_path, spec)
    run_tables(tmp_path, runs, tmp_path / "tables", seeds={"tiny-b": [42, 43, 44]})
    page = (tmp_path / "tables" / "summary.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td>", page)
    assert rows == [("tiny-b", "base (every seed)", "0")] + [
        ("tiny-b", seed, step) for step in ("2", "4") for seed in ("42", "43", "44")
    ]
    assert "<th>seed</th>" in page
    # the examples page quotes the first seed (3 successes at step 2), step 0 from the base
    examples = (tmp_path / "tables" / "examples-tiny-b.html").read_text(encoding="utf-8")
    assert "3 of 24 completions successful" in examples
