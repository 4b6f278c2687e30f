"""The stop budget of a preempted training job, from one setting: the SIGTERM lead of the train
job's slurm_extra (`--signal=TERM@N`, profiles/slurm), 300 s without one. torchrun's shutdown
timeout and the server wrapper's grace follow from it (aha.launch.commands.StopBudget), and the rule's
argv and log carry them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aha.launch.commands import LaunchError, signal_lead, stop_budget, train_command

ROOT = Path(__file__).resolve().parents[2]

SERVER_RUN = {"name": "r", "mode": "zero3", "model": {"name_or_path": "M"},
              "grpo": {"use_vllm": True, "vllm_mode": "server"}}  # fmt: skip
COLOCATE_RUN = {**SERVER_RUN, "grpo": {"use_vllm": True, "vllm_mode": "colocate"}}


@pytest.mark.parametrize(
    ("slurm_extra", "lead"),
    [
        (None, 300),
        ("--signal=TERM@300", 300),
        ("--mem-bind=local --signal=B:TERM@600", 600),
        ("--signal TERM@420 --exclusive", 420),
        ("--signal=SIGTERM@360", 360),
        ("--signal=15@480", 480),
        ("--signal=TERM", 60),  # SLURM's default signal time
        ("--signal=USR1@300", 300),  # no SIGTERM ahead: the default budget
    ],
)
def test_the_signal_lead_comes_from_slurm_extra(slurm_extra, lead):
    assert signal_lead(slurm_extra)[0] == lead


def test_every_timeout_derives_from_the_lead():
    server = stop_budget(SERVER_RUN, "--signal=TERM@300")
    # the server needs its 30 s grace + 15 s of bounded waits; torchrun 15 s for its exit
    assert (server.wrapper_grace_s, server.shutdown_timeout_s) == (255, 240)
    assert stop_budget(COLOCATE_RUN, "--signal=TERM@300").shutdown_timeout_s == 285
    longer = stop_budget(SERVER_RUN, "--signal=TERM@900")
    assert (longer.wrapper_grace_s, longer.shutdown_timeout_s) == (855, 840)
    line = server.describe()
    assert line.startswith("stop budget: SIGTERM 300 s before the time limit (slurm_extra ")
    assert all(f"{n} s" in line for n in (255, 240, 15, 45))
    qlora = stop_budget({"name": "q", "mode": "qlora"}, "--signal=TERM@40")  # no launcher
    assert "saves at the end of its step" in qlora.describe()
    with pytest.raises(LaunchError, match=r"runs\.r: slurm_extra --signal=TERM@80 leaves the"):
        stop_budget(SERVER_RUN, "--signal=TERM@80")  # 80 - 45 - 15 = 20 s: too short


def test_the_argv_carries_the_budget():
    budget = stop_budget(SERVER_RUN, "--signal=TERM@600")
    cmd = train_command(SERVER_RUN, 4, "py", [], accelerate_config="z.yaml", budget=budget)
    assert cmd[cmd.index("--grace") + 1] == "555" and cmd[cmd.index("--server-grace") + 1] == "30"
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540" in cmd[cmd.index("--") :]
    budget = stop_budget(COLOCATE_RUN, "--signal=TERM@600")
    cmd = train_command(COLOCATE_RUN, 4, "py", [], accelerate_config="z.yaml", budget=budget)
    assert cmd[:2] == ["env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=585"] and "--grace" not in cmd


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
