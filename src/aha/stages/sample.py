"""Stage `sample`: k completions per eval prompt from one checkpoint (or the base model at step 0).

`--model` is a checkpoint manifest (`checkpoints/step-N.json`, written by `aha.stages.train`) or, for
step 0, a model directory or Hub id. A manifest of a QLoRA run points at an adapter, which is
loaded on its base model. Prompts are the training prompts (`aha.task.prompts.render`, assistant turn
prefilled), so the completion continues inside `<think>`.

Backends: `hf` is batched `generate` with left padding and a progress bar, deterministic for a
seed (each batch is seeded with `seed + batch index`); `vllm` is `aha.launch.vllm_sampler`, on the GPU or,
for a rehearsal (`--device cpu`), on vLLM's CPU build; `auto` takes vLLM when it is installed and
the device can run it, else `hf`. Both sample with exactly temperature/top_p from the config: a
model's own generation defaults (Qwen's top_k 20 and repetition penalty 1.05) are switched off,
as vLLM's `SamplingParams` has them off.

A run with a 4-bit base (qlora) passes `--quantization` at every step, step 0 included: the
base is loaded in 4 bit as training saw it, and an adapter is applied on top of it unmerged, so
every point of a run's curve is measured at one precision. Only the transformers backend does
that: vLLM 0.30 has no bitsandbytes method, so `auto` takes hf for it and `vllm` is refused. The
rule passes the run's choice (`aha.run.Run`: its mode's sampler, the same on a GPU and in a CPU
rehearsal).

Output: one JSON line per completion, prompt-major, with keys `SAMPLE_KEYS`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import formats
from aha.cli import failing_as, json_arg, parser, setup_logging
from aha.config import ConfigError
from aha.formats import CheckpointError, Manifest, write_atomic
from aha.launch import gpu_monitor
from aha.launch.vllm_sampler import Completion
from aha.sections import Sampling, section
from aha.task import prompts, rewards

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("aha.stages.sample")

SAMPLE_KEYS = (
    "run",
    "step",
    "prompt_id",
    "sample_index",
    "nums",
    "target",
    "pattern",
    "text",
    "num_tokens",
    "truncated",
    "format_reward",
    "equation_reward",
)
BACKENDS = ("auto", "hf", "vllm")


class SampleError(RuntimeError):
    """Bad sampling input (config, model reference, eval split); one line naming the problem."""


@dataclass(frozen=True)
class ModelRef:
    """What to load: full weights (`weights`), or an adapter (`weights`) on `base`."""

    weights: str
    base: str | None = None
    is_adapter: bool = False
    mode: str | None = None


def resolve_model(arg: str) -> ModelRef:
    """A manifest path -> its weights (and base for adapters); anything else is a model as is.

    Manifests are `aha.formats.Manifest`s: their weights are looked up beside them if the
    run folder was moved.
    """
    path = Path(arg)
    if path.suffix != ".json":
        if not path.is_dir():  # a Hub id: cached or reachable, else one line naming the fix
            from aha.launch import gpu

            try:
                gpu.resolve_model(arg)
            except gpu.GpuEnvError as err:
                raise SampleError(str(err)) from None
        return ModelRef(arg)
    try:
        manifest = Manifest.read(path)
    except CheckpointError as err:
        raise SampleError(str(err)) from None
    base = manifest.base_model if manifest.is_adapter else None
    return ModelRef(manifest.path, base, manifest.is_adapter, manifest.mode)


def load_tasks(path: Path) -> pd.DataFrame:
    """The eval split: id, nums, target, pattern (id = row number and pattern = None if absent)."""
    try:
        frame = formats.read_split(path)
    except formats.DataSourceError as err:
        raise SampleError(str(err)) from None
    if "id" not in frame.columns:
        frame["id"] = range(len(frame))
    if "pattern" not in frame.columns:
        frame["pattern"] = None
    return frame


# ----------------------------------------------------------------------------- HF backend


def hf_load_kwargs(quantization: dict[str, Any] | None, on: str) -> dict[str, Any]:
    """`from_pretrained` kwargs on `on` ("cuda" or "cpu"): fp32 on the CPU, the checkpoint's
    dtype on the GPU; with `quantization` (BitsAndBytesConfig kwargs) the 4-bit base on that
    device alone. Pure, so the CUDA branch is checked by transformers on a CPU
    (`aha.contracts`)."""
    kwargs: dict[str, Any] = {"dtype": "auto" if on == "cuda" else "float32"}
    if quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
        kwargs["device_map"] = {"": 0 if on == "cuda" else "cpu"}
    return kwargs


def load_hf(
    ref: ModelRef, quantization: dict[str, Any] | None = None, device: str = "cuda"
) -> tuple[Any, Any]:
    """(model, tokenizer) for `generate`, loaded with `hf_load_kwargs`.

    An adapter stays unmerged on its base, as it trained: merging into NF4 weights would
    dequantize them, and merging into bf16 ones rounds their sum, another precision either way.
    """
    import torch
    from transformers import AutoModelForCausalLM

    on = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    tokenizer = _load_tokenizer(ref)
    base = AutoModelForCausalLM.from_pretrained(
        ref.base if ref.is_adapter else ref.weights, **hf_load_kwargs(quantization, on)
    )
    model = base
    if ref.is_adapter:
        try:
            from peft import PeftModel
        except ImportError:
            raise SampleError("loading a LoRA adapter needs peft: pip install peft") from None
        model = PeftModel.from_pretrained(base, ref.weights)
    if not quantization:
        model = model.to(on)
    return model.eval(), tokenizer


def _load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    has_own = any(
        (Path(ref.weights) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    )
    source = ref.weights if has_own or not ref.is_adapter else ref.base
    return AutoTokenizer.from_pretrained(source, padding_side="left")


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the generation config's eos ids and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise SampleError(
            "the model defines no end-of-sequence token: cannot tell a finished completion"
        )
    return ids


def split_completion(
    tokens: Sequence[int], stops: Sequence[int], max_new_tokens: int
) -> tuple[list[int], int, bool]:
    """(text tokens, token count, truncated) of one generated row (pads after the stop ignored)."""
    stop_set = set(stops)
    for i, tok in enumerate(tokens):
        if tok in stop_set:
            return list(tokens[:i]), i + 1, False
    return list(tokens), min(len(tokens), max_new_tokens), True


def generate_hf(
    model: Any, tokenizer: Any, texts: Sequence[str], cfg: Sampling, progress: bool = True
) -> list[Completion]:
    """k completions per prompt (prompt-major) with batched `generate`, seeded per batch."""
    import torch
    from tqdm import tqdm

    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    rows = [text for text in texts for _ in range(cfg.k)]
    n_batches = math.ceil(len(rows) / cfg.batch_size)
    sampling = (
        {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
        if cfg.temperature > 0
        else {"do_sample": False}
    )
    out: list[Completion] = []
    device = next(model.parameters()).device
    bar = tqdm(total=len(rows), desc="sampling", unit="completion", disable=not progress)
    for b in range(n_batches):
        batch = rows[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {key: value.to(device) for key, value in enc.items()}
        torch.manual_seed(cfg.seed + b)
        with torch.inference_mode():
            generated = model.generate(
                **enc,
                **sampling,
                top_k=0,
                repetition_penalty=1.0,
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=stops,
                pad_token_id=pad_id,
            )
        for row in generated[:, enc["input_ids"].shape[1] :].tolist():
            tokens, count, truncated = split_completion(row, stops, cfg.max_new_tokens)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            out.append(Completion(text, count, truncated))
        bar.update(len(batch))
    bar.close()
    return out


def _sample_hf(
    ref: ModelRef,
    tasks: pd.DataFrame,
    cfg: Sampling,
    quantization: dict[str, Any] | None,
    device: str,
) -> list[Completion]:
    model, tokenizer = load_hf(ref, quantization, device)
    return generate_hf(model, tokenizer, render_prompts(tokenizer, tasks), cfg)


# ----------------------------------------------------------------------------- vLLM backend


def _sample_vllm(
    ref: ModelRef,
    tasks: pd.DataFrame,
    cfg: Sampling,
    quantization: dict[str, Any] | None,
    device: str,
) -> list[Completion]:
    """The vLLM backend (aha.launch.vllm_sampler): same prompts and output contract as `_sample_hf`."""
    from aha.launch import gpu
    from aha.launch import vllm_sampler as sample_vllm

    if quantization:
        raise SampleError(
            "--backend vllm with --quantization: vLLM 0.30 has no bitsandbytes quantization; "
            "sample an NF4 (qlora) run with --backend hf"
        )
    try:
        gpu.check_vllm_sampling(device)
    except gpu.GpuEnvError as err:
        raise SampleError(f"{err} (or pass --backend hf)") from None
    tokenizer = _load_tokenizer(ref)
    return sample_vllm.sample_vllm(
        ref.base if ref.is_adapter else ref.weights,
        ref.weights if ref.is_adapter else None,
        render_prompts(tokenizer, tasks),
        k=cfg.k,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        device=device,
    )


def choose_backend(backend: str, device: str = "cuda", quantized: bool = False) -> str:
    """`auto` -> vllm where it is installed and the device runs it (CUDA, or a CPU rehearsal),
    hf for a 4-bit base, which only transformers loads."""
    if backend not in BACKENDS:
        raise SampleError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if quantized:
        return "hf"
    from aha.launch import gpu

    if not gpu.has_package("vllm"):
        return "hf"
    if device == "cpu":
        return "vllm"
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


# ----------------------------------------------------------------------------- records


def render_prompts(tokenizer: Any, tasks: pd.DataFrame) -> list[str]:
    return [
        prompts.render(tokenizer, [int(n) for n in r.nums], int(r.target))
        for r in tasks.itertuples()
    ]


def to_records(
    run: str, step: int, tasks: pd.DataFrame, completions: Sequence[Completion], k: int
) -> list[dict[str, Any]]:
    """One record per completion (keys SAMPLE_KEYS), both rewards scored by aha.task.rewards."""
    if len(completions) != len(tasks) * k:
        raise SampleError(f"{len(completions)} completions for {len(tasks)} prompts x k={k}")
    import pandas as pd

    records = []
    for i, task in enumerate(tasks.itertuples()):
        nums, target = [int(n) for n in task.nums], int(task.target)
        pattern = None if pd.isna(task.pattern) else str(task.pattern)
        for j in range(k):
            c = completions[i * k + j]
            records.append(
                {
                    "run": run,
                    "step": step,
                    "prompt_id": int(task.id),
                    "sample_index": j,
                    "nums": nums,
                    "target": target,
                    "pattern": pattern,
                    "text": c.text,
                    "num_tokens": int(c.num_tokens),
                    "truncated": bool(c.truncated),
                    "format_reward": rewards.format_reward([c.text])[0],
                    "equation_reward": rewards.equation_reward(
                        [c.text], target=[target], nums=[nums]
                    )[0],
                }
            )
    return records


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """All lines at once through `write_atomic`: a killed job leaves no half file behind."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def sample(
    model: str,
    eval_path: Path,
    cfg: Sampling,
    run: str,
    step: int,
    out: Path,
    backend: str = "auto",
    *,
    device: str = "cuda",
    quantization: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample the eval split from one checkpoint and write `out`; returns the records."""
    ref = resolve_model(model)
    tasks = load_tasks(eval_path)
    chosen = choose_backend(backend, device, quantized=bool(quantization))
    log.info(
        "sampling %s (%s%s%s): %d prompts x k=%d, backend %s",
        ref.weights,
        "adapter on " + str(ref.base) if ref.is_adapter else "full weights",
        f", mode {ref.mode}" if ref.mode else "",
        f", base in 4 bit ({quantization.get('bnb_4bit_quant_type', 'fp4')})"
        if quantization
        else "",
        len(tasks),
        cfg.k,
        chosen,
    )
    sampler = _sample_vllm if chosen == "vllm" else _sample_hf
    completions = sampler(ref, tasks, cfg, quantization, device)
    records = to_records(run, step, tasks, completions, cfg.k)
    write_jsonl(Path(out), records)
    return records


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    p.add_argument(
        "--model",
        required=True,
        help="a checkpoint manifest (checkpoints/step-N.json) or, for step 0, a model dir or Hub id",
    )
    p.add_argument(
        "--eval", type=Path, required=True, help="eval split (results/data/eval.parquet)"
    )
    p.add_argument(
        "--sampling",
        required=True,
        type=json_arg(partial(section, Sampling)),
        metavar="JSON",
        help="the config's sampling section as JSON: k, temperature, top_p, max_new_tokens, "
        "batch_size, seed",
    )
    p.add_argument("--run", required=True, help="run name, copied into every record")
    p.add_argument("--step", type=int, required=True, help="checkpoint step (0 = base model)")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="hf (transformers generate), vllm, or auto: vllm when it is installed and the device "
        "runs it (the rule passes the run's: aha.run.Run.sample_backend)",
    )
    p.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cuda, or cpu for a rehearsal of a GPU run (vLLM's CPU build); default cuda",
    )
    p.add_argument(
        "--quantization",
        default=None,
        type=json_arg(),
        metavar="JSON",
        help="BitsAndBytesConfig kwargs as JSON (a run with a 4-bit base, every step): the base "
        "loads in 4 bit",
    )
    args = p.parse_args(argv)
    setup_logging()
    # GPU memory into $AHA_GPU_LOG while sampling (when nvidia-smi exists): the report's compute
    with gpu_monitor.monitor(), failing_as(prog, SampleError, ConfigError):
        records = sample(
            args.model,
            args.eval,
            args.sampling,
            args.run,
            args.step,
            args.out,
            args.backend,
            device=args.device,
            quantization=args.quantization,
        )
    n = len(records)
    fmt = sum(r["format_reward"] for r in records) / max(n, 1)
    ok = sum(r["equation_reward"] for r in records) / max(n, 1)
    log.info("wrote %s: %d completions, format %.3f, success %.3f", args.out, n, fmt, ok)
