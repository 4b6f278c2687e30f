"""The `tables` stage on synthetic results: summary, example completions, environment."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from aha.report import explorer, pages
from aha.report.inputs import RunInfo
from aha.stages import tables
from aha.task import metrics, rewards
from tests.unit.test_report import (
    PARTIAL,
    SWEEP,
    TINY,
    samples_args,
    synthetic_samples,
    write_jsonl,
    write_results,
)


def run_tables(
    results: Path,
    runs: dict,
    out: Path,
    n: int = 2,
    seeds: dict | None = None,
    per_checkpoint: int = 10,
) -> None:
    """The stage as rule tables runs it: every input and output path given."""
    report = {"examples_per_checkpoint": n, "explorer_per_checkpoint": per_checkpoint}
    pages = [
        arg for run in runs for arg in ("--examples-page", run, str(out / f"examples-{run}.html"))
    ]
    tables.cli(
        [
            "--summary", str(results / "summary.tsv"),
            *samples_args(results, runs, seeds),
            "--runs", json.dumps(runs),
            "--report", json.dumps(report),
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


def static_part(page: str) -> str:
    """The tables shown without JavaScript (the first seed's examples)."""
    return page[page.index('<div id="static">') : page.index('<script type="application/json"')]


def inputs_part(page: str) -> str:
    """The table of samples files, what each holds and what the explorer embeds."""
    return page[page.index("<h2>Samples files</h2>") : page.index('<div id="explorer"')]


def embedded(page: str) -> list[dict]:
    """The explorer's completions, read back from the page's JSON data block."""
    found = re.findall(r'<script type="application/json" id="examples-data">(.*?)</script>', page)
    assert len(found) == 1
    return json.loads(found[0])["items"]


def test_examples_side_by_side_and_escaped(sweep: tuple[Path, dict]) -> None:
    out, _ = sweep
    for run, spec in SWEEP.items():
        page = (out / f"examples-{run}.html").read_text(encoding="utf-8")
        static = static_part(page)
        assert "<script" not in static.lower() and "<img" not in static.lower()
        assert "onerror=alert(1)&gt;" in static and "&lt;script&gt;" in static
        assert "<img" not in page.lower() and page.lower().count("<script") == 2  # data, ours
        for step, wins in spec["successes"].items():
            assert f"{run} · step {step}" in static
            assert f"{wins} of 24 completions successful" in static
        # 2 examples per side per step, each with its answer and rewards
        wins = spec["successes"].values()
        assert static.count('<td class="ok">') == sum(min(w, 2) for w in wins)
        assert static.count('<td class="fail">') == sum(min(24 - w, 2) for w in wins)
        assert static.count("no other successful completion at this step") == sum(
            w == 1 for w in wins
        )
        assert static.count('answer: <span class="answer">3 * 5</span>') == sum(
            min(w, 2) for w in wins
        )
        assert "equation reward 1.0" in static and "equation reward 0.0" in static
        assert '<span class="tag">verify</span><span class="tag">backtrack</span>' in static
        assert "<noscript>" in page


def test_environment_page_lists_versions(sweep: tuple[Path, dict]) -> None:
    from importlib import metadata

    page = (sweep[0] / "environment.html").read_text(encoding="utf-8")
    for name in ("trl", "transformers", "torch", "snakemake"):
        assert f"<tr><th>{name}</th><td>{metadata.version(name)}</td></tr>" in page


def test_pick_examples_reproducible_distinct_prompts() -> None:
    samples = synthetic_samples("r", 0, successes=9, n_prompts=6, k=4)  # prompts 0, 1 and one of 2
    good, bad = explorer.pick_examples(samples, 3, "r/0")
    assert all(map(metrics.is_success, good)) and not any(map(metrics.is_success, bad))
    assert len({s["prompt_id"] for s in good}) == 3  # 3 distinct prompts hold successes
    assert len({s["prompt_id"] for s in bad}) == 3
    assert (good, bad) == explorer.pick_examples(samples, 3, "r/0")
    good4, bad4 = explorer.pick_examples(samples, 20, "r/0")
    assert len(good4) == 9  # no more than there are
    assert good4[:3] == good and bad4[:3] == bad  # the static tables quote the explorer's first


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
    assert "3 of 24 completions successful" in static_part(a)
    for part in (static_part(a), inputs_part(a)):
        assert part.count("(empty samples file)") == 1  # step 2
        assert part.count("missing: no samples file") == 1  # step 4
    assert inputs_part(a).count('<tr class="missing">') == 2
    assert {(e["seed"], e["step"]) for e in embedded(a)} == {("base", 0)}
    b = (tmp_path / "tables" / "examples-tiny-b.html").read_text(encoding="utf-8")
    assert static_part(b).count("missing: no samples file") == 3
    assert inputs_part(b).count("missing: no samples file") == 3
    assert embedded(b) == []


def test_no_summary_at_all(tmp_path: Path) -> None:
    run_tables(tmp_path, {"tiny-a": {"steps": [0, 2], "model": TINY}}, tmp_path / "tables")
    page = (tmp_path / "tables" / "summary.html").read_text(encoding="utf-8")
    assert page.count('<tr class="missing">') == 2


def test_examples_without_successes_or_closing_tag(tmp_path: Path) -> None:
    samples = synthetic_samples("tiny-a", 0, successes=0, n_prompts=2, k=2)
    samples[0]["text"] = "1 + 2 = 3, no closing tag"  # truncated thinking: no </think>
    write_jsonl(tmp_path / "step-0.jsonl", samples)
    run = RunInfo("tiny-a", (0, 2), "tiny", "Qwen/Qwen2.5-3B-Instruct")
    page = explorer.examples_page(run, {(None, 0): tmp_path / "step-0.jsonl"}, 4, 10)
    assert "the offline tiny model built by the workflow" in page and "Qwen" not in page
    static = static_part(page)
    assert "0 of 4 completions successful" in static
    assert static.count("no successful completion at this step") == 1
    assert "no other" not in static  # the failed column is full
    assert static.count('<td class="fail">') == 4
    assert static.count("after &lt;/think&gt;") == 3  # not for the unclosed completion
    assert static.count("(no &lt;/think&gt;)") == 1
    assert "1 + 2 = 3, no closing tag" in static
    assert static.count("no &lt;answer&gt;…&lt;/answer&gt; on one line") == 1
    assert "missing: no samples file given for this step" in static  # step 2: no path
    unclosed = [e for e in embedded(page) if e["flags"]["no_think_end"]]
    assert [(e["think"], e["after"], e["answer"]) for e in unclosed] == [
        ("1 + 2 = 3, no closing tag", None, None)
    ]
    assert unclosed[0]["no_answer"] == "no <answer>…</answer> on one line"


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
    run = RunInfo("r", (0,), "tiny", "")
    page = explorer.examples_page(run, {(None, 0): tmp_path / "step-0.jsonl"}, 3, 3)
    cell = r'<td class="(ok|fail)">.*?answer: <span class="answer">(.*?)</span>'
    shown = re.findall(cell, page, re.DOTALL)
    assert sorted(shown) == [("fail", "5 + 7"), ("ok", "3 * 5"), ("ok", "5 * 3")]
    items = sorted(("ok" if e["ok"] else "fail", e["answer"]) for e in embedded(page))
    assert items == sorted(shown)


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
    # the static tables quote the first seed (3 successes at step 2), step 0 from the base
    examples = (tmp_path / "tables" / "examples-tiny-b.html").read_text(encoding="utf-8")
    assert "3 of 24 completions successful" in static_part(examples)
    assert "4 of 24 completions successful" not in static_part(examples)  # seed 43's


# ----------------------------------------------------------------------------- the explorer


def explorer_pages(tmp_path: Path, seeds: list[int], n: int = 2, per: int = 4) -> Path:
    """The SWEEP's tiny-b run with `seeds` replicates, its pages written to tmp_path/tables."""
    runs = write_results(tmp_path, {"tiny-b": {**SWEEP["tiny-b"], "seeds": seeds}})
    run_tables(tmp_path, runs, tmp_path / "tables", n, {"tiny-b": seeds}, per)
    return tmp_path / "tables" / "examples-tiny-b.html"


@pytest.mark.parametrize("seeds", [[42], [42, 43, 44]])
def test_explorer_embeds_every_seed_and_step(tmp_path: Path, seeds: list[int]) -> None:
    """Per (seed, step) up to `per` successes and failures, each flagged as the numbers count
    it; the menus offer every step and seed, `base` for the shared step 0."""
    page = explorer_pages(tmp_path, seeds).read_text(encoding="utf-8")
    items = embedded(page)
    successes = SWEEP["tiny-b"]["successes"]  # step 0 once; seed number i: n + i successes
    groups = [("base", 0, successes[0])] + [
        (str(seed), step, successes[step] + i) for step in (2, 4) for i, seed in enumerate(seeds)
    ]
    assert list(dict.fromkeys((e["seed"], e["step"]) for e in items)) == [g[:2] for g in groups]
    for seed, step, wins in groups:
        mine = [e for e in items if (e["seed"], e["step"]) == (seed, step)]
        assert sum(e["ok"] for e in mine) == min(wins, 4)
        assert sum(not e["ok"] for e in mine) == min(24 - wins, 4)
        # synthetic_samples: completion i (prompt i // 4, sample i % 4) succeeds iff i < wins
        for e in mine:
            prompt, sample = map(int, re.search(r"prompt (\d+) / sample (\d+)", e["task"]).groups())
            assert e["ok"] == (4 * prompt + sample < wins)
            assert e["flags"]["truncated"] == ((4 * prompt + sample) % 5 == 0)
        assert len({e["task"] for e in mine if e["ok"]}) == min(wins, 4)  # distinct prompts
    inputs = inputs_part(page)
    for seed, step, wins in groups:
        assert f"<tr><td>{seed}</td><td>{step}</td><td>24</td><td>{wins}</td>" in inputs
    assert re.findall(r'<select id="f-seed">(.*?)</select>', page) == [
        "".join(f'<option value="{s}">{s}</option>' for s in ["all", "base", *map(str, seeds)])
    ]
    steps = re.findall(r'<select id="f-step">(.*?)</select>', page)[0]
    assert re.findall(r'value="(\w+)"', steps) == ["all", "0", "2", "4"]
    assert len(items) == sum(min(w, 4) + min(24 - w, 4) for *_, w in groups)


def test_explorer_behaviour_flags_of_known_texts(tmp_path: Path) -> None:
    """The filters' flags: aha.task.behaviours' verify and backtrack, any R1 reflection word,
    the file's truncated, and an unclosed thinking."""
    texts = {
        "Let me check: 3 * 5 = 15.</think>\n<answer>3 * 5</answer>": (1, 0, 1, 0, 0),
        "Try 3 + 5 = 8. Wait, 3 * 5 = 15</think>\n<answer>3 * 5</answer>": (0, 1, 1, 0, 0),
        "However, 3 * 5 = 15.</think>\n<answer>3 * 5</answer>": (0, 0, 1, 0, 0),
        "3 + 5 = 8 so 8 + 7 = 15 and": (0, 0, 0, 1, 1),
        "3 * 5 = 15.</think> but wait, let me check <answer>3 * 5</answer>": (0, 0, 0, 0, 0),
    }
    samples = synthetic_samples("r", 2, successes=0, n_prompts=len(texts), k=1)
    for sample, text in zip(samples, texts, strict=True):
        sample["text"], sample["truncated"] = text, text.endswith("and")
    write_jsonl(tmp_path / "step-2.jsonl", samples)
    run = RunInfo("r", (0, 2), "tiny", "")
    page = explorer.examples_page(run, {(7, 2): tmp_path / "step-2.jsonl"}, 1, 10)
    names = ("verify", "backtrack", "reflects", "truncated", "no_think_end")
    items = embedded(page)
    assert {(e["seed"], e["step"]) for e in items} == {("7", 2)}
    found = {e["think"] + ("" if e["after"] is None else "</think>" + e["after"]): e for e in items}
    assert {t: tuple(int(found[t]["flags"][n]) for n in names) for t in texts} == texts
    assert found[list(texts)[1]]["tags"] == ["backtrack", "reflects: wait ×1", "2 candidates"]


def test_hostile_text_stays_inside_the_json(tmp_path: Path) -> None:
    """A completion that closes the data block and opens a script stays a JSON string."""
    hostile = "</script><script>alert(1)</script><!-- & </SCRIPT >"
    samples = synthetic_samples("r", 0, successes=1, n_prompts=1, k=2)
    samples[0]["text"] = hostile + "</think>\n<answer>" + hostile + "</answer>"
    samples[1]["pattern"] = hostile
    write_jsonl(tmp_path / "step-0.jsonl", samples)
    page = explorer.examples_page(
        RunInfo("r", (0,), "tiny", ""), {(None, 0): tmp_path / "step-0.jsonl"}, 1, 5
    )
    assert page.count("</script>") == 2 and page.lower().count("</script") == 2  # ours
    assert page.lower().count("<script") == 2 and "<!--" not in page
    start = page.index('id="examples-data">') + len('id="examples-data">')
    assert not set(page[start : page.index("</script>", start)]) & set("<>&")
    items = embedded(page)
    assert items[0]["think"] == hostile and items[0]["answer"] == hostile
    assert hostile in items[1]["task"]
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in static_part(page)


def test_csp_admits_exactly_the_inline_script(sweep: tuple[Path, dict]) -> None:
    """The examples page's policy names the sha256 of its one inline script; the other pages
    allow no script at all."""
    out, _ = sweep
    page = (out / "examples-tiny-b.html").read_text(encoding="utf-8")
    csp = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert len(csp) == 1 and len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert csp[0] == (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    )
    assert "innerHTML" not in scripts[0] and "eval" not in scripts[0]
    for name in ("summary.html", "environment.html"):
        other = (out / name).read_text(encoding="utf-8")
        assert f'content="{pages.CSP}"' in other and "script-src" not in other
        assert "<script" not in other


def test_bad_samples_entry_refused_by_the_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {"tiny-a": {"steps": [0, 2], "model": TINY}}
    bad = ["--samples", "tiny-a", "42", "two", str(tmp_path / "s.jsonl")]
    with pytest.raises(SystemExit) as exit_:
        tables.cli(
            ["--summary", str(tmp_path / "summary.tsv"), *bad, "--runs", json.dumps(runs),
             "--summary-page", str(tmp_path / "s.html"),
             "--environment-page", str(tmp_path / "e.html")],
            prog="tables",
        )  # fmt: skip
    assert exit_.value.code == 2
    assert "--samples tiny-a 42 two: the step is not an integer" in capsys.readouterr().err
    assert not (tmp_path / "s.html").exists()


def test_summary_page_marks_the_missing_seed() -> None:
    """Three seeds configured, seed 43 unscored at step 4: its row is marked, with its seed."""
    import pandas as pd

    from aha.formats import SUMMARY_COLUMNS
    from aha.report.inputs import runs_from

    runs = runs_from({"r": {"steps": [0, 4], "seeds": [42, 43, 44]}})

    rows = [
        dict.fromkeys(SUMMARY_COLUMNS)
        | {"run": "r", "seed": seed, "step": step, "n_prompts": 1, "n_completions": 4, "k": 4}
        for seed, step in ((None, 0), (42, 4), (44, 4))
    ]
    page = tables.summary_table(pd.DataFrame(rows), runs)
    assert re.findall(r'<tr class="missing"><td>r</td><td>([^<]+)</td><td>(\d+)</td>', page) == [
        ("43", "4")
    ]
