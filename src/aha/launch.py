"""How a training run is launched, per mode, and the vLLM server that server-mode runs need.

`train_command` is pure: the train rule calls it with the run's settings and its GPU
resources and gets the argv prefix to which it appends the `aha train` arguments.

- cpu, qlora: `python -m aha train ...` (one process; qlora uses one GPU).
- zero3, vllm_mode colocate: `accelerate launch --config_file workflow/accelerate/zero3.yaml
  --num_processes GPUS -m aha train ...`; vLLM runs inside every training process.
- zero3, vllm_mode server: the same on GPUS - 1 processes, wrapped by `python -m aha
  with-vllm-server`, which serves the model with `trl vllm-serve` on the last GPU.

The wrapper itself (`python -m aha with-vllm-server`) is `aha.vllm_server`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aha.config import training_processes, uses_vllm_server
from aha.sample_vllm import CPU_KVCACHE_GIB

DEFAULT_PORT = 8000  # GRPOConfig.vllm_server_port's default


class LaunchError(ValueError):
    """A run that cannot be launched with the given resources; one line naming the fix."""


# torchrun kills its workers 30 s after forwarding SIGTERM (SLURM's time-limit signal): too short
# for a ZeRO-3 checkpoint save. Measured under the SLURM profile: 240 s lets every rank finish its
# save; the server wrapper waits a minute longer before it stops the training command's tree.
ELASTIC_SHUTDOWN_TIMEOUT_S = 240
TRAIN_GRACE_S = ELASTIC_SHUTDOWN_TIMEOUT_S + 60
# A CPU rehearsal (device cpu) differs from the GPU launch in these settings only: DeepSpeed's
# CPU accelerator, a KV cache size for vLLM's CPU build (GiB) and fp32. Not accelerate's --cpu: it
# would run one plain process without DeepSpeed (aha.train gives ZeRO-3 `ddp_backend: gloo`).
CPU_ENV = ("DS_ACCELERATOR=cpu", f"VLLM_CPU_KVCACHE_SPACE={CPU_KVCACHE_GIB}")
# ZeRO-3 ranks on the CPU train in fp32: transformers refuses bf16 without a GPU (short of
# use_cpu, see above), so the rehearsal sets grpo.bf16 false and the zero3 yaml's bf16 mixed
# precision, which DeepSpeed would otherwise enable, is switched off on the command line.
CPU_ACCELERATE = ("--mixed_precision", "no")


def server_port(run_spec: dict[str, Any]) -> int:
    return int((run_spec.get("grpo") or {}).get("vllm_server_port", DEFAULT_PORT))


def train_command(
    run_spec: dict[str, Any],
    gpus: int,
    python: str,
    train_args: Sequence[str],
    *,
    model: str | None = None,
    server_log: str | None = None,
    accelerate_config: str | None = None,
) -> list[str]:
    """The argv that trains `run_spec` (a `aha.config.run_view`) on `gpus` devices.

    `gpus` are GPUs, or on a CPU rehearsal (`device: cpu`) the CPU processes that stand in for
    them (`aha.config.default_devices`): the split between training and server is the same.
    `train_args` are appended after `aha train` (pass [] to get a prefix the rule extends).
    `model` is what the vLLM server serves in server mode (default: the run's
    model.name_or_path); `server_log` is where the server's output goes. `accelerate_config`
    is the accelerate + DeepSpeed yaml of a zero3 run: the rule passes its path.
    """
    mode = run_spec.get("mode")
    name = run_spec.get("name", "?")
    on_cpu = run_spec.get("device", "cuda") == "cpu" and mode != "cpu"
    unit = "CPU process" if on_cpu else "GPU"
    train = ["-m", "aha", "train", *train_args]
    if mode == "cpu":
        return [python, *train]
    env = ["env", *CPU_ENV] if on_cpu else []
    if mode == "qlora":
        if gpus < 1:
            raise LaunchError(f"runs.{name}: mode qlora needs 1 {unit} (resources gpu={gpus})")
        return [*env, python, *train]
    if mode != "zero3":
        raise LaunchError(f"runs.{name}.mode: {mode!r} is not one of cpu, qlora, zero3")
    server = uses_vllm_server(run_spec)
    processes = training_processes(run_spec, gpus)
    if processes < 1:
        need = f"2 {unit}es" if on_cpu else "2 GPUs"
        need = f"{need} (one trains, the last serves vLLM)" if server else f"1 {unit}"
        raise LaunchError(f"runs.{name}: mode zero3 needs at least {need} (resources gpu={gpus})")
    if not accelerate_config:
        raise LaunchError(f"runs.{name}: mode zero3 needs an accelerate config file")
    launch = [
        "env",
        f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={ELASTIC_SHUTDOWN_TIMEOUT_S}",
        *env[1:],
        python,
        "-m",
        "accelerate.commands.launch",  # = `accelerate launch`, from this interpreter
        "--config_file",
        accelerate_config,
        "--num_processes",
        str(processes),
        *(CPU_ACCELERATE if on_cpu else []),
        *train,
    ]
    if not server:
        return launch
    served = model or (run_spec.get("model") or {}).get("name_or_path")
    if not served:
        raise LaunchError(f"runs.{name}: no model to serve (model.name_or_path)")
    wrapper = [
        *env,
        python,
        "-m",
        "aha",
        "with-vllm-server",
        "--model",
        served,
        "--gpus",
        str(gpus),
        "--port",
        str(server_port(run_spec)),
        "--grace",
        str(TRAIN_GRACE_S),
    ]
    if run_spec.get("vllm_server"):
        wrapper += ["--server-args", json.dumps(run_spec["vllm_server"], sort_keys=True)]
    if server_log:
        wrapper += ["--server-log", server_log]
    return [*wrapper, "--", *launch]
