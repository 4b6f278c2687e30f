"""The stop budget of a preempted training job, from one setting: the SIGTERM lead of the train
job's slurm_extra (`--signal=TERM@N`, profiles/slurm), 300 s without one. torchrun's shutdown
timeout and the server wrapper's grace follow from it (aha.launch.commands.StopBudget), and the rule's
argv and log carry them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.launch.commands import LaunchError, signal_lead, stop_budget, train_command
from aha.run import Run

ROOT = Path(__file__).resolve().parents[2]


def run_of(mode: str, **grpo) -> Run:
    config = {"model": {"name_or_path": "M"}, "checkpoints": [2],
              "runs": {"r": {"mode": mode, "grpo": {"max_steps": 2, **grpo}}}}  # fmt: skip
    return Run.build(config, "r")


SERVER_RUN = run_of("zero3", use_vllm=True, vllm_mode="server")
COLOCATE_RUN = run_of("zero3", use_vllm=True, vllm_mode="colocate")


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
    qlora = stop_budget(run_of("qlora"), "--signal=TERM@40")  # no launcher of ranks
    assert "saves at the end of its step" in qlora.describe()
    with pytest.raises(LaunchError, match=r"runs\.r: slurm_extra --signal=TERM@80 leaves the"):
        stop_budget(SERVER_RUN, "--signal=TERM@80")  # 80 - 45 - 15 = 20 s: too short


def test_the_argv_carries_the_budget():
    budget = stop_budget(SERVER_RUN, "--signal=TERM@600")
    cmd = train_command(SERVER_RUN, [], python="py", accelerate_config="z.yaml", budget=budget)
    assert cmd[cmd.index("--grace") + 1] == "555" and cmd[cmd.index("--server-grace") + 1] == "30"
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540" in cmd[cmd.index("--") :]
    budget = stop_budget(COLOCATE_RUN, "--signal=TERM@600")
    cmd = train_command(COLOCATE_RUN, [], python="py", accelerate_config="z.yaml", budget=budget)
    assert cmd[:2] == ["env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=585"] and "--grace" not in cmd
