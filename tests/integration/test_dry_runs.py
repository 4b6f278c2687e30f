"""Snakemake itself over the shipped configs (dry runs, the rules' resources and stop budgets,
lint): seconds each, so they sit in the integration tier."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from aha.config import (
    ConfigError,
    check,
)
from tests.conftest import ROOT, snakemake
from tests.unit.test_config import (
    SCHEMA,
)


def test_gpu_runs_declare_their_gpus_and_a_rehearsal_none(tmp_path):
    """`sample` and `train` ask the scheduler for GPUs on cuda (vLLM takes most of one)."""

    def resources(*configs):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d"]
        cmd += [str(tmp_path), "-n", "--configfile", *map(str, configs)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        found = {}
        for block in out.split("\n\n"):
            rule = re.search(r"rule (\w+):", block)
            gpu = re.search(r"resources: .*gpu=(\d+)", block)
            run = re.search(r"run=([\w-]+)", block)
            if rule and gpu and run:
                found[(rule.group(1), run.group(1))] = int(gpu.group(1))
        return found

    seed = resources(ROOT / "config" / "config.yaml")
    assert seed[("sample", "qwen-zero3")] == 1 and seed[("sample", "qwen-qlora")] == 1
    assert seed[("train", "qwen-zero3")] == 4 and seed[("train", "qwen-qlora")] == 1
    rehearsal = resources(ROOT / "config" / "config.yaml", ROOT / "config" / "rehearsal.yaml")
    assert set(rehearsal.values()) == {0}
    assert ("train", "qwen-zero3-colocate") in rehearsal


def test_the_train_rule_takes_its_stop_budget_from_the_jobs_slurm_extra(tmp_path):
    """The one setting: the profile's `--signal=TERM@N` for the train rule; without it (a
    local run) the default 300 s. The argv and the log's first line follow it."""
    profile = tmp_path / "profile"
    profile.mkdir()
    resources = {"set-resources": {"train": {"slurm_extra": "--signal=TERM@600"}}}
    (profile / "config.yaml").write_text(yaml.safe_dump(resources))

    def dry_run(*options: str) -> str:
        cmd = [sys.executable, "-m", "snakemake", "results/runs/qwen-zero3/seed-42/checkpoints"]
        cmd += ["-s", str(ROOT / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "-p", *options]
        cmd += ["--configfile", str(ROOT / "config" / "config.yaml")]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    slurm = dry_run("--profile", str(profile))
    assert (
        "stop budget: SIGTERM 600 s before the time limit (slurm_extra --signal=TERM@600)" in slurm
    )
    assert "--grace 555" in slurm and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540" in slurm
    local = dry_run()
    assert "stop budget: SIGTERM 300 s before the time limit (default" in local
    assert "--grace 255" in local and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240" in local
    assert "--port" not in local  # config.yaml pins no server port: the job chooses one


def test_replicates_overlay_dry_run_trains_each_seed_and_samples_step_0_once(
    tmp_path: Path,
) -> None:
    """config/tiny-replicates.yaml over tiny.yaml: 3 trainings, one step-0 sample; its eval is
    the whole test split (ceil(2905 x 0.1) = 291 tasks) at k 6."""
    files = [ROOT / "config" / "tiny.yaml", ROOT / "config" / "tiny-replicates.yaml"]
    merged = yaml.safe_load(files[0].read_text())
    overlay = yaml.safe_load(files[1].read_text())
    merged["dataset"]["eval_size"] = overlay["dataset"]["eval_size"]
    validate(merged, str(SCHEMA))
    check(merged)  # 291 is the whole split: one more is refused
    merged["dataset"]["eval_size"] += 1
    with pytest.raises(ConfigError, match="exceeds the test split"):
        check(merged)
    proc = snakemake(tmp_path, "-n", configfile=files)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE))
    assert counts["train"] == "3" and counts["sample_base"] == "1" and counts["sample"] == "12"
    for seed in (42, 43, 44):
        assert f"results/runs/tiny-cpu/seed-{seed}/checkpoints" in proc.stdout
    assert "results/runs/tiny-cpu/base/samples/step-0.jsonl" in proc.stdout


@pytest.mark.parametrize("configfile", ["config/tiny.yaml", "config/config.yaml"])
def test_dry_run_both_configs(tmp_path: Path, configfile: str) -> None:
    proc = snakemake(tmp_path, "-n", configfile=ROOT / configfile)
    assert "prepare_data" in proc.stdout


def test_configfile_runs_do_not_leak_between_configs(tmp_path: Path) -> None:
    """The tiny default must not add its run to a DAG built from another config file."""
    proc = snakemake(tmp_path, "-n", "--printshellcmds", configfile=ROOT / "config" / "config.yaml")
    assert "tiny-cpu" not in proc.stdout


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--lint", configfile=None, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr
