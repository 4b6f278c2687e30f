"""Training killed mid-run (SIGKILL, as a node loss or SLURM preemption without grace) resumes on
the next `snakemake` from its newest checkpoint and ends at max_steps with every checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import SNAKEFILE, TINY_TEST_CONFIG, snakemake

pytestmark = pytest.mark.slow
RUN = "resume"
SEED = 11  # the run's one replicate (grpo.seed): results/runs/RUN/seed-SEED
MAX_STEPS = 40  # long enough that the kill lands mid-run however fast a step is


def config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load(TINY_TEST_CONFIG.read_text())
    grpo = next(iter(cfg["runs"].values()))["grpo"]
    grpo.update(max_steps=MAX_STEPS, save_steps=2, logging_steps=1, seed=SEED)
    cfg["runs"] = {RUN: {"mode": "cpu", "grpo": grpo}}
    cfg["checkpoints"] = [3, MAX_STEPS]
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def newest_checkpoint(trainer: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in trainer.glob("checkpoint-*") if p.is_dir()]
    return max(steps, default=0)


def test_killed_training_resumes_from_newest_checkpoint(tmp_path: Path) -> None:
    cfgfile = config(tmp_path)
    target = f"results/runs/{RUN}/seed-{SEED}/checkpoints"
    snakemake(tmp_path, "--cores", "2", "results/models/tiny", configfile=cfgfile)

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "-d",
        str(tmp_path),
        "--configfile",
        str(cfgfile),
        "--cores",
        "2",
        target,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trainer = tmp_path / "results" / "runs" / RUN / f"seed-{SEED}" / "trainer"
    deadline = time.monotonic() + 600
    try:
        while newest_checkpoint(trainer) < 4:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint-4 within 10 minutes"
            time.sleep(0.2)
        time.sleep(
            0.5
        )  # let the checkpoint finish writing; a half-written one must not break resume
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = newest_checkpoint(trainer)
    assert killed_at < MAX_STEPS
    step3 = tmp_path / "results" / "runs" / RUN / f"seed-{SEED}" / "weights" / "step-3"
    step3_mtime = step3.stat().st_mtime

    snakemake(tmp_path, "--unlock", configfile=cfgfile)
    snakemake(tmp_path, "--cores", "2", target, configfile=cfgfile)

    run_dir = tmp_path / "results" / "runs" / RUN / f"seed-{SEED}"
    train_log = (tmp_path / "logs" / "train" / f"{RUN}-seed{SEED}.log").read_text()
    assert "resum" in train_log.lower(), train_log[-3000:]
    state = json.loads((trainer / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert {p.name for p in (run_dir / "checkpoints").glob("*.json")} == {
        "step-3.json",
        f"step-{MAX_STEPS}.json",
    }
    assert step3.stat().st_mtime == step3_mtime, "step-3 weights were redone: training restarted"
    logged = [
        json.loads(x)["step"]
        for x in (run_dir / "train_log.jsonl").read_text().splitlines()
        if "reward" in json.loads(x)
    ]
    assert logged == list(range(1, MAX_STEPS + 1))
