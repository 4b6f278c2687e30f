"""The real tiny DAG, run once per session through Snakemake (tests/data/tiny-test.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_TEST_CONFIG

pytestmark = pytest.mark.slow

CFG = yaml.safe_load(TINY_TEST_CONFIG.read_text())
RUN = next(iter(CFG["runs"]))
STEPS = [0, *CFG["checkpoints"]]
# No `seeds`: one replicate, seeded as TRL was (the run's grpo.seed); step 0 in base/
SEED = CFG["runs"][RUN]["grpo"]["seed"]
RUN_DIR = Path("results") / "runs" / RUN / f"seed-{SEED}"
BASE_DIR = Path("results") / "runs" / RUN / "base"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_data_splits(tiny_dag: Path) -> None:
    data = tiny_dag / "results" / "data"
    train, test, ev = (pd.read_parquet(data / f"{s}.parquet") for s in ("train", "test", "eval"))
    ds = CFG["dataset"]
    assert len(train) + len(test) == ds["num_samples"]
    assert len(ev) == ds["eval_size"]
    assert set(ev["id"]) <= set(test["id"])
    assert not set(train["id"]) & set(test["id"])
    card = json.loads((data / "card.json").read_text())
    assert json.dumps(card)  # valid JSON with content
    assert all(len(nums) == 3 for nums in train["nums"])


def test_checkpoints_exactly_at_configured_steps(tiny_dag: Path) -> None:
    run_dir = tiny_dag / RUN_DIR
    manifests = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.json"))
    assert manifests == sorted(f"step-{s}.json" for s in CFG["checkpoints"])
    for step in CFG["checkpoints"]:
        manifest = json.loads((run_dir / "checkpoints" / f"step-{step}.json").read_text())
        assert manifest["step"] == step
        weights = Path(manifest["path"])
        weights = weights if weights.is_absolute() else tiny_dag / weights
        assert (weights / "config.json").exists() or (weights / "adapter_config.json").exists()


def test_train_log_and_completion_samples(tiny_dag: Path) -> None:
    run_dir = tiny_dag / RUN_DIR
    log = read_jsonl(run_dir / "train_log.jsonl")
    logged = [row["step"] for row in log if "reward" in row]
    assert logged and max(logged) == CFG["runs"][RUN]["grpo"]["max_steps"]
    samples = run_dir / "completion_samples"
    text = (samples / "completion_samples.txt").read_text()
    assert text.strip()
    assert (samples / "success_completion_samples.txt").exists()


def test_training_curves_reach_tensorboard_from_the_dag(tiny_dag: Path) -> None:
    """What `make demo` runs writes live curves by default, and TensorBoard's own reader
    loads them: reward, each reward function's mean, length and learning rate at each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tiny_dag / RUN_DIR / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    curves = EventAccumulator(str(folder))
    curves.Reload()
    steps = list(range(1, CFG["runs"][RUN]["grpo"]["max_steps"] + 1))
    log = read_jsonl(tiny_dag / RUN_DIR / "train_log.jsonl")
    logged = {row["step"]: row for row in log if "reward" in row}  # not the final summary row
    for tag in ("reward", "rewards/format_reward/mean", "rewards/equation_reward/mean",
                "completions/mean_length", "learning_rate"):  # fmt: skip
        events = curves.Scalars(f"train/{tag}")
        assert [e.step for e in events] == steps, tag
        assert [e.value for e in events] == pytest.approx([logged[s][tag] for s in steps])


def test_samples_and_scores_for_every_step(tiny_dag: Path) -> None:
    n = CFG["dataset"]["eval_size"] * CFG["sampling"]["k"]
    for step in STEPS:
        run_dir = tiny_dag / (BASE_DIR if step == 0 else RUN_DIR)
        rows = read_jsonl(run_dir / "samples" / f"step-{step}.jsonl")
        assert len(rows) == n
        assert {r["step"] for r in rows} == {step}
        assert all(0.0 <= r["equation_reward"] <= 1.0 for r in rows)
        score = json.loads((run_dir / "scores" / f"step-{step}.json").read_text())
        assert score["n_completions"] == n


def test_summary_has_a_row_per_step(tiny_dag: Path) -> None:
    summary = pd.read_csv(tiny_dag / "results" / "summary.tsv", sep="\t")
    assert list(summary["step"]) == STEPS
    assert set(summary["run"]) == {RUN}
    assert summary["seed"].isna().tolist() == [True] + [False] * (len(STEPS) - 1)  # 0: base
    assert set(summary["seed"].dropna()) == {SEED}
    # a statistic of one side (correct / incorrect, with / without reflection) is NA exactly
    # when that side has no completion; every other column is always there
    sides = {
        "tokens_mean_correct": summary["success_rate"] == 0,
        "tokens_mean_incorrect": summary["success_rate"] == 1,
        "success_with_reflection": summary["reflection_share"] == 0,
        "success_without_reflection": summary["reflection_share"] == 1,
    }
    for column, empty in sides.items():
        assert (summary[column].isna() == empty).all(), column
    assert summary.drop(columns=["run", "seed", *sides]).notna().all().all()
    across = pd.read_csv(tiny_dag / "results" / "summary_across_seeds.tsv", sep="\t")
    assert list(across["step"]) == STEPS and set(across["n_seeds"]) == {1}
    assert list(across["success_mean"]) == pytest.approx(list(summary["success_rate"]))
    assert across["success_t_lo"].isna().all()  # one seed: no interval across seeds


def test_report_written(tiny_dag: Path) -> None:
    report = tiny_dag / "results" / "report.html"
    assert report.stat().st_size > 10_000
