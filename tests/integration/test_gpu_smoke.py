"""scripts/gpu-smoke.sh, the smoke test for a one-GPU machine, run end to end on the CPU.

With DEVICE=cpu the script installs nothing (the rehearsal environment has trl, deepspeed and
bitsandbytes) and runs every stage the GPU machine runs: qlora and zero3 training, resume from
checkpoint-4, HF sampling of both step-4 checkpoints. The tiny model and data are built with
scripts/gpu-smoke-prepare.sh --smoke-only into a temporary SMOKE_DIR (no downloads).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import rehearsal_python

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "gpu-smoke.sh"
PREPARE = ROOT / "scripts" / "gpu-smoke-prepare.sh"
# Every stage of a CPU run, in order (`install` runs on the GPU machine only).
STAGES = [
    "versions",
    "specs",
    "contracts",
    "check-gpu-qlora",
    "check-gpu-zero3",
    "qlora",
    "zero3",
    "sample-qlora",
    "sample-zero3",
    "qlora-resume",
    "zero3-resume",
    "listing",
]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the script's own settings, plus `extra`."""
    own = {"DEVICE", "PYTHON", "OUT", "WORK", "SMOKE_DIR", "SITE", "SMOKE_STAGES", "SMOKE_PACK"}
    env = {key: value for key, value in os.environ.items() if key not in own}
    return {**env, "SMOKE_BUDGET_S": "1500", **extra}


def read_summary(out: Path) -> dict[str, str]:
    with (out / "summary.tsv").open(newline="") as fh:
        return {row["stage"]: row["status"] for row in csv.DictReader(fh, delimiter="\t")}


def test_smoke_scripts_parse() -> None:
    for script in (SMOKE, PREPARE):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_smoke_scripts_pass_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(SMOKE), str(PREPARE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_smoke_packs_its_logs_when_more_than_eight_files(tmp_path: Path) -> None:
    """The device returns at most 8 files from $OUT: the rest go into one tarball.

    A run without model or data (specs fails), so it is quick; what matters is what is left in
    $OUT.
    """
    out = tmp_path / "out"
    out.mkdir()
    for i in range(8):  # left by an earlier stage: more than 8 files in all
        (out / f"extra-{i}.log").write_text("x\n")
    env = clean_env(
        DEVICE="cpu",
        PYTHON=sys.executable,
        OUT=str(out),
        WORK=str(tmp_path / "work"),
        SMOKE_DIR=str(tmp_path / "no-smoke"),
        SMOKE_STAGES="listing",
    )
    proc = subprocess.run(
        ["bash", str(SMOKE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # specs failed
    summary = read_summary(out)
    assert list(summary) == ["versions", "specs", "listing"]
    assert (summary["specs"], summary["listing"]) == ("failed", "ok")
    left = sorted(p.name for p in out.iterdir())
    assert left == ["gpu-smoke-logs.tar.gz", "metrics.tsv", "summary.tsv", "versions.txt"]
    with tarfile.open(out / "gpu-smoke-logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"specs.log", "listing.log", "extra-0.log"} <= names


@pytest.mark.slow
def test_gpu_smoke_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    python = rehearsal_python()
    smoke_dir = tmp_path / "smoke"
    prep = subprocess.run(
        [str(PREPARE), "--smoke-only"],
        cwd=ROOT,
        env=clean_env(SMOKE_DIR=str(smoke_dir), BUILD_PYTHON=str(python)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    assert (smoke_dir / "models" / "tiny" / "config.json").is_file()

    out, work = tmp_path / "out", tmp_path / "work"
    env = clean_env(
        DEVICE="cpu",
        PYTHON=str(python),
        OUT=str(out),
        WORK=str(work),
        SMOKE_DIR=str(smoke_dir),
        SMOKE_PACK="0",
    )
    proc = subprocess.run(
        ["bash", str(SMOKE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = read_summary(out)
    assert list(summary) == STAGES, report
    assert all(status == "ok" for status in summary.values()), report
    assert proc.returncode == 0, report
    # the seed config's CUDA branches, each through its library (vLLM's CPU build here)
    assert "check-contracts: 8 passed, 0 failed" in (out / "contracts.log").read_text()

    # Adapter checkpoints for qlora, full 16-bit weights for ZeRO-3, at every configured step.
    for step in (2, 4, 6):
        assert (work / "qlora" / "weights" / f"step-{step}" / "adapter_model.safetensors").is_file()
        assert (work / "zero3" / "weights" / f"step-{step}" / "model.safetensors").is_file()
    for job in ("qlora-resume", "zero3-resume"):
        log = (out / f"{job}.log").read_text()
        assert re.search(r"resuming from \S*checkpoint-4\b", log), job

    import pandas as pd

    eval_rows = len(pd.read_parquet(smoke_dir / "data" / "eval.parquet"))
    for run in ("qlora", "zero3"):
        lines = (out / f"samples-{run}.jsonl").read_text().splitlines()
        assert len(lines) == eval_rows * 2, run
        records = [json.loads(line) for line in lines]
        assert {(r["run"], r["step"]) for r in records} == {(f"smoke-{run}", 4)}

    with (out / "metrics.tsv").open(newline="") as fh:
        metrics = {row["run"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert set(metrics) == {"qlora", "zero3", "qlora-resume", "zero3-resume"}
    assert metrics["qlora-resume"]["steps"] == "1,2,3,4,5,6"
