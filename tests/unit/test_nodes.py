"""A run across nodes (runs.<run>.nodes): its Run, its argv, and `aha nodes` / `aha node`.

The multi-node argv of a GPU cluster goes through accelerate's own parser and its DeepSpeed
launcher (the contract of the srun branch, which the CPU rehearsal replaces by stand-in nodes
on one machine); the rest is the launcher's own logic on known inputs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from aha.config import ConfigError
from aha.launch import nodes, vllm_server
from aha.launch.commands import LaunchError, train_command
from aha.run import Run
from tests.conftest import ROOT

ZERO3_YAML = str(ROOT / "workflow" / "accelerate" / "zero3.yaml")


def zero3(nodes_: int, mode: str = "colocate", device: str = "cuda") -> Run:
    grpo = {"use_vllm": True, "vllm_mode": mode, "max_steps": 4}
    spec = {"mode": "zero3", "nodes": nodes_, "grpo": grpo}
    config = {"device": device, "model": {"name_or_path": "Org/M"}, "checkpoints": [2]}
    return Run.build({**config, "runs": {"r": spec}}, "r")


def test_nodes_default_to_one_and_change_nothing_there() -> None:
    one = zero3(1, "server")
    assert (one.nodes, one.job_nodes, one.devices, one.training_processes) == (1, 1, 4, 3)


def test_across_nodes_every_node_trains_and_server_mode_adds_the_last() -> None:
    colocate, server = zero3(2), zero3(2, "server")
    assert (colocate.job_nodes, colocate.training_processes) == (2, 8)  # 2 nodes x 4 GPUs
    assert (server.job_nodes, server.training_processes) == (3, 8)  # + a node that serves
    assert server.completions_per_step == 8 * 8 * 1
    rehearsal = zero3(2, "server", device="cpu")
    assert (rehearsal.devices, rehearsal.training_processes, rehearsal.job_nodes) == (1, 2, 3)


def test_a_mode_on_one_node_refuses_nodes() -> None:
    spec = {"mode": "qlora", "nodes": 2, "grpo": {"max_steps": 2}}
    config = {"device": "cuda", "model": {"name_or_path": "Org/M"}, "checkpoints": [2]}
    with pytest.raises(ConfigError, match=r"runs\.r\.nodes: mode qlora trains on one node.*zero3"):
        Run.build({**config, "runs": {"r": spec}}, "r")


def test_the_run_round_trips_its_nodes() -> None:
    run = zero3(2, "server")
    assert Run.from_json(run.to_json()) == run


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_command_across_nodes_is_aha_nodes_with_the_accelerate_args_after() -> None:
    argv = train_command(
        zero3(2), ["--x"], accelerate_config=ZERO3_YAML, rendezvous_dir="R/trainer"
    )
    head = argv[: argv.index("--")]
    assert head[:2] == ["env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=285"]
    assert head[2:6] == ["python", "-m", "aha", "nodes"]
    assert (_after(head, "--nodes"), _after(head, "--per-node")) == ("2", "4")
    assert _after(head, "--rendezvous-dir") == "R/trainer"
    assert "--rehearsal" not in head and "--server-wrapper" not in head
    assert argv[argv.index("--") + 1 :] == [
        "--config_file",
        ZERO3_YAML,
        "-m",
        "aha",
        "train",
        "--x",
    ]
    with pytest.raises(LaunchError, match="rendezvous folder"):
        train_command(zero3(2), [], accelerate_config=ZERO3_YAML)


def test_server_mode_across_nodes_hands_aha_nodes_a_wrapper_its_parser_takes() -> None:
    run = zero3(2, "server", device="cpu")
    argv = train_command(run, [], accelerate_config=ZERO3_YAML, rendezvous_dir="R", model="M")
    head = argv[: argv.index("--")]
    assert "--rehearsal" in head
    wrapper = json.loads(_after(head, "--server-wrapper"))
    assert wrapper[:4] == ["python", "-m", "aha", "with-vllm-server"]
    # what `aha nodes` appends on the server's node, through the wrapper's own parser
    args = vllm_server._parser("w").parse_args([*wrapper[4:], "--host", "10.0.0.3", "--whole-node"])
    assert (args.model, args.host, args.whole_node, args.gpus) == ("M", "10.0.0.3", True, 1)
    assert args.server_args == {}


def test_accelerate_takes_a_nodes_argv_as_torchrun_across_machines(monkeypatch) -> None:
    """The contract of the GPU branch: accelerate's own parser and DeepSpeed launcher turn one
    node's argv into torchrun's multi-node arguments, c10d at machine 0's address."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as accelerate_launch

    point = {"address": "10.0.0.1", "port": 29511}
    argv = nodes.accelerate_argv(
        sys.executable, point, nodes=2, machine_rank=1, per_node=4,
        args=["--config_file", ZERO3_YAML, "-m", "aha", "train", "--x"],
    )  # fmt: skip
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    args, _, _ = _validate_launch_command(args)
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    args.deepspeed_fields_from_accelerate_config = []  # what `accelerate launch` sets first
    monkeypatch.setattr(accelerate_launch, "is_port_in_use", lambda port: False)
    accelerate_launch.prepare_deepspeed_cmd_env(args)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("c10d", "10.0.0.1:29511")
    assert args.rdzv_conf == "is_host=0"  # only machine 0 hosts the store
    from torch.distributed.elastic.rendezvous.utils import _parse_rendezvous_config

    assert _parse_rendezvous_config(args.rdzv_conf) == {"is_host": "0"}  # torchrun's reading


def test_hosts_are_the_jobs_first_or_stand_ins_on_a_rehearsal() -> None:
    assert nodes.plan_hosts(2, ["a", "b", "c"], rehearsal=False) == ["a", "b"]
    assert nodes.plan_hosts(3, ["a"], rehearsal=True) is None
    with pytest.raises(LaunchError, match=r"runs\.r: needs 3 nodes, but runs in a SLURM job of 1"):
        nodes.plan_hosts(3, ["a"], rehearsal=False, run="runs.r")
    with pytest.raises(LaunchError, match="no SLURM job; run it with the slurm profile"):
        nodes.plan_hosts(2, [], rehearsal=False)


def test_slurm_hosts_come_from_scontrol_with_only_the_job_id_left(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        '  job) echo "JobId=$4 JobName=x NodeList=n[1-2] BatchHost=n1" ;;\n'
        '  hostnames) echo "n1"; echo "n2" ;;\n'
        "esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nodes.slurm_hosts({"SLURM_JOB_ID": "7"}) == ["n1", "n2"]
    assert nodes.slurm_hosts({"SLURM_JOB_NODELIST": "n[1-2]"}) == ["n1", "n2"]
    assert nodes.slurm_hosts({}) == []


def test_srun_runs_one_task_per_node_and_stops_all_when_one_fails() -> None:
    assert nodes.srun_argv(["a", "b"], ["cmd"]) == [
        "srun", "--kill-on-bad-exit=1", "--nodes", "2", "--ntasks", "2",
        "--ntasks-per-node", "1", "--nodelist", "a,b", "cmd",
    ]  # fmt: skip
    assert nodes.srun_argv(["a"], ["c"], cpus=8)[8:10] == ["--cpus-per-task", "8"]
    assert nodes.cpus_per_node({"NumCPUs": "32", "NumNodes": "2"}) == 16
    assert nodes.cpus_per_node({}) is None


def test_machine_rank_is_explicit_then_a_stand_in_then_srun() -> None:
    assert nodes.machine_rank(3, {"SLURM_PROCID": "1"}) == 3
    assert nodes.machine_rank(None, {"AHA_MACHINE_RANK": "2", "SLURM_PROCID": "1"}) == 2
    assert nodes.machine_rank(None, {"SLURM_PROCID": "1"}) == 1
    with pytest.raises(LaunchError, match="no machine rank"):
        nodes.machine_rank(None, {})


def test_machine_0_publishes_a_free_port_and_the_others_wait_bounded(tmp_path: Path) -> None:
    path = tmp_path / "rendezvous-1.json"
    with pytest.raises(LaunchError, match=rf"machine 0 wrote no rendezvous to {path}"):
        nodes.await_rendezvous(path, timeout=0.3, poll=0.05)
    point = nodes.publish_rendezvous(path, "127.0.0.1")
    assert point["address"] == "127.0.0.1" and 0 < point["port"] < 65536
    assert nodes.await_rendezvous(path, timeout=1) == point


def test_stand_in_nodes_stop_together_when_one_fails() -> None:
    """As srun --kill-on-bad-exit: the first failure ends the others, its status is the run's."""
    py = sys.executable
    fail = [py, "-c", "import os, sys; sys.exit(3 if os.environ['AHA_MACHINE_RANK'] == '1' else 0)"]
    ok = [py, "-c", "import os, sys; sys.exit(0)"]
    assert nodes.run_local_machines([ok, ok], grace=5) == 0
    assert nodes.run_local_machines([fail, fail], grace=5) == 3
    sleeper = [py, "-c", "import os, sys, time; r = os.environ['AHA_MACHINE_RANK']; "
               "sys.exit(4) if r == '1' else time.sleep(60)"]  # fmt: skip
    start = time.monotonic()
    assert nodes.run_local_machines([sleeper, sleeper], grace=5) == 4
    assert time.monotonic() - start < 30  # the sleeper was stopped, not waited for


def test_the_launcher_outlives_what_it_launched_when_preempted(tmp_path: Path) -> None:
    """SIGTERM to `aha nodes` goes to its child, and it returns only once the child is done
    (here a child that takes a second to save after SIGTERM), with the child's status."""
    import signal
    import subprocess

    done = tmp_path / "saved"
    child = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    time.sleep(1); open({str(done)!r}, 'w').write('x'); sys.exit(5)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    code = (
        "import sys\nfrom aha.launch.nodes import forwarding_call\n"
        f"sys.exit(forwarding_call([sys.executable, '-c', {child!r}]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 5
    assert done.exists()  # the child finished its save before the launcher returned
