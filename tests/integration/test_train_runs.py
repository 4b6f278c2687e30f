"""aha.stages.train for real: tiny GRPO runs on the CPU, checkpoints at exactly the configured
steps, resume, and a stop signal's save (in process and through `python -m aha train`).

They train the random 1-layer Qwen2 of tests/unit/test_train.py's fixtures (a few seconds a run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aha import formats
from aha.stages import train
from aha.task import grpo_rewards
from tests.unit.test_train import make_tiny_model, run_spec, write_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("data"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cpu_run_checkpoints_exactly_at_configured_steps(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    out = tmp_path / "run"
    # rewards of a random model are all 0, so only weight decay moves the weights
    spec = run_spec(weight_decay=0.1)
    result = train.train(spec, data_dir, str(tiny_model), out, sample_rate=1.0)
    assert result.global_step == 4 and result.stopped_by is None and result.resumed_from is None

    manifests = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert manifests == ["step-2.json", "step-4.json"]
    for step in (2, 4):
        manifest = json.loads((out / "checkpoints" / f"step-{step}.json").read_text())
        assert manifest["step"] == step and manifest["mode"] == "cpu"
        assert manifest["base_model"] == str(tiny_model) and manifest["is_adapter"] is False
        weights = Path(manifest["path"])
        assert weights == out / "weights" / f"step-{step}"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in weights.iterdir()
        }
        assert not list(weights.glob("optimizer*")) and manifest["train_seconds"] > 0
    # save_steps=3 gives TRL's checkpoint-3; ours are 2 and 4 (the last step is always saved).
    # save_total_limit 2 (the default of every mode) rotated checkpoint-2 away: its weights
    # were exported when it was saved, and are the step's, not the final model's
    assert sorted(p.name for p in (out / "trainer").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    from safetensors.torch import load_file

    w2 = load_file(out / "weights" / "step-2" / "model.safetensors")
    w4 = load_file(out / "weights" / "step-4" / "model.safetensors")
    c4 = load_file(out / "trainer" / "checkpoint-4" / "model.safetensors")
    assert all((w4[k] == c4[k]).all() for k in c4)
    assert any((w2[k] != w4[k]).any() for k in w2)

    log = read_jsonl(out / "train_log.jsonl")
    steps = [row["step"] for row in log if "reward" in row]
    assert steps == [1, 2, 3, 4]
    row = next(r for r in log if "reward" in r)
    for key in ("reward_std", "rewards/format_reward/mean", "rewards/equation_reward/mean"):
        assert key in row
    assert "completions/mean_length" in row and "learning_rate" in row
    # the split of TRL's step_time (aha.stages.train's GenerationTimer): both parts, adding up
    for r in (r for r in log if "reward" in r):
        gen, opt = r[train.GENERATION_KEY], r[train.OPTIMISATION_KEY]
        assert (
            gen > 0 and opt > 0 and gen + opt == pytest.approx(r["step_time"], abs=2e-4)
        )  # rounded to 4 places

    samples = out / "completion_samples"
    text = (samples / "completion_samples.txt").read_text()
    # rate 1.0: every completion of every step, one header each (4 steps x 8 completions)
    headers = [line for line in text.splitlines() if line.startswith("============== step ")]
    assert len(headers) == 32
    assert {h.split(" | ")[0] for h in headers} == {f"============== step {s}" for s in range(1, 5)}
    assert (samples / "success_completion_samples.txt").exists()


def test_resume_continues_without_redoing_steps(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    out = tmp_path / "run"
    spec2 = run_spec(max_steps=2, checkpoints=(2,))
    first = train.train(spec2, data_dir, str(tiny_model), out, sample_rate=1.0)
    assert first.global_step == 2
    step2 = out / "weights" / "step-2"
    mtime = step2.stat().st_mtime_ns
    # Snakemake deletes declared outputs before a rerun
    (out / "train_log.jsonl").unlink()
    for manifest in (out / "checkpoints").iterdir():
        manifest.unlink()

    second = train.train(run_spec(), data_dir, str(tiny_model), out, sample_rate=1.0)
    assert second.resumed_from == str(out / "trainer" / "checkpoint-2")
    assert second.global_step == 4
    state = json.loads((out / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert step2.stat().st_mtime_ns == mtime  # step 2 was not redone
    log = read_jsonl(out / "train_log.jsonl")
    assert [row["step"] for row in log if "reward" in row] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.json", "step-4.json"]
    # rng state and data position restored: the same completions as an uninterrupted run
    straight = tmp_path / "straight"
    train.train(run_spec(), data_dir, str(tiny_model), straight, sample_rate=1.0)
    samples = Path(grpo_rewards.SAMPLES_DIR, grpo_rewards.SAMPLES_FILE)
    assert (out / samples).read_text() == (straight / samples).read_text()

    # a finished run asked again only rewrites its declared outputs
    for manifest in (out / "checkpoints").iterdir():
        manifest.unlink()
    third = train.train(run_spec(), data_dir, str(tiny_model), out)
    assert third.global_step == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.json", "step-4.json"]


def test_sigterm_saves_and_stops_then_resume_finishes(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    from transformers import TrainerCallback

    class TermAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # during step 2: the save happens at its end
                signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "run"
    spec = run_spec(max_steps=5, checkpoints=(4, 5), save_steps=100)
    stopped = train.train(spec, data_dir, str(tiny_model), out, extra_callbacks=[TermAtStep()])
    assert stopped.stopped_by == "SIGTERM" and stopped.global_step == 2
    assert [p.name for p in (out / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "checkpoints").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again

    done = train.train(spec, data_dir, str(tiny_model), out)
    assert done.global_step == 5 and done.resumed_from.endswith("checkpoint-2")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4.json", "step-5.json"]


def test_cli_sigterm_saves_checkpoint_and_exits_nonzero(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    """The real thing: `python -m aha train` in a subprocess, SIGTERM from outside mid-run."""
    out = tmp_path / "run"
    spec = run_spec(max_steps=200, checkpoints=(200,), save_steps=1000)
    cmd = [sys.executable, "-m", "aha", "train", "--run", spec.to_json()]  # as the train rule
    cmd += ["--data-dir", str(data_dir), "--model", str(tiny_model), "--out-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    log_file = out / "train_log.jsonl"
    while not (log_file.exists() and log_file.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no step logged within 2 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    found = list((out / "trainer").glob("checkpoint-*"))
    assert len(found) == 1 and formats.is_complete(found[0])
    assert 1 <= formats.checkpoint_step(found[0]) < 200
    assert not (out / "checkpoints").exists()
