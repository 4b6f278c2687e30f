"""`score` and `aggregate` stages on hand-made samples, every field checked by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aha.__main__ import main
from aha.formats import ACROSS_SEEDS_COLUMNS
from aha.stages.aggregate import BY_PATTERN_COLUMNS, DETAILS
from aha.stages.score import DETAIL_FIELDS, SUMMARY_COLUMNS
from aha.task.metrics import wilson_interval

# (prompt, equation reward, format reward, tokens, truncated, text); k = 3 samples per prompt.
# Behaviours by hand: A verify+backtrack, 2 candidates; B 1; C verify, 1; E backtrack, 2
# ("yes" after </think> is not thinking); the "" texts nothing.
A = "12 + 7 + 3 = 22, not 27; (12 - 7) * 3 = 15, yes.</think>\n<answer>(12 - 7) * 3</answer>"
B = " 55 + 36 - 7 - 19 = 65 </think>\n<answer>55 + 36 - 7 - 19</answer>"
C = "Let me check: 4 * 5 = 20. </think><answer>4 * 5</answer>"
E = "Wait, 8 + 9 = 17 is too small; 8 * 9 = 72 </think> yes"
ROWS = [
    (0, 1.0, 1.0, 5, False, A),
    (0, 0.0, 1.0, 20, False, B),
    (0, 0.0, 0.0, 30, False, ""),
    (1, 1.0, 1.0, 40, False, C),
    (1, 1.0, 1.0, 50, False, E),
    (1, 0.0, 1.0, 60, False, ""),
    (2, 0.0, 0.0, 70, False, ""),
    (2, 0.0, 0.0, 80, False, ""),
    (2, 0.0, 1.0, 128, True, ""),
]
PATTERNS = {0: "+-", 1: "*+", 2: None}
ROWS_JSON_CUT = '{"run": "a", "step": 0, "prompt_id": 0, "text": "unfinished'  # a cut-off line


def _write_samples(path: Path, rows=ROWS, run: str = "tiny-cpu", step: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    index: dict[int, int] = {}
    lines = []
    for pid, eq, fmt, tokens, truncated, text in rows:
        index[pid] = index.get(pid, -1) + 1
        lines.append(
            json.dumps(
                {
                    "run": run,
                    "step": step,
                    "prompt_id": pid,
                    "sample_index": index[pid],
                    "nums": [3, 7, 12],
                    "target": 27,
                    "pattern": PATTERNS[pid],
                    "text": text,
                    "num_tokens": tokens,
                    "truncated": truncated,
                    "format_reward": fmt,
                    "equation_reward": eq,
                }
            )
        )
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


def _score(samples: Path, out: Path, run: str | None = None, step: int | None = None) -> dict:
    """Score as the rules do, which pass their {run}, {step} and {seed} wildcards: by default
    those of a samples path .../runs/RUN/seed-S/samples/step-N.jsonl (rule score) or
    .../runs/RUN/base/samples/step-0.jsonl (rule score_base: no seed)."""
    folder = samples.parent.parent
    run = run or folder.parent.name
    step = int(samples.stem.removeprefix("step-")) if step is None else step
    seed = ["--seed", folder.name.removeprefix("seed-")] if folder.name.startswith("seed-") else []
    argv = ["--samples", str(samples), "--out", str(out), "--run", run, "--step", str(step)]
    main(["score", *argv, *seed])
    return json.loads(out.read_text())


def test_score_every_field_by_hand(tmp_path: Path) -> None:
    samples = _write_samples(
        tmp_path / "runs" / "tiny-cpu" / "seed-42" / "samples" / "step-50.jsonl"
    )
    got = _score(samples, tmp_path / "scores" / "step-50.json")
    assert list(got) == [*SUMMARY_COLUMNS, *DETAIL_FIELDS]
    expected = {
        "run": "tiny-cpu",
        "seed": 42,
        "step": 50,
        "n_prompts": 3,
        "n_completions": 9,
        "k": 3,
        "success_rate": 3 / 9,
        # Wilson 3/9: (1/3 + z²/18 ± z·sqrt(2/81 + z²/324)) / (1 + z²/9), worked out in bc
        "success_lo": 0.120583818387,
        "success_hi": 0.645797864420,
        "pass_at_1": (1 / 3 + 2 / 3 + 0) / 3,
        "pass_at_k": (1 + 1 + 0) / 3,  # pass@3 of 3 samples: any success
        "format_rate": 6 / 9,
        "numbers_ok_share": 1 / 9,  # only A's answer uses 3, 7 and 12; B and C use others
        "tokens_mean": 483 / 9,
        "tokens_median": 50.0,
        "truncated_share": 1 / 9,
        "verify_share": 2 / 9,  # A, C
        "backtrack_share": 2 / 9,  # A, E
        "candidates_mean": (2 + 1 + 1 + 2) / 9,
        "tokens_mean_correct": (5 + 40 + 50) / 3,  # A, C, E
        "tokens_mean_incorrect": (20 + 30 + 60 + 70 + 80 + 128) / 6,
        "reflection_words_mean": 2 / 9,  # C "check", E "Wait"; A's "yes" and E's are not words
        "reflection_share": 2 / 9,
        "success_with_reflection": 1.0,  # C and E both succeed
        "success_without_reflection": 1 / 7,  # A of the other seven
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["success_by_pattern"] == {
        "*+": pytest.approx(
            {
                "n": 3,
                "successes": 2,
                "success_rate": 2 / 3,
                "success_lo": 0.207659600802,
                "success_hi": 0.938508055280,
            }
        ),
        "+-": pytest.approx(
            {
                "n": 3,
                "successes": 1,
                "success_rate": 1 / 3,
                "success_lo": 0.061491944720,
                "success_hi": 0.792340399198,
            }
        ),
        "none": pytest.approx(
            {
                "n": 3,
                "successes": 0,
                "success_rate": 0.0,
                "success_lo": 0.0,
                "success_hi": 0.561497031755,
            }
        ),
    }


def test_score_details_by_hand(tmp_path: Path) -> None:
    """pass@k for every k, task size, the audit and the reflection words of ROWS, by hand."""
    samples = _write_samples(
        tmp_path / "runs" / "tiny-cpu" / "seed-1" / "samples" / "step-50.jsonl"
    )
    got = _score(samples, tmp_path / "scores.json")
    # prompts: 0 [T, F, F], 1 [T, T, F], 2 [F, F, F]; pass@2 of 1 in 3 = 1 - C(2,2)/C(3,2) = 2/3
    assert got["pass_at_k_curve"] == pytest.approx({"1": 1 / 3, "2": (2 / 3 + 1) / 3, "3": 2 / 3})
    assert got["pass_at_k_curve"]["3"] == pytest.approx(got["pass_at_k"])
    lo, hi = wilson_interval(3, 9)
    assert got["success_by_size"] == {
        "3": pytest.approx(
            {"n": 9, "successes": 3, "success_rate": 1 / 3, "success_lo": lo, "success_hi": hi}
        )
    }
    # A's answer (12 - 7) * 3 = 15 is an honest miss (its reward is the file's, not recomputed);
    # B and C use numbers not given and leave out given ones; E and the blanks have no answer
    assert got["audit"] == {
        "n": 9,
        "correct": 0,
        "no_answer": 6,
        "reuses_number": 0,
        "drops_number": 2,
        "foreign_number": 2,
        "bad_operator": 0,
        "unary_minus": 0,
        "echoes_target": 0,
        "unparsable": 0,
    }
    words = {w: 0.0 for w in got["reflection_words"]} | {"wait": 1 / 9, "check": 1 / 9}
    assert got["reflection_words"] == pytest.approx(words)


def test_score_empty_file_gives_nulls(tmp_path: Path) -> None:
    samples = _write_samples(
        tmp_path / "runs" / "r1" / "base" / "samples" / "step-0.jsonl", rows=[]
    )
    got = _score(samples, tmp_path / "out.json")
    assert got["run"] == "r1" and got["step"] == 0  # the rule's wildcards
    assert got["n_completions"] == 0 and got["n_prompts"] == 0
    assert got["success_by_pattern"] == {}
    assert {field: got[field] for field in DETAIL_FIELDS} == {f: {} for f in DETAIL_FIELDS}
    nulls = set(SUMMARY_COLUMNS) - {"run", "step", "n_prompts", "n_completions"}
    assert {k for k in nulls if got[k] is not None} == set()


def test_score_run_and_step_must_agree(tmp_path: Path) -> None:
    samples = _write_samples(tmp_path / "elsewhere.jsonl", run="a", step=100)
    got = _score(samples, tmp_path / "a.json", "a", 100)
    assert (got["run"], got["step"]) == ("a", 100)
    with pytest.raises(SystemExit, match=r"rows are \(a, 100\), expected \(a, 50\)"):
        _score(samples, tmp_path / "b.json", "a", 50)
    with pytest.raises(SystemExit):  # the rule always names them: no guessing from a path
        main(["score", "--samples", str(samples), "--out", str(tmp_path / "c.json")])
    empty = _write_samples(tmp_path / "empty.jsonl", rows=[])
    got = _score(empty, tmp_path / "c.json", "x", 7)
    assert (got["run"], got["step"], got["k"]) == ("x", 7, None)


def test_score_refuses_incomplete_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"run": "a", "step": 0, "prompt_id": 0}) + "\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: missing keys sample_index"):
        _score(path, tmp_path / "out.json", "a", 0)
    path.write_text("\n" + ROWS_JSON_CUT)
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not JSON"):
        _score(path, tmp_path / "out.json", "a", 0)


def test_aggregate_sorts_rows_and_keeps_exact_columns(tmp_path: Path) -> None:
    full = _write_samples(tmp_path / "runs" / "tiny-cpu" / "seed-42" / "samples" / "step-50.jsonl")
    base = _write_samples(
        tmp_path / "runs" / "tiny-cpu" / "base" / "samples" / "step-0.jsonl", rows=ROWS[:3], step=0
    )
    empty = _write_samples(
        tmp_path / "runs" / "a-run" / "seed-42" / "samples" / "step-100.jsonl",
        rows=[],
        run="a-run",
        step=100,
    )
    scores = []
    for i, samples in enumerate([full, base, empty]):
        _score(samples, tmp_path / f"s{i}.json")
        scores.append(str(tmp_path / f"s{i}.json"))
    out, by_pattern = tmp_path / "results" / "summary.tsv", tmp_path / "results" / "by_pattern.tsv"
    main(["aggregate", "--scores", *scores, "--out", str(out), "--by-pattern-out", str(by_pattern)])

    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(SUMMARY_COLUMNS)
    table = pd.read_csv(out, sep="\t")
    assert list(zip(table["run"], table["step"], strict=True)) == [
        ("a-run", 100),
        ("tiny-cpu", 0),
        ("tiny-cpu", 50),
    ]
    # integer columns stay integers; an empty checkpoint shows NA, not 0
    assert lines[1].split("\t")[:6] == ["a-run", "42", "100", "0", "0", "NA"]
    assert table.loc[0, ["success_rate", "verify_share"]].isna().all()
    assert lines[2].split("\t")[:6] == ["tiny-cpu", "NA", "0", "1", "3", "3"]  # the baseline
    assert table.loc[1, "success_rate"] == pytest.approx(1 / 3)
    assert table.loc[1, "candidates_mean"] == pytest.approx(3 / 3)  # A 2, B 1, "" 0
    assert table.loc[2, "success_rate"] == pytest.approx(1 / 3)
    assert table.loc[2, "pass_at_k"] == pytest.approx(2 / 3)

    long = pd.read_csv(by_pattern, sep="\t", keep_default_na=False)
    assert list(long.columns) == list(BY_PATTERN_COLUMNS)
    assert list(zip(long["step"], long["pattern"], long["n"], strict=True)) == [
        (0, "+-", 3),
        (50, "*+", 3),
        (50, "+-", 3),
        (50, "none", 3),
    ]


def test_aggregate_refuses_duplicate_run_step(tmp_path: Path) -> None:
    samples = _write_samples(
        tmp_path / "runs" / "r" / "base" / "samples" / "step-0.jsonl", step=0, run="r"
    )
    _score(samples, tmp_path / "a.json")
    _score(samples, tmp_path / "b.json")
    args = ["aggregate", "--scores", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(SystemExit, match="several score files"):
        main([*args, "--out", str(tmp_path / "s.tsv")])


@pytest.mark.parametrize(
    ("stage", "flags"),
    [
        ("score", ["--samples", "--out", "--run", "--step", "--seed"]),
        (
            "aggregate",
            ["--scores", "--out", "--by-pattern-out", "--across-seeds-out", "--audit-out"],
        ),
    ],
)
def test_help_documents_arguments(
    stage: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags)


def test_scoring_imports_no_torch_or_pandas() -> None:
    """The score stage and its logic modules stay light: pandas only inside `aggregate`."""
    code = (
        "import sys, aha.stages.score, aha.task.metrics, aha.task.behaviours; "
        "print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_aggregate_seeds_and_across_seeds_by_hand(tmp_path: Path) -> None:
    """Three seeds of run r at step 50 (3, 2 and 1 successes of 9) and the shared baseline:
    summary rows per seed (baseline seed NA, first), the across-seeds table per step."""
    scores = []
    base = _write_samples(
        tmp_path / "runs" / "r" / "base" / "samples" / "step-0.jsonl", step=0, run="r"
    )
    _score(base, tmp_path / "b.json")
    scores.append(str(tmp_path / "b.json"))
    for seed, wins in ((44, 1), (42, 3), (43, 2)):
        rows = [(i // 3, 1.0 if i < wins else 0.0, 1.0, 10, False, "x") for i in range(9)]
        path = tmp_path / "runs" / "r" / f"seed-{seed}" / "samples" / "step-50.jsonl"
        _score(_write_samples(path, rows=rows, run="r"), tmp_path / f"{seed}.json", run="r")
        scores.append(str(tmp_path / f"{seed}.json"))
    out, across = tmp_path / "summary.tsv", tmp_path / "across.tsv"
    main(["aggregate", "--scores", *scores, "--out", str(out), "--across-seeds-out", str(across)])
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(zip(table["seed"], table["step"], strict=True)) == [
        ("NA", 0),
        ("42", 50),
        ("43", 50),
        ("44", 50),
    ]
    got = pd.read_csv(across, sep="\t", keep_default_na=False)
    assert list(got.columns) == list(ACROSS_SEEDS_COLUMNS)
    b, s = got.iloc[0], got.iloc[1]
    assert (b["step"], b["seeds"], b["n_seeds"], b["success_t_lo"]) == (0, "base", 1, "NA")
    assert b["success_mean"] == pytest.approx(3 / 9)
    assert (b["success_pooled_lo"], b["success_pooled_hi"]) == pytest.approx(wilson_interval(3, 9))
    assert (s["step"], s["seeds"], s["n_seeds"]) == (50, "42,43,44", 3)
    # rates 3/9, 2/9, 1/9: mean 2/9, sd 1/9; t(0.975, 2) = 0.95 / sqrt(2 x 0.975 x 0.025)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * (1 / 9) / math.sqrt(3)
    assert float(s["success_mean"]) == pytest.approx(2 / 9)
    assert float(s["success_t_lo"]) == pytest.approx(2 / 9 - half)
    assert float(s["success_t_hi"]) == pytest.approx(2 / 9 + half)
    assert (s["n_completions"], s["successes"]) == (27, 6)
    assert float(s["success_pooled"]) == pytest.approx(6 / 27)
    pooled = (float(s["success_pooled_lo"]), float(s["success_pooled_hi"]))
    assert pooled == pytest.approx(wilson_interval(6, 27))


def test_aggregate_refuses_duplicate_run_seed_step_but_not_other_seeds(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r" / "seed-1" / "samples" / "step-50.jsonl"
    samples = _write_samples(path, run="r")
    _score(samples, tmp_path / "a.json")
    _score(samples, tmp_path / "b.json")
    args = ["aggregate", "--scores", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(SystemExit, match=r"several score files for \(run, seed, step\)"):
        main([*args, "--out", str(tmp_path / "s.tsv")])
    record = json.loads((tmp_path / "b.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps({**record, "seed": 2}))
    main([*args, "--out", str(tmp_path / "s.tsv")])
    assert len(pd.read_csv(tmp_path / "s.tsv", sep="\t")) == 2


def test_aggregate_writes_detail_tables_per_seed(tmp_path: Path) -> None:
    """Each DETAILS table: one row per (run, seed, step, key) with the scores' numbers."""
    scores = []
    for folder, step in (("base", 0), ("seed-7", 50)):
        path = tmp_path / "runs" / "r" / folder / "samples" / f"step-{step}.jsonl"
        _score(_write_samples(path, run="r", step=step), tmp_path / f"{step}.json")
        scores.append(str(tmp_path / f"{step}.json"))
    outs = {name: tmp_path / f"{name}.tsv" for name in DETAILS}
    flags = [a for name, p in outs.items() for a in (f"--{name.replace('_', '-')}-out", str(p))]
    main(["aggregate", "--scores", *scores, "--out", str(tmp_path / "s.tsv"), *flags])
    read = {name: pd.read_csv(p, sep="\t", keep_default_na=False) for name, p in outs.items()}
    k = read["pass_at_k"]
    assert list(k.columns) == ["run", "seed", "step", "k", "pass_at_k"]
    assert list(zip(k["seed"], k["step"], k["k"], strict=True)) == [
        ("NA", 0, 1), ("NA", 0, 2), ("NA", 0, 3), ("7", 50, 1), ("7", 50, 2), ("7", 50, 3),
    ]  # fmt: skip
    assert list(k["pass_at_k"][:3]) == pytest.approx([1 / 3, 5 / 9, 2 / 3])
    size = read["by_size"]
    assert list(size.columns) == ["run", "seed", "step", "size", *BY_PATTERN_COLUMNS[4:]]
    assert list(zip(size["step"], size["size"], size["n"], size["successes"], strict=True)) == [
        (0, 3, 9, 3),
        (50, 3, 9, 3),
    ]
    audit = read["audit"].set_index(["step", "category"])
    assert list(read["audit"].columns) == ["run", "seed", "step", "category", "count", "n", "share"]
    assert audit.loc[(50, "no_answer"), "count"] == 6
    assert audit.loc[(50, "no_answer"), "share"] == pytest.approx(6 / 9)
    assert audit.loc[(0, "foreign_number"), "count"] == 2
    words = read["reflection_words"].set_index(["step", "word"])["per_completion"]
    assert words[(50, "wait")] == pytest.approx(1 / 9) and words[(50, "but")] == 0
    assert len(words) == 2 * 10
