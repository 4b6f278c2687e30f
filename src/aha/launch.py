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

ZERO3_CONFIG = "workflow/accelerate/zero3.yaml"
DEFAULT_PORT = 8000  # GRPOConfig.vllm_server_port's default
# The seed's reported run: 4 GPUs, 3 training + 1 serving vLLM.
DEFAULT_GPUS = {"cpu": 0, "qlora": 1, "zero3": 4}


class LaunchError(ValueError):
    """A run that cannot be launched with the given resources; one line naming the fix."""


def uses_vllm_server(run_spec: dict[str, Any]) -> bool:
    grpo = run_spec.get("grpo") or {}
    return (
        run_spec.get("mode") == "zero3"
        and bool(grpo.get("use_vllm"))
        and (grpo.get("vllm_mode", "colocate") == "server")
    )


def default_gpus(run_spec: dict[str, Any]) -> int:
    """GPUs the train rule asks for when the profile does not say: cpu 0, qlora 1, zero3 4."""
    return DEFAULT_GPUS[run_spec["mode"]]


ELASTIC_SHUTDOWN_TIMEOUT_S = 240


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
    accelerate_config: str = ZERO3_CONFIG,
) -> list[str]:
    """The argv that trains `run_spec` (a `aha.config.run_view`) on `gpus` GPUs.

    `train_args` are appended after `aha train` (pass [] to get a prefix the rule extends).
    `model` is what the vLLM server serves in server mode (default: the run's
    model.name_or_path); `server_log` is where the server's output goes.
    """
    mode = run_spec.get("mode")
    name = run_spec.get("name", "?")
    train = ["-m", "aha", "train", *train_args]
    if mode == "cpu":
        return [python, *train]
    if mode == "qlora":
        if gpus < 1:
            raise LaunchError(f"runs.{name}: mode qlora needs 1 GPU (resources gpu={gpus})")
        return [python, *train]
    if mode != "zero3":
        raise LaunchError(f"runs.{name}.mode: {mode!r} is not one of cpu, qlora, zero3")
    server = uses_vllm_server(run_spec)
    processes = gpus - 1 if server else gpus
    if processes < 1:
        need = "2 GPUs (one trains, the last serves vLLM)" if server else "1 GPU"
        raise LaunchError(f"runs.{name}: mode zero3 needs at least {need} (resources gpu={gpus})")
    launch = [
        # torchrun kills its workers 30 s after forwarding SIGTERM (SLURM's time-limit signal):
        # too short for a ZeRO-3 checkpoint save. Measured under the SLURM profile: 240 s lets
        # every rank finish its save before the job ends.
        "env",
        f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={ELASTIC_SHUTDOWN_TIMEOUT_S}",
        python,
        "-m",
        "accelerate.commands.launch",  # = `accelerate launch`, from this interpreter
        "--config_file",
        accelerate_config,
        "--num_processes",
        str(processes),
        *train,
    ]
    if not server:
        return launch
    served = model or (run_spec.get("model") or {}).get("name_or_path")
    if not served:
        raise LaunchError(f"runs.{name}: no model to serve (model.name_or_path)")
    wrapper = [
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
    ]
    if run_spec.get("vllm_server"):
        wrapper += ["--server-args", json.dumps(run_spec["vllm_server"], sort_keys=True)]
    if server_log:
        wrapper += ["--server-log", server_log]
    return [*wrapper, "--", *launch]
