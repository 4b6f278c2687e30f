"""The report's synthetic results and its inputs (`aha.report.inputs`).

The synthetic results (several runs, partial inputs, hostile text) are shared by test_plots,
test_tables and test_browser. They go through the real `aha.stages.score` code, so the numbers the
figures and tables show are the ones the pipeline would compute for these completions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aha import formats
from aha.report import inputs as report_inputs
from aha.stages import aggregate, score

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
QWEN = {"source": "hub", "name_or_path": "Qwen/Qwen2.5-3B-Instruct"}
TINY = {"source": "tiny", "name_or_path": "Qwen/Qwen2.5-3B-Instruct"}  # schema default name
PATTERNS = ("++", "+-", "-*")
# `aggregate` detail table -> its file under results/, as rule aggregate names them
DETAIL_FILES = {
    "by_size": "summary_by_size.tsv",
    "pass_at_k": "pass_at_k.tsv",
    "audit": "audit.tsv",
    "reflection_words": "reflection_words.tsv",
}


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
    """Write runs/, summary.tsv, summary_by_pattern.tsv, summary_across_seeds.tsv and the
    detail tables (DETAIL_FILES) in the workflow's layout; returns the --runs mapping.

    spec: {run: {"model": {...}, "steps": [...], "successes": {step: n} (scored steps),
    "empty": [steps with an empty samples file], "log": "kl" | "nokl" | "empty" | None,
    "seeds": [...] (default [42])}}. Step 0 is the run's one baseline (base/); every other
    step is scored once per seed (seed-S/), seed number i with n + i successes.
    """
    records = []
    for run, s in spec.items():
        seeds = s.get("seeds", [42])
        for step, wins in s["successes"].items():
            for i, seed in enumerate([None] if step == 0 else seeds):
                samples = synthetic_samples(run, step, wins + i)
                write_jsonl(sample_path(results, run, step, seed), samples)
                records.append(json.loads(json.dumps(score.score(samples, run, step, seed))))
        for step in s.get("empty", []):
            for seed in [None] if step == 0 else seeds:
                write_jsonl(sample_path(results, run, step, seed), [])
        log = s.get("log", "nokl")
        for seed in seeds:
            path = results / "runs" / run / f"seed-{seed}" / "train_log.jsonl"
            if log in {"kl", "nokl"}:
                write_jsonl(path, train_log(max(s["steps"]), kl=log == "kl"))
            elif log == "empty":
                write_jsonl(path, [])
    summary, by_pattern = aggregate.aggregate(records)
    summary.to_csv(results / "summary.tsv", sep="\t", index=False, na_rep="NA")
    by_pattern.to_csv(results / "summary_by_pattern.tsv", sep="\t", index=False, na_rep="NA")
    across = formats.across_seeds(summary)
    across.to_csv(results / "summary_across_seeds.tsv", sep="\t", index=False, na_rep="NA")
    for name, table in aggregate.details(records).items():
        table.to_csv(results / DETAIL_FILES[name], sep="\t", index=False, na_rep="NA")
    return {run: {"steps": s["steps"], "model": s["model"]} for run, s in spec.items()}


def sample_path(results: Path, run: str, step: int, seed: int | None) -> Path:
    """Where rule sample (a seed's checkpoint) or sample_base (step 0) writes its samples."""
    folder = "base" if seed is None else f"seed-{seed}"
    return results / "runs" / run / folder / "samples" / f"step-{step}.jsonl"


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


def runs_of(text: str) -> dict[str, report_inputs.RunInfo]:
    """The runs of a --runs text, as the stages read it."""
    return report_inputs.runs_from(json.loads(text))


def train_log_args(results: Path, runs: dict, seeds: dict | None = None) -> list[str]:
    """`--train-log RUN SEED PATH` per replicate, the paths rule train writes (as report.smk
    passes them); `seeds`: {run: [seeds]}, default [42] each."""
    logs = [
        (run, seed, results / "runs" / run / f"seed-{seed}" / "train_log.jsonl")
        for run in runs
        for seed in (seeds or {}).get(run, [42])
    ]
    return shlex.split(report_inputs.repeated("--train-log", logs))


def samples_args(results: Path, runs: dict, seeds: dict | None = None) -> list[str]:
    """`--samples RUN SEED STEP PATH` per samples file, as report.smk passes them: step 0 once
    per run from its baseline (SEED `base`), every other step once per seed; `seeds`: {run:
    [seeds]}, default [42] each."""
    files = [
        (run, "base" if step == 0 else seed, step, sample_path(results, run, step, seed))
        for run, spec in runs.items()
        for step in spec["steps"]
        for seed in ([None] if step == 0 else (seeds or {}).get(run, [42]))
    ]
    return shlex.split(report_inputs.repeated("--samples", files))


# ----------------------------------------------------------------------------- inputs


def test_read_train_log_keeps_step_metrics_only(tmp_path: Path) -> None:
    path = tmp_path / "train_log.jsonl"
    write_jsonl(path, train_log(3, kl=False))
    path.write_text(path.read_text() + "not json\n")
    log = report_inputs.read_train_log(path, "r")
    assert sorted(set(log["step"])) == [1, 2, 3]  # the final summary entry is not a step
    assert "entropy" not in set(log["metric"])  # None dropped
    assert "train_runtime" not in set(log["metric"])
    eq = log[log["metric"] == "rewards/equation_reward/mean"].sort_values("step")
    assert eq["value"].tolist() == pytest.approx([0.05, 0.10, 0.15])
    assert report_inputs.read_train_log(tmp_path / "absent.jsonl", "r").empty
    assert report_inputs.read_train_log(None, "r").empty  # no --train-log for the run


def test_read_samples_skips_and_counts_what_cannot_be_shown(tmp_path: Path) -> None:
    path = tmp_path / "step-0.jsonl"
    good = synthetic_samples("r", 0, successes=1, n_prompts=1, k=2)
    no_reward = {**good[0], "equation_reward": None}  # success cannot be decided
    no_text = {k: v for k, v in good[0].items() if k != "text"}
    write_jsonl(path, [*good, no_reward, no_text])
    path.write_text(path.read_text() + "[1, 2]\n{truncated")
    samples, skipped = report_inputs.read_samples(path)
    assert samples == good
    assert skipped == 4
    assert report_inputs.read_samples(tmp_path / "absent.jsonl") == ([], 0)


def test_bad_runs_argument_refused() -> None:
    with pytest.raises(ValueError, match="--runs"):
        runs_of("[1, 2]")


SWEEP_CONFIG = {
    "model": {"source": "hub", "name_or_path": "Qwen/Qwen2.5-3B-Instruct", "dtype": "auto"},
    "checkpoints": [50, 100],
    "runs": {
        "a": {"mode": "zero3", "grpo": {"max_steps": 100, "learning_rate": 1e-6}},
        "b": {
            "mode": "cpu",
            "grpo": {"max_steps": 2},
            "checkpoints": [2],
            "model": {"source": "tiny"},
            "seeds": [7, 8],
        },
    },
}


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as the rules see it: checked against the schema, its defaults filled."""
    from aha.config import validate_section

    return validate_section((), config)


def test_runs_argument_round_trips_through_runs_from() -> None:
    config = validated(SWEEP_CONFIG)
    runs = runs_of(json.dumps(report_inputs.runs_argument(config)))
    # no `seeds` and no seed anywhere: the one replicate has the schema's top-level seed, 42
    assert runs == {
        "a": report_inputs.RunInfo("a", (0, 50, 100), "hub", QWEN["name_or_path"], (42,)),
        "b": report_inputs.RunInfo("b", (0, 2), "tiny", QWEN["name_or_path"], (7, 8)),
    }
    assert runs["a"].seed_comparable and not runs["b"].seed_comparable
    assert report_inputs.steps_and_seeds(config) == {
        "a": ([0, 50, 100], [42]),
        "b": ([0, 2], [7, 8]),
    }


def test_front_page_overview_and_seed_reference_follow_the_config() -> None:
    """What workflow.rst lists per run (the effective model and checkpoints) and whether the
    success caption speaks of the seed's points: the same answers the stages give."""
    config = validated(SWEEP_CONFIG)
    overview = report_inputs.runs_overview(config)
    assert [(r["name"], r["mode"], r["model"]["source"], r["checkpoints"]) for r in overview] == [
        ("a", "zero3", "hub", [50, 100]),
        ("b", "cpu", "tiny", [2]),
    ]
    assert overview[0]["grpo"]["learning_rate"] == 1e-6
    assert report_inputs.seed_reference_drawn(config)  # a Qwen Hub run, option on by default
    off = validated({**SWEEP_CONFIG, "report": {"seed_reference": False}})
    assert not report_inputs.seed_reference_drawn(off)
    tiny_only = validated({**SWEEP_CONFIG, "runs": {"b": SWEEP_CONFIG["runs"]["b"]}})
    assert not report_inputs.seed_reference_drawn(tiny_only)


def test_report_options_take_the_schema_defaults() -> None:
    """The `report` section as a stage reads it: given keys kept, the others the schema's."""
    from aha.config import load_schema

    defaults = {
        key: spec["default"]
        for key, spec in load_schema()["properties"]["report"]["properties"].items()
    }
    assert report_inputs.report_options({}) == report_inputs.ReportOptions(**defaults)
    options = report_inputs.report_options({"seed_reference": False})
    assert not options.seed_reference
    assert options.examples_per_checkpoint == defaults["examples_per_checkpoint"]
    with pytest.raises(ValueError, match=r"report\.colour: unknown key"):
        report_inputs.report_options({"colour": "red"})
    with pytest.raises(ValueError, match=r"report\.explorer_per_checkpoint"):
        report_inputs.report_options({"explorer_per_checkpoint": -1})


@pytest.mark.parametrize(
    ("module", "argv", "option"),
    [
        ("plots", ["--summary", "s", "--runs", "{}", "--report", '{"colour": 1}'], "--report"),
        ("tables", ["--summary", "s", "--runs", "[1]", "--summary-page", "p"], "--runs"),
        ("compute", ["--runs", "not json", "--table", "t", "--figure", "f"], "--runs"),
    ],
)
def test_bad_report_or_runs_argument_is_a_usage_error(
    module: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --report the schema refuses, or a --runs that is no JSON object: argparse's usage
    error naming the option, before anything is read or written."""
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"aha.stages.{module}").cli(argv, prog=module)
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_aggregate_fails_in_one_line(tmp_path: Path) -> None:
    """A scores file that cannot be read, or a (run, seed, step) scored twice: one line."""
    with pytest.raises(SystemExit, match=r"^aggregate: .*missing\.json"):
        aggregate.cli(["--scores", str(tmp_path / "missing.json"), "--out", "o.tsv"], "aggregate")
    record = json.dumps(score.score(synthetic_samples("r", 0, 1), "r", 0))
    (tmp_path / "a.json").write_text(record)
    (tmp_path / "b.json").write_text(record)
    scores = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(SystemExit, match=r"^aggregate: several score files"):
        aggregate.cli(["--scores", *scores, "--out", str(tmp_path / "o.tsv")], "aggregate")
    assert not (tmp_path / "o.tsv").exists()


def test_report_code_imports_no_stage_and_stages_import_no_stage() -> None:
    """The report wing builds on formats and task only; each report stage imports no other
    stage (fresh interpreters: what a module pulls in on its own)."""
    probes = {
        "aha.report.figures": (),
        "aha.report.pages": (),
        "aha.report.inputs": (),
        "aha.report.explorer": (),
        "aha.report.breakdowns": (),
        "aha.stages.plots": ("aha.stages.plots",),
        "aha.stages.tables": ("aha.stages.tables",),
        "aha.stages.compute": ("aha.stages.compute",),
        "aha.stages.aggregate": ("aha.stages.aggregate",),
    }
    for module, own in probes.items():
        code = (
            f"import sys, {module}; print(sorted(m for m in sys.modules "
            f"if m.startswith('aha.stages.') and m not in {own!r}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]", f"{module} imports {out.strip()}"


def test_repeated_paths_round_trip_and_refuse_strays() -> None:
    """What report.smk writes with `repeated`, the stages read back: odd names survive."""
    import argparse

    runs = runs_of('{"a b": {"steps": [0, 2]}, "c": {"steps": [0]}}')
    logs = [("a b", 42, "results/runs/a b/seed-42/train_log.jsonl"), ("a b", 7, "l'7.jsonl")]
    files = [("a b", "base", 0, "s-0.jsonl"), ("a b", 7, 2, "s'2.jsonl"), ("c", "base", 0, "s")]
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-log", nargs=3, action="append")
    parser.add_argument("--examples-page", nargs=2, action="append")
    parser.add_argument("--samples", nargs=4, action="append")
    pages = [("a b", "results/tables/examples-a b.html"), ("c", "e.html")]
    command = report_inputs.repeated("--train-log", logs) + " "
    command += report_inputs.repeated("--examples-page", pages) + " "
    command += report_inputs.repeated("--samples", files)
    args = parser.parse_args(shlex.split(command))
    by_seed = report_inputs.paths_by_run_step("--train-log", args.train_log, runs, "seed")
    assert by_seed == {"a b": {42: Path(logs[0][2]), 7: Path("l'7.jsonl")}}
    assert report_inputs.paths_by_run("--examples-page", args.examples_page, runs) == {
        run: Path(p) for run, p in pages
    }
    samples = report_inputs.samples_by_run("--samples", args.samples, runs)
    assert samples == {
        "a b": {(None, 0): Path("s-0.jsonl"), (7, 2): Path("s'2.jsonl")},
        "c": {(None, 0): Path("s")},
    }
    with pytest.raises(ValueError, match="--train-log x: not a run of --runs"):
        report_inputs.paths_by_run("--train-log", [["x", "p"]], runs)
    with pytest.raises(ValueError, match="given twice"):
        report_inputs.paths_by_run("--train-log", [["c", "p"], ["c", "q"]], runs)
    with pytest.raises(ValueError, match="--train-log c 42: given twice"):
        report_inputs.paths_by_run_step("--train-log", [["c", "42", "p"], ["c", "42", "q"]], runs)
    with pytest.raises(ValueError, match="--train-log c x: the seed is not an integer"):
        report_inputs.paths_by_run_step("--train-log", [["c", "x", "p"]], runs, "seed")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["x", "base", "0", "p"]], r"^--samples x: not a run of --runs \(have: a b, c\)$"),
        (
            [["c", "base", "0", "p"], ["c", "base", "0", "q"]],
            r"^--samples c base 0: given twice$",
        ),
        ([["a b", "42", "2", "p"], ["a b", "42", "2", "q"]], "^--samples a b 42 2: given twice$"),
        ([["a b", "42", "last", "p"]], "^--samples a b 42 last: the step is not an integer$"),
        ([["a b", "42", "4", "p"]], r"step 4 is not a step of a b \(steps: 0, 2\)$"),
        ([["a b", "first", "2", "p"]], "the seed is neither an integer nor 'base'$"),
        ([["a b", "base", "2", "p"]], "step 0 is sampled once per run, as seed 'base'"),
        ([["a b", "42", "0", "p"]], "step 0 is sampled once per run, as seed 'base'"),
    ],
)
def test_bad_samples_entries_refused(rows: list[list[str]], message: str) -> None:
    """A samples file the page would silently drop, or show twice, stops the stage."""
    runs = runs_of('{"a b": {"steps": [0, 2]}, "c": {"steps": [0]}}')
    with pytest.raises(ValueError, match=message):
        report_inputs.samples_by_run("--samples", rows, runs)


def test_missing_steps_and_run_order() -> None:
    import pandas as pd

    runs = runs_of('{"b": {"steps": [0, 2, 4]}, "a": {"steps": [0]}}')
    summary = pd.DataFrame({"run": ["b", "b", "z"], "step": [0, 4, 0]})
    missing = report_inputs.missing_steps(summary, runs)
    assert missing == {"b": [2], "a": [0]}
    assert report_inputs.describe_missing(report_inputs.missing_scores(summary, runs), runs) == (
        "Missing (not run yet, or failed): b step 2; a step 0"
    )
    assert report_inputs.run_order(summary, runs) == ["b", "a", "z"]  # config order, then data


def test_missing_scores_name_the_seed() -> None:
    """Step 0 once per run; every later step once per seed: one seed lost at a step is said."""
    import pandas as pd

    runs = runs_of('{"r": {"steps": [0, 50, 100], "seeds": [42, 43]}}')
    summary = pd.DataFrame({"run": ["r"] * 4, "seed": [None, 42, 43, 42], "step": [0, 50, 50, 100]})
    missing = report_inputs.missing_scores(summary, runs)
    assert missing == {"r": [(100, 43)]}
    assert report_inputs.missing_steps(summary, runs) == {"r": [100]}
    assert report_inputs.describe_missing(missing, runs) == (
        "Missing (not run yet, or failed): r step 100 (seed 43)"
    )
    no_base = summary[summary["step"] > 0]
    assert report_inputs.missing_scores(no_base, runs) == {"r": [(0, None), (100, 43)]}
    assert report_inputs.describe_missing(
        report_inputs.missing_scores(summary[:1], runs), runs
    ) == ("Missing (not run yet, or failed): r step 50, 100")
