"""Sampling a checkpoint with vLLM: the GPU backend of `python -m aha sample`.

Same contract as the HF path in `aha.stages.sample`: for every prompt, `k` completions in order, each
`(text, num_tokens, truncated)`. A LoRA adapter is loaded on its base with `enable_lora=True` and applied
per request through `LoRARequest`, which avoids writing a merged copy of a 3B model per
checkpoint. A ZeRO-3 checkpoint holds full 16-bit weights (zero3_save_16bit_model) and loads
like any model directory. A qlora run is not sampled here: its NF4 base needs bitsandbytes,
which vLLM 0.30 does not have (the qlora row of `aha.run.MODES`). vLLM is imported
only here, inside the function, so nothing else pays for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

# GiB of KV cache for vLLM's CPU build. Without it vLLM sizes the cache from
# `gpu_memory_utilization`, which on the CPU is a share of the NUMA node's memory (0.9 of it
# by default, refused when other jobs hold some). The rehearsal's launcher sets the same value.
CPU_KVCACHE_GIB = "1"
# On the CPU the engine runs in the stage's own process. vLLM's default (the GPU's) gives the
# engine core and its worker a process each, and each re-imports torch and vLLM: a sample of
# the tiny model took 33-37 s that way on two cores and 13-15 s in process, and only the
# in-process one repeated its completions exactly under the engine seed. Without
# multiprocessing vLLM keeps its one-process "uni" executor on the CPU (vllm/platforms/cpu.py).
# The GPU keeps vLLM's processes; test_rehearsal.py samples a checkpoint with them on the CPU
# too, so that path stays rehearsed. Set in the environment, either value wins.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

# vLLM compiles kernels for these LoRA ranks; an adapter's rank is rounded up to one of them.
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class Completion(NamedTuple):
    text: str
    num_tokens: int  # generated tokens, the end-of-sequence token included when one was emitted
    truncated: bool  # stopped by max_new_tokens, not by end of sequence


def lora_rank(adapter_dir: str | Path) -> int:
    """The `max_lora_rank` vLLM needs for this adapter (its `r`, rounded up to a supported rank)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter)")
    config = json.loads(config_path.read_text())
    ranks = [int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())]
    needed = max(ranks)
    for rank in _LORA_RANKS:
        if rank >= needed:
            return rank
    raise ValueError(f"{adapter_dir}: LoRA rank {needed} exceeds vLLM's maximum {_LORA_RANKS[-1]}")


def to_completions(request_outputs: list, k: int) -> list[Completion]:
    """Flatten vLLM `RequestOutput`s into prompt-major completions, k per prompt, checked."""
    completions: list[Completion] = []
    for i, request in enumerate(request_outputs):
        if len(request.outputs) != k:
            raise RuntimeError(
                f"vLLM returned {len(request.outputs)} completions for prompt {i}, not {k}"
            )
        for out in sorted(request.outputs, key=lambda o: o.index):
            completions.append(
                Completion(out.text, len(out.token_ids), out.finish_reason == "length")
            )
    return completions


def engine_kwargs(
    model_dir_or_id: str,
    adapter_dir: str | None,
    *,
    seed: int,
    device: str = "cuda",
) -> dict[str, Any]:
    """The `vllm.LLM` keyword arguments for one checkpoint, on `device`.

    Pure, so the CUDA branch's arguments can be checked by vLLM's own validation on a CPU
    (`aha.contracts`). No quantization: vLLM 0.30 has no bitsandbytes method, so a qlora run's
    NF4 steps are sampled by transformers (its row's `sampler`, `aha.run.MODES`). On the CPU (vLLM's CPU
    build) the engine runs eagerly: compiling its graphs costs more than the tiny rehearsal
    models take to sample.
    """
    kwargs: dict[str, Any] = {
        "model": model_dir_or_id,
        "dtype": "auto",  # the checkpoint's own: bf16 for the seed's zero3 runs
        "seed": seed,
        "gpu_memory_utilization": 0.9,
    }
    if device == "cpu":
        kwargs["enforce_eager"] = True
    if adapter_dir is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank(adapter_dir), max_loras=1)
    return kwargs


def engine_env(device: str) -> dict[str, str]:
    """The environment vLLM's engine reads at import on `device`: none on the GPU."""
    return dict(CPU_ENGINE_ENV) if device == "cpu" else {}


def sample_vllm(
    model_dir_or_id: str,
    adapter_dir: str | None,
    prompts: list[str],
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    *,
    device: str = "cuda",
) -> list[Completion]:
    """k completions for each prompt (prompt-major: prompt 0's k, then prompt 1's, ...).

    `prompts` are already-rendered strings (the chat template applied with the assistant
    prefill), so vLLM must not template them again: `LLM.generate` takes them as raw text.
    An adapter is applied per request (`LoRARequest`) on the base it was trained on.
    The seed is the engine's: a per-request `SamplingParams(seed=...)` kills vLLM's CPU worker
    (`CPU Generator does not use offset`), and the engine seed makes a run just as repeatable.
    """
    for name, value in engine_env(device).items():
        os.environ.setdefault(name, value)
    from vllm import LLM, SamplingParams

    lora_request = None
    if adapter_dir is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("checkpoint", 1, str(adapter_dir))
    llm = LLM(**engine_kwargs(model_dir_or_id, adapter_dir, seed=seed, device=device))
    params = SamplingParams(
        n=k,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_new_tokens,
    )
    outputs = llm.generate(prompts, params, lora_request=lora_request)
    return to_completions(outputs, k)
