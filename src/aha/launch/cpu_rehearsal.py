"""The two places where a CPU rehearsal (`device: cpu`) must bend the GPU stack, and nothing else.

Everything else a rehearsal runs is the GPU code path itself: the same launchers, DeepSpeed
ZeRO-3 on gloo ranks, bitsandbytes NF4, vLLM's CPU build. Two calls of that path cannot run on a
CPU, and each is replaced here, only on a rehearsal (`aha.run.Run.rehearsal`: a GPU mode on
device cpu), with a warning in the log:

1. Colocated vLLM reloads the policy's weights into its engine after every optimizer step
   (`model.load_weights`). vLLM's CPU build prepacks each linear layer's weight for oneDNN and
   replaces the weight with an empty Parameter
   (`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm(..., remove_weight=True)`),
   so the reload fails (`'Parameter' object has no attribute 'weight_loader'`).
   `keep_vllm_cpu_weights` keeps the weights and computes those layers with
   `torch.nn.functional.linear`, so the reload works: the weight sync runs for real.
2. Server mode syncs weights to the `vllm serve` server over NCCL only
   (`trl.generation.vllm_client.VLLMClient.init_communicator` refuses a non-CUDA device, and
   vLLM 0.30's other transfer backend is CUDA IPC). `skip_server_weight_sync` makes
   `init_communicator` and `update_named_params` no-ops: the server keeps generating from the
   base weights, so the rehearsal exercises the server, the HTTP generation, the wrapper and the
   DeepSpeed ranks, but not the sync. docs/gpu-validation.md names this call.

Both patches are applied in the training process before TRL builds its vLLM engine or client
(colocate mode runs vLLM in-process, `distributed_executor_backend="external_launcher"`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aha.run import Run

log = logging.getLogger("aha.launch.cpu_rehearsal")


def keep_vllm_cpu_weights() -> None:
    """Make vLLM's CPU linear layers keep their weights, so colocate weight sync can reload them."""
    import torch
    from vllm.model_executor.layers import utils

    if getattr(utils.dispatch_cpu_unquantized_gemm, "_aha_keeps_weights", False):
        return
    original = utils.dispatch_cpu_unquantized_gemm

    def dispatch_keeping_weights(layer: torch.nn.Module, remove_weight: bool) -> None:
        if not remove_weight:
            original(layer, remove_weight)
            return
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    dispatch_keeping_weights._aha_keeps_weights = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weights
    log.warning(
        "CPU rehearsal: vLLM's CPU linear layers keep their weights (torch linear instead of a "
        "prepacked kernel) so the colocated engine can reload them after each step"
    )


def skip_server_weight_sync() -> None:
    """Make the trainer's vLLM client skip the NCCL-only weight sync (server keeps base weights)."""
    from trl.generation.vllm_client import VLLMClient

    if getattr(VLLMClient.init_communicator, "_aha_skipped", False):
        return

    def init_communicator(self: Any, device: Any = 0) -> None:
        log.warning(
            "CPU rehearsal: VLLMClient.init_communicator skipped (NCCL only); the vLLM server "
            "generates from the weights it loaded, not the policy's updates"
        )

    def update_named_params(self: Any, metadata: Any, named_params: Any) -> None:
        for _ in named_params:  # drain: ZeRO-3 gathers run inside the iterator on every rank
            pass

    init_communicator._aha_skipped = True  # type: ignore[attr-defined]
    VLLMClient.init_communicator = init_communicator
    VLLMClient.update_named_params = update_named_params


def prepare(run: Run) -> None:
    """Apply what the CPU rehearsal of `run` needs where TRL generates with vLLM: its server
    mode's weight sync skipped, or its colocated engine's weights kept (nothing without vLLM,
    nothing outside a rehearsal)."""
    if not run.rehearsal or not run.grpo.get("use_vllm"):
        return
    if run.grpo.get("vllm_mode") == "server":  # what TRL's client does, whatever the mode
        skip_server_weight_sync()
    else:
        keep_vllm_cpu_weights()
