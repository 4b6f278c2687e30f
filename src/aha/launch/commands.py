"""How a training run is launched, per mode, and how long a preempted run has to stop.

`train_command` is pure: it takes the job's `aha.run.Run`, the GPUs the job was given, and its
stop budget, and gives the argv to which the rule appends the `aha
train` arguments. What it launches is the run's mode's `launcher`:

- `python` (cpu, qlora): `python -m aha train ...`, one process (on one GPU, but for mode cpu).
- `accelerate` (zero3), vllm_mode colocate: `accelerate launch --config_file
  workflow/accelerate/zero3.yaml --num_processes GPUS --main_process_port 0 -m aha train ...`;
  vLLM runs inside every rank.
- `accelerate`, vllm_mode server: the same on GPUS - 1 processes, wrapped by `python -m aha
  with-vllm-server` (`aha.launch.vllm_server`), which serves the model with vLLM's own `vllm serve` on
  the last GPU, bound to 127.0.0.1, on ports it chooses when the job starts.

Ports are per job: `--main_process_port 0` makes accelerate pick a free port for torchrun's
rendezvous when the job starts (instead of 29500, which a second job on the node would find
busy), in both zero3 variants and still as one `accelerate launch` process tree.

The stop budget (`StopBudget`): SLURM sends SIGTERM `--signal=TERM@N` seconds before the time
limit (the train job's `slurm_extra`; DEFAULT_SIGNAL_LEAD_S without one). Every timeout of the
stop is derived from that N, so the layers stop in order within it: torchrun's ranks save, then
torchrun exits, then the wrapper stops the vLLM server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aha.launch.process_tree import KILL_WAIT_S
from aha.launch.vllm_sampler import CPU_KVCACHE_GIB
from aha.run import Run

# The lead of profiles/slurm's `--signal=TERM@300`; also the budget of a run with no such signal
# (a local run stopped with SIGTERM).
DEFAULT_SIGNAL_LEAD_S = 300
SLURM_DEFAULT_SIGNAL_TIME_S = 60  # `--signal=TERM` without @N: SLURM's own default lead
# The server saves nothing: SIGINT (its clean shutdown), SIGKILL this long after.
SERVER_GRACE_S = 30
# What the wrapper needs after the training command's grace: its server grace, and three bounded
# waits of KILL_WAIT_S (the command's tree after SIGKILL, the command's status, the server's tree
# after SIGKILL).
SERVER_STOP_MARGIN_S = SERVER_GRACE_S + 3 * int(KILL_WAIT_S)
# torchrun after its shutdown timeout: SIGKILL to the ranks, reaping them, its own exit.
LAUNCHER_EXIT_MARGIN_S = 15
MIN_SHUTDOWN_TIMEOUT_S = 30  # a floor: less cannot hold a step and a save of any real model
# `--signal=[{R|B}:]<sig>[@<seconds>]`, <sig> TERM, SIGTERM or 15 (SLURM's sbatch syntax).
_SIGNAL = re.compile(r"--signal[= ]\s*(?:[RB]{1,2}:)?(?:SIG)?(?:TERM|15)(?:@(\d+))?(?!\S)", re.I)


class LaunchError(ValueError):
    """A run that cannot be launched with the given resources; one line naming the fix."""


def signal_lead(slurm_extra: str | None) -> tuple[int, str]:
    """(seconds between SIGTERM and the time limit, where that number comes from)."""
    match = _SIGNAL.search(slurm_extra or "")
    if match is None:
        return DEFAULT_SIGNAL_LEAD_S, "default: the job's slurm_extra has no --signal=TERM@N"
    lead = int(match.group(1)) if match.group(1) else SLURM_DEFAULT_SIGNAL_TIME_S
    return lead, f"slurm_extra {match.group(0).strip()}"


@dataclass(frozen=True)
class StopBudget:
    """The seconds SIGTERM ahead of the time limit leaves each layer of a training job.

    `lead_s` is the one setting. A zero3 run's torchrun gives its ranks `shutdown_timeout_s`
    (TORCH_ELASTIC_SHUTDOWN_TIMEOUT) to finish their step and save, then needs
    LAUNCHER_EXIT_MARGIN_S itself; in server mode that all happens within the wrapper's
    `wrapper_grace_s`, which leaves SERVER_STOP_MARGIN_S to stop the server.
    """

    lead_s: int
    source: str
    launcher: bool = False  # torchrun (the accelerate launcher: zero3)
    server: bool = False  # the vLLM server wrapper (vllm_mode server)

    @property
    def wrapper_grace_s(self) -> int:
        return self.lead_s - SERVER_STOP_MARGIN_S

    @property
    def shutdown_timeout_s(self) -> int:
        outer = self.wrapper_grace_s if self.server else self.lead_s
        return outer - LAUNCHER_EXIT_MARGIN_S

    def describe(self) -> str:
        """The whole budget in one log line (the train rule writes it first)."""
        head = f"stop budget: SIGTERM {self.lead_s} s before the time limit ({self.source})"
        if not self.launcher:
            return f"{head}: the trainer saves at the end of its step and exits"
        ranks = (
            f"torchrun gives its ranks {self.shutdown_timeout_s} s to finish the step and save "
            f"(TORCH_ELASTIC_SHUTDOWN_TIMEOUT), then {LAUNCHER_EXIT_MARGIN_S} s to exit"
        )
        if not self.server:
            return f"{head}: {ranks}"
        return (
            f"{head}: the training command gets {self.wrapper_grace_s} s (--grace), in which "
            f"{ranks}; then {SERVER_STOP_MARGIN_S} s to stop the vLLM server "
            f"(--server-grace {SERVER_GRACE_S})"
        )


def stop_budget(run: Run, slurm_extra: str | None = None) -> StopBudget:
    """The run's StopBudget from its train job's `slurm_extra`; LaunchError if too short."""
    lead, source = signal_lead(slurm_extra)
    ranks = run.mode.launcher == "accelerate"
    budget = StopBudget(lead, source, launcher=ranks, server=ranks and run.uses_vllm_server)
    if ranks and budget.shutdown_timeout_s < MIN_SHUTDOWN_TIMEOUT_S:
        margins = lead - budget.shutdown_timeout_s
        raise LaunchError(
            f"runs.{run.name}: {source} leaves the ranks "
            f"{budget.shutdown_timeout_s} s to save ({margins} s go to the stop's other steps); "
            f"set N in the train job's slurm_extra --signal=TERM@N to a step plus its checkpoint "
            f"save plus {margins} s, at least {margins + MIN_SHUTDOWN_TIMEOUT_S}"
        )
    return budget


# A CPU rehearsal (device cpu) differs from the GPU launch in these settings only: DeepSpeed's
# CPU accelerator, a KV cache size for vLLM's CPU build (GiB) and fp32. Not accelerate's --cpu: it
# would run one plain process without DeepSpeed (aha.stages.train gives ZeRO-3 `ddp_backend: gloo`).
CPU_ENV = ("DS_ACCELERATOR=cpu", f"VLLM_CPU_KVCACHE_SPACE={CPU_KVCACHE_GIB}")
# ZeRO-3 ranks on the CPU train in fp32: transformers refuses bf16 without a GPU (short of
# use_cpu, see above), so the rehearsal sets grpo.bf16 false and the zero3 yaml's bf16 mixed
# precision, which DeepSpeed would otherwise enable, is switched off on the command line.
CPU_ACCELERATE = ("--mixed_precision", "no")


def pinned_ports(run: Run) -> dict[str, int]:
    """The server-mode ports the run's grpo pins (wrapper flag -> port); the rest are chosen."""
    flags = {"--port": "vllm_server_port", "--group-port": "vllm_group_port"}
    return {
        flag: int(run.grpo[key]) for flag, key in flags.items() if run.grpo.get(key) is not None
    }


def train_command(
    run: Run,
    train_args: Sequence[str],
    *,
    gpus: int | None = None,
    python: str = "python",
    model: str | None = None,
    server_log: str | None = None,
    accelerate_config: str | None = None,
    budget: StopBudget | None = None,
    rendezvous_dir: str | None = None,
) -> list[str]:
    """The argv that trains `run` on its `devices` (per node) with its mode's launcher.

    The devices are GPUs, or on a CPU rehearsal (`device: cpu`) the CPU processes that stand in
    for them: the split between training and server is the same. `train_args` are appended
    after `aha train` (pass [] to get a prefix the rule extends). `model` is what the vLLM
    server serves in server mode (default: the run's model.name_or_path); `server_log` is where
    the server's output goes. `accelerate_config` is the accelerate + DeepSpeed yaml of the
    accelerate launcher: the rule passes its path. `budget` (default: `stop_budget` without
    slurm_extra) sets the timeouts of a preempted run's stop. `gpus`, the job's (its
    `resources: gpu`), replace the run's on cuda (`Run.on`). A run across nodes
    (`nodes` > 1) runs `aha nodes` (aha.launch.nodes), whose machine 0 writes its rendezvous
    into `rendezvous_dir`, a folder every node sees.
    """
    run = run.on(gpus)
    mode, devices = run.mode, run.devices
    unit = "CPU process" if run.rehearsal else "GPU"
    train = ["-m", "aha", "train", *train_args]
    env = ["env", *CPU_ENV] if run.rehearsal else []
    if mode.launcher == "python":
        if devices < mode.gpus:
            raise LaunchError(
                f"runs.{run.name}: mode {mode.name} needs {mode.gpus} {unit} (resources gpu={devices})"
            )
        return [*env, python, *train]
    server = run.uses_vllm_server
    if run.training_processes < 1:
        need = f"2 {unit}es" if run.rehearsal else "2 GPUs"
        need = f"{need} (one trains, the last serves vLLM)" if server else f"1 {unit}"
        raise LaunchError(
            f"runs.{run.name}: mode {mode.name} needs at least {need} (resources gpu={devices})"
        )
    if not accelerate_config:
        raise LaunchError(f"runs.{run.name}: mode {mode.name} needs an accelerate config file")
    budget = budget or stop_budget(run)
    timeout = ["env", f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={budget.shutdown_timeout_s}", *env[1:]]
    config = ["--config_file", accelerate_config]
    rest = [*(CPU_ACCELERATE if run.rehearsal else []), *train]
    wrapper = _server_wrapper(run, python, model, server_log, budget) if server else []
    if run.nodes > 1:
        if not rendezvous_dir:
            raise LaunchError(f"runs.{run.name}: a run across nodes needs a rendezvous folder")
        nodes = [*timeout, python, "-m", "aha", "nodes", "--nodes", str(run.nodes),
                 "--per-node", str(devices), "--rendezvous-dir", rendezvous_dir,
                 "--grace", str(budget.shutdown_timeout_s), "--name", f"runs.{run.name}"]  # fmt: skip
        nodes += ["--rehearsal"] if run.rehearsal else []
        nodes += ["--server-wrapper", json.dumps(wrapper)] if wrapper else []
        return [*nodes, "--", *config, *rest]
    launch = [
        *timeout,
        python,
        "-m",
        "accelerate.commands.launch",  # = `accelerate launch`, from this interpreter
        *config,
        "--num_processes",
        str(run.training_processes),
        "--main_process_port",
        "0",  # a free rendezvous port, chosen by accelerate as the job starts
        *rest,
    ]
    if not server:
        return launch
    return [*env, *wrapper, "--", *launch]


def _server_wrapper(
    run: Run, python: str, model: str | None, server_log: str | None, budget: StopBudget
) -> list[str]:
    """`aha with-vllm-server` of a server-mode run, up to its `--` (and across nodes --host)."""
    served = model or run.model.get("name_or_path")
    if not served:
        raise LaunchError(f"runs.{run.name}: no model to serve (model.name_or_path)")
    wrapper = [python, "-m", "aha", "with-vllm-server", "--model", served]
    wrapper += ["--gpus", str(run.devices)]
    for flag, port in pinned_ports(run).items():
        wrapper += [flag, str(port)]
    wrapper += ["--grace", str(budget.wrapper_grace_s), "--server-grace", str(SERVER_GRACE_S)]
    if run.vllm_server:
        wrapper += ["--server-args", json.dumps(run.vllm_server, sort_keys=True)]
    if server_log:
        wrapper += ["--server-log", server_log]
    return wrapper
