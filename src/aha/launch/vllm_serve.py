"""The command line and environment of vLLM's own `vllm serve`, as the server-mode wrapper runs it.

`trl vllm-serve` is deprecated in TRL 1.16 and only execs vLLM's server with a few settings of
TRL's (trl/scripts/vllm_serve.py `build_command`); `server_command` builds that very command
without TRL in between, through this interpreter, and SERVER_ENV is the environment TRL adds.
`split_gpus` gives the server the job's last GPU, and `local_no_proxy` keeps the trainer's
requests to it off a cluster's http_proxy. Pure: the wrapper (`aha.launch.vllm_server`) and the contract checks (`aha.contracts`, vLLM's own
parser) call it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from aha.config import VLLM_SERVE_RESERVED
from aha.launch.commands import LaunchError

HOST = "127.0.0.1"  # the job's node, not the cluster
# What `trl vllm-serve` (trl/scripts/vllm_serve.py `build_command`, TRL 1.16) passes: its own
# defaults where vLLM 0.30's differ (the config's vllm_server options replace them) ...
TRL_SERVE_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.9, "model_impl": "vllm"}
# ... and what TRL's client needs: scale-out endpoints (/inference/v1/generate), the NCCL
# weight-transfer engine, log-probs after temperature scaling, no log-prob cap.
TRL_SERVE_REQUIRED: dict[str, Any] = {
    "enable_scale_out": True,
    "weight_transfer_config": {"backend": "nccl"},
    "logprobs_mode": "processed_logprobs",
    "max_logprobs": -1,
}
SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1"}  # the weight-transfer endpoints live behind dev mode


def server_flags(options: Mapping[str, Any]) -> list[str]:
    """`vllm serve` flags from a mapping of its options (underscore or dash names).

    True -> `--flag`, False -> `--no-flag` (vLLM's boolean options), None is left out, a list
    gives one value each (vLLM's nargs options), a mapping is passed as JSON.
    """
    flags: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def server_command(
    model: str,
    *,
    port: int,
    options: Mapping[str, Any] | None = None,
    host: str = HOST,
    python: str = sys.executable,
) -> list[str]:
    """`vllm serve MODEL` through this interpreter (no reliance on PATH), as TRL runs it, with
    the run's vllm_server `options`; run it with SERVER_ENV. LaunchError for an option the
    workflow sets."""
    merged = dict(TRL_SERVE_DEFAULTS)
    for key, value in (options or {}).items():
        name = key.replace("-", "_")
        if name in VLLM_SERVE_RESERVED:
            raise LaunchError(
                f"vllm_server.{key}: set by the workflow ({VLLM_SERVE_RESERVED[name]})"
            )
        merged[name] = value
    head = [python, "-m", "vllm.entrypoints.cli.main", "serve", model]
    return [*head, "--host", host, "--port", str(port), *server_flags(merged | TRL_SERVE_REQUIRED)]


def split_gpus(gpus: int, visible: str | None) -> tuple[str, str]:
    """(training devices, server device): the server takes the last of the first `gpus` ids.

    `visible` is CUDA_VISIBLE_DEVICES as the scheduler set it (None: ids 0..gpus-1).
    """
    if gpus < 2:
        raise LaunchError(f"a vLLM server run needs at least 2 GPUs, got {gpus}")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    if visible is None:
        ids = [str(i) for i in range(gpus)]
    if len(ids) < gpus:
        raise LaunchError(
            f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)}; "
            "request as many GPUs as --gpus"
        )
    ids = ids[:gpus]
    return ",".join(ids[:-1]), ids[-1]


def local_no_proxy(env: Mapping[str, str], host: str = HOST) -> dict[str, str]:
    """no_proxy and NO_PROXY: what `env` has in either, plus the server's host, 127.0.0.1 and
    localhost.

    TRL's client uses `requests`, which takes the environment's http_proxy: on a cluster that
    sets one without no_proxy, every request to this node's server would go to the proxy.
    """
    entries: list[str] = []
    for name in ("no_proxy", "NO_PROXY"):
        entries += [e.strip() for e in env.get(name, "").split(",") if e.strip()]
    merged = ",".join(dict.fromkeys([*entries, host, HOST, "localhost"]))
    return {"no_proxy": merged, "NO_PROXY": merged}
