"""Interrupted GPU-mode training, rehearsed on the CPU with the real libraries, resumes.

- qlora and ZeRO-3 (two DeepSpeed ranks, colocated vLLM) killed with SIGKILL mid-run, every
  process of the job at once (a lost node): the next `snakemake` resumes from the newest
  complete checkpoint-N and ends at max_steps with every configured checkpoint.
- ZeRO-3 in server mode preempted as SLURM does (`--signal=TERM@300`: SIGTERM to every process
  of the job, the vLLM server included): the ranks finish their step through the still-running
  server, save, exit; only then is the server stopped; the rerun resumes from that save. The
  same across two stand-in nodes (`qwen-zero3-nodes`: `aha nodes`, the server on a third).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from aha.launch.process_tree import descendants
from tests.conftest import (
    REHEARSAL_CONFIGS,
    SNAKEFILE,
    copy_inputs,
    rehearsal_python,
    snakemake,
)
from tests.processes import alive

pytestmark = pytest.mark.slow

# Long enough that the signal lands mid-run however fast a step is (qlora ≈ 0.5 s a step on two
# cores, colocate ≈ 2 s, server ≈ 10 s: its two ranks generate over HTTP), short enough to resume.
MAX_STEPS = {"qwen-qlora": 24, "qwen-zero3-colocate": 12, "qwen-zero3": 6, "qwen-zero3-nodes": 6,
             "qwen-zero3-colocate-nodes": 12}  # fmt: skip
SEED = 42  # config/config.yaml's seed: the run's one replicate, results/runs/RUN/seed-42


def configs(tmp_path: Path, run: str) -> list[Path]:
    """The rehearsal config plus an override: this run saves every 2 steps up to max_steps."""
    max_steps = MAX_STEPS[run]
    override = {
        "runs": {
            run: {
                "checkpoints": [2, max_steps],
                "grpo": {"max_steps": max_steps, "save_steps": 2, "logging_steps": 1},
            }
        }
    }
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(override))
    return [*REHEARSAL_CONFIGS, path]


def newest_complete(trainer: Path) -> int:
    steps = [
        int(p.name.split("-")[1])
        for p in trainer.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    ]
    return max(steps, default=0)


def start(tmp_path: Path, inputs: Path, run: str) -> tuple[list[Path], subprocess.Popen, Path]:
    """Copy in the model and data (times kept, so the DAG takes them as built), then start
    training `run` in the background: (configs, the snakemake process in a session of its
    own, the run's trainer folder)."""
    python = rehearsal_python()
    files = configs(tmp_path, run)
    copy_inputs(inputs, tmp_path)
    cmd = [str(python), "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path)]
    target = f"results/runs/{run}/seed-{SEED}/checkpoints"
    cmd += ["--configfile", *map(str, files), "--cores", "2", target]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return files, proc, tmp_path / "results" / "runs" / run / f"seed-{SEED}" / "trainer"


def wait_for_checkpoint(proc: subprocess.Popen, trainer: Path, step: int) -> None:
    deadline = time.monotonic() + 600
    while newest_complete(trainer) < step:
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no checkpoint-{step} within 10 minutes"
        time.sleep(0.2)


def signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def rerun_and_check(tmp_path: Path, files: list[Path], run: str, interrupted_at: int) -> None:
    """The rerun resumes from `interrupted_at` and ends with every checkpoint, logged once."""
    run_dir = tmp_path / "results" / "runs" / run / f"seed-{SEED}"
    step2 = run_dir / "weights" / "step-2"
    step2_mtime = step2.stat().st_mtime
    python = rehearsal_python()
    snakemake(tmp_path, "--unlock", configfile=files, python=python)
    snakemake(tmp_path, "--cores", "2", f"{run_dir.relative_to(tmp_path)}/checkpoints",
              configfile=files, python=python)  # fmt: skip
    log = (tmp_path / "logs" / "train" / f"{run}-seed{SEED}.log").read_text()
    max_steps = MAX_STEPS[run]
    assert f"checkpoint-{interrupted_at} (step {interrupted_at} of {max_steps})" in log, log[-3000:]
    state = json.loads(
        (run_dir / "trainer" / f"checkpoint-{max_steps}" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == max_steps
    assert {p.name for p in (run_dir / "checkpoints").glob("*.json")} == {
        f"step-{s}.json" for s in (2, max_steps)
    }
    assert step2.stat().st_mtime == step2_mtime, "step-2 weights were redone: training restarted"
    # save_total_limit 2: TRL keeps the newest two checkpoint-N, weights/ keeps the configured
    assert len(list((run_dir / "trainer").glob("checkpoint-*"))) <= 2
    logged = [
        row["step"]
        for row in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())
        if "reward" in row
    ]
    assert logged == list(range(1, max_steps + 1))


@pytest.mark.parametrize("run", ["qwen-qlora", "qwen-zero3-colocate", "qwen-zero3-colocate-nodes"])
def test_killed_gpu_mode_training_resumes(tmp_path: Path, rehearsal_inputs: Path, run: str) -> None:
    files, proc, trainer = start(tmp_path, rehearsal_inputs, run)
    try:
        wait_for_checkpoint(proc, trainer, 4)
        time.sleep(0.5)  # into the next step, or into writing a checkpoint: both must resume
    finally:
        tree = descendants(proc.pid) | {proc.pid}  # DeepSpeed ranks run in their own sessions
        signal_all(tree, signal.SIGKILL)
        proc.wait()
    time.sleep(1)
    assert not {pid for pid in tree if alive(pid)}, "processes of the killed job survived"
    killed_at = newest_complete(trainer)
    assert 4 <= killed_at < MAX_STEPS[run]
    if run.startswith("qwen-zero3"):  # both ranks' ZeRO-3 state, on one node or across two
        assert (trainer / f"checkpoint-{killed_at}" / f"global_step{killed_at}").is_dir()
    rerun_and_check(tmp_path, files, run, killed_at)


@pytest.mark.parametrize("run", ["qwen-zero3", "qwen-zero3-nodes"])
def test_preempted_server_run_saves_through_the_live_server_and_resumes(
    tmp_path: Path, rehearsal_inputs: Path, run: str
) -> None:
    """On one node, and across two stand-in nodes (`aha nodes`) with the server on a third:
    every node's rank saves its part of the checkpoint before the server stops."""
    files, proc, trainer = start(tmp_path, rehearsal_inputs, run)
    try:
        wait_for_checkpoint(proc, trainer, 2)
        before = newest_complete(trainer)
        # SLURM's time-limit signal: every process of the job, server and ranks alike
        tree = descendants(proc.pid)
        signal_all(tree, signal.SIGTERM)
        assert proc.wait(timeout=600) != 0  # the job fails, so SLURM/Snakemake rerun it
    finally:
        leftover = descendants(proc.pid) | {proc.pid}
        signal_all(leftover, signal.SIGKILL)
    time.sleep(1)
    assert not {pid for pid in tree if alive(pid)}, "processes of the preempted job survived"
    saved = newest_complete(trainer)
    log = (tmp_path / "logs" / "train" / f"{run}-seed{SEED}.log").read_text()
    assert before < saved < MAX_STEPS[run], f"no checkpoint saved on SIGTERM:\n{log[-6000:]}"
    assert "SIGTERM received: saving a checkpoint" in log
    ranks = {p.name for p in (trainer / f"checkpoint-{saved}").glob("rng_state_*.pth")}
    assert ranks == {"rng_state_0.pth", "rng_state_1.pth"}, "not every rank saved"
    # the trainer exited (after its save) before the server was stopped
    assert log.index("training command exited with status") < log.index("stopping the vLLM server")
    rerun_and_check(tmp_path, files, run, saved)
