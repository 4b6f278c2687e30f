"""Semantic checks of the experiment config and the per-run view of it.

The JSON schema (workflow/schemas/config.schema.yaml) checks types, enums, unknown keys and fills
defaults; this module checks what a schema cannot: relations between keys. Each failure is one
line that names the key, raised at DAG build so a bad sweep never reaches a GPU queue.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

MODES = ("cpu", "qlora", "zero3")
DEVICES = ("cuda", "cpu")
# Head sizes vLLM's CPU attention backend takes (vllm 0.30 `CPUAttentionBackend`): a rehearsal
# of a vLLM path on the CPU needs a tiny model whose hidden_size / heads is one of them.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# GPUs a run asks for when the profile does not say; the seed's reported run: 4 GPUs, 3 training
# + 1 serving vLLM. On a CPU rehearsal the same counts are CPU processes, ZeRO-3 kept at two
# ranks (plus the server) so two cores can hold it.
DEFAULT_GPUS = {"cpu": 0, "qlora": 1, "zero3": 4}


# The one schema: Snakemake validates the whole config with it at DAG build, and a stage run by
# hand validates its own section with it (aha.sections). It lives with the workflow, as
# Snakemake's conventions want; the package is installed from this repository (`pip install -e`).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config schema not found at {path}: install the package from its repository "
            "(pip install -e .) so the workflow's schema sits beside it"
        )
    return yaml.safe_load(path.read_text())


def schema_error(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> str | None:
    """One line naming the offending key, or None if `config` fits the schema.

    Snakemake's `validate` (which also fills defaults) reports an unknown top-level key by
    printing the whole schema; this says the same in one line first.
    """
    error = best_match(Draft202012Validator(load_schema(schema_path)).iter_errors(config))
    return None if error is None else _describe(error)


def _with_defaults(validator_class: Any) -> Any:
    """A validator that writes each absent property's `default` into the instance before it
    descends into it, so nested sections (`default: {}`) get their own defaults too."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties(validator: Any, props: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, props, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


_FillingValidator = _with_defaults(Draft202012Validator)


def validate_section(path: tuple[str, ...], raw: dict[str, Any]) -> dict[str, Any]:
    """`raw`, the config section at `path` (e.g. ("model", "tiny")), checked against the
    schema and completed with its defaults; ConfigError with one line naming the key."""
    schema = load_schema()
    for key in path:
        schema = schema["properties"][key]
    filled = copy.deepcopy(raw)
    error = best_match(_FillingValidator(schema).iter_errors(filled))
    if error is not None:
        raise ConfigError(_describe(error, prefix=path))
    return filled


def _describe(error: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    where = ".".join(str(p) for p in (*prefix, *error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if where else ""
        keys = ", ".join(prefix + k for k in extra)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{keys}: unknown key{'s' if len(extra) > 1 else ''}{hint}"
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        key = missing.group(1) if missing else "?"
        return f"{where + '.' if where else ''}{key}: required"
    return f"{where or '(top level)'}: {error.message}"


def run_view(config: dict[str, Any], run: str) -> dict[str, Any]:
    """The effective settings of one run: top-level model/checkpoints with its overrides."""
    if run not in config.get("runs", {}):
        raise ConfigError(f"runs.{run}: no such run (have: {', '.join(config.get('runs', {}))})")
    spec = config["runs"][run]
    model = copy.deepcopy(config.get("model", {}))
    model.update(spec.get("model") or {})
    if model.get("source") != "tiny":
        model.pop("tiny", None)  # the tiny model's recipe means nothing to a Hub model's run
    mode = spec.get("mode")
    return {
        "name": run,
        "mode": mode,
        "device": "cpu" if mode == "cpu" else config.get("device", "cuda"),
        "model": model,
        "checkpoints": list(spec.get("checkpoints") or config.get("checkpoints") or []),
        "grpo": dict(spec.get("grpo") or {}),
        "lora": dict(spec.get("lora") or {}),
        "quantization": dict(spec.get("quantization") or {}),
        "vllm_server": dict(spec.get("vllm_server") or {}),
        "weight_sync_timeout_s": spec.get("weight_sync_timeout_s"),
    }


MAX_SEED = 2**32 - 1  # numpy's seeds, which TRL's set_seed reaches


def run_seeds(config: dict[str, Any], run: str) -> list[int]:
    """The replicate seeds of one run: `runs.<run>.seeds`, or one seed when it is absent (the
    run's `grpo.seed` if it sets one, else the top-level `seed`: what TRL seeded it with before
    replicates existed, so a config without `seeds` trains exactly as before)."""
    spec = config["runs"][run]
    if spec.get("seeds"):
        return [int(s) for s in spec["seeds"]]
    return [int((spec.get("grpo") or {}).get("seed", config.get("seed", 42)))]


def replicate_view(config: dict[str, Any], run: str, seed: int) -> dict[str, Any]:
    """`run_view` of one replicate: its seed is TRL's (`grpo.seed`), replacing the run's own."""
    view = run_view(config, run)
    view["grpo"]["seed"] = int(seed)
    return view


def uses_vllm_server(run_spec: dict[str, Any]) -> bool:
    """A zero3 run generating on a separate `vllm serve` (the wrapper starts it)."""
    grpo = run_spec.get("grpo") or {}
    return (
        run_spec.get("mode") == "zero3"
        and bool(grpo.get("use_vllm"))
        and grpo.get("vllm_mode", "colocate") == "server"
    )


# How the server wrapper (aha.launch.vllm_server) tells `aha train` where this job's server is: it
# chooses the ports when the job starts, so they cannot be in the run's config.
ENV_SERVER_URL = "AHA_VLLM_SERVER_URL"
ENV_GROUP_PORT = "AHA_VLLM_GROUP_PORT"
# GRPOConfig keys the workflow sets in server mode: its server listens on the node's 127.0.0.1.
GRPO_SERVER_KEYS_SET = ("vllm_server_base_url", "vllm_server_host")
# `vllm serve` options the workflow sets, with why (runs.<run>.vllm_server may not set them).
VLLM_SERVE_RESERVED = {
    "model": "the run's model",
    "host": "127.0.0.1: the server is the job's, not the cluster's",
    "port": "grpo.vllm_server_port, or a free port chosen when the job starts",
    "weight_transfer_config": "TRL's NCCL weight sync",
    "logprobs_mode": "TRL: processed_logprobs, for its importance sampling",
    "max_logprobs": "TRL: -1, no cap",
    "enable_scale_out": "TRL's /inference/v1/generate",
}


def vllm_client_args(run_spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """GRPOConfig's server-mode client settings: the server and weight-sync group ports that
    the wrapper chose for this job (`env`). Nothing outside server mode or the wrapper."""
    if not uses_vllm_server(run_spec) or ENV_SERVER_URL not in env:
        return {}
    url = env[ENV_SERVER_URL]
    host, _, port = url.removeprefix("http://").partition(":")
    chosen = {"vllm_server_port": int(port), "vllm_group_port": int(env[ENV_GROUP_PORT])}
    grpo = run_spec.get("grpo") or {}
    for key, value in chosen.items():
        if grpo.get(key) is not None and int(grpo[key]) != value:
            raise ConfigError(f"grpo.{key}: {grpo[key]}, but the server wrapper serves on {value}")
    return {"vllm_server_base_url": url, "vllm_server_host": host, **chosen}


def _check_server_keys(key: str, spec: dict[str, Any]) -> None:
    """Server mode: no client address of the run's own, distinct pinned ports, no option of
    `vllm serve` that the workflow sets."""
    grpo = spec["grpo"]
    for name in GRPO_SERVER_KEYS_SET:
        if grpo.get(name) is not None:
            raise ConfigError(
                f"{key}.grpo.{name}: set by the workflow (its vLLM server listens on 127.0.0.1 "
                "of the job's node); pin grpo.vllm_server_port to fix the port"
            )
    ports = [grpo.get(k) for k in ("vllm_server_port", "vllm_group_port")]
    if None not in ports and ports[0] == ports[1]:
        raise ConfigError(f"{key}.grpo.vllm_group_port: {ports[1]} is vllm_server_port too")
    for option in spec.get("vllm_server") or {}:
        reason = VLLM_SERVE_RESERVED.get(option.replace("-", "_"))
        if reason:
            raise ConfigError(f"{key}.vllm_server.{option}: set by the workflow ({reason})")


def default_devices(run_spec: dict[str, Any]) -> int:
    """Devices of a training job: GPUs on cuda (cpu 0, qlora 1, zero3 4), CPU ranks on a rehearsal.

    A zero3 rehearsal trains on two CPU ranks, plus one slot for the server in server mode, so
    `train_command` splits the devices exactly as it splits GPUs.
    """
    mode = run_spec["mode"]
    if run_spec.get("device", "cuda") == "cpu" and mode == "zero3":
        return 3 if uses_vllm_server(run_spec) else 2
    return DEFAULT_GPUS[mode]


def training_processes(run_spec: dict[str, Any], devices: int) -> int:
    """Training processes on `devices`: all of them, less the vLLM server's in server mode."""
    if run_spec["mode"] != "zero3":
        return 1
    return devices - 1 if uses_vllm_server(run_spec) else devices


def completions_per_step(run_spec: dict[str, Any], devices: int) -> int:
    """Completions per optimizer step: per-device batch x processes x accumulation (TRL >= 0.15)."""
    grpo = run_spec.get("grpo") or {}
    per_device = int(grpo.get("per_device_train_batch_size", 8))
    accumulation = int(grpo.get("gradient_accumulation_steps", 1))
    return per_device * training_processes(run_spec, devices) * accumulation


def batch_notes(config: dict[str, Any]) -> list[str]:
    """One line per zero3 run that generates colocated, saying what its batch is.

    Colocated vLLM trains on every GPU where server mode trains on all but one: switching the
    seed's run (3 x 8 x 8 = 192 completions on 4 GPUs) to colocate makes it 256 without a word.
    """
    notes = []
    for name in config.get("runs", {}):
        view = run_view(config, name)
        grpo = view["grpo"]
        if view["mode"] != "zero3" or not grpo.get("use_vllm") or uses_vllm_server(view):
            continue
        devices = default_devices(view)
        batch = completions_per_step(view, devices)
        as_server = completions_per_step({**view, "grpo": {**grpo, "vllm_mode": "server"}}, devices)
        n_gen = int(grpo.get("num_generations", 8))
        notes.append(
            f"runs.{name}: vllm_mode colocate trains on all {devices} devices: {batch} completions "
            f"({batch // n_gen} prompts x {n_gen}) per optimizer step, where server mode on the same "
            f"devices gives {as_server}; set gradient_accumulation_steps to choose the batch"
        )
    return notes


def quantization_kwargs(mode: str, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """BitsAndBytesConfig kwargs (qlora only): 4-bit NF4 with bf16 compute unless overridden.

    Training loads the base this way, and sampling loads every step of a qlora run (step 0,
    the base alone, too) the same way, so a run's curve compares one precision.
    """
    if mode != "qlora":
        return None
    defaults = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    return {**defaults, **overrides}


def sampling_plan(run_spec: dict[str, Any], backend: str) -> tuple[str, dict[str, Any] | None]:
    """(sampler, BitsAndBytesConfig kwargs or None) for every step of a run, on either device.

    The one place that decides how a run is sampled; the rule passes both on, and the CPU
    rehearsal takes the very branch the GPU takes:
    - cpu: transformers, full weights;
    - qlora: transformers, the base in NF4 with the adapter unmerged, step 0 too, as training
      saw it. vLLM 0.30 has no bitsandbytes method (its registry lists awq, fp8, gptq, ... and
      `ModelConfig` refuses the name), and the out-of-tree plugin is unverified; transformers
      with bitsandbytes loads exactly the modules TRL trained;
    - zero3: `backend` (sampling.backend: auto, vllm or hf), the gathered 16-bit weights.
    """
    mode = run_spec["mode"]
    if mode == "cpu":
        return "hf", None
    if mode == "qlora":
        return "hf", quantization_kwargs(mode, run_spec.get("quantization") or {})
    return backend, None


def steps(config: dict[str, Any], run: str) -> list[int]:
    """Step 0 (the untrained baseline) followed by the run's checkpoint steps."""
    return [0, *run_view(config, run)["checkpoints"]]


def generation_batch_size(grpo: dict[str, Any], num_processes: int = 1) -> int:
    """TRL's generation batch: explicit, or per-device batch x processes x steps_per_generation."""
    if grpo.get("generation_batch_size"):
        return int(grpo["generation_batch_size"])
    per_device = int(grpo.get("per_device_train_batch_size", 8))
    spg = int(grpo.get("steps_per_generation") or grpo.get("gradient_accumulation_steps", 1))
    return per_device * num_processes * spg


def check(config: dict[str, Any]) -> None:
    """Raise ConfigError with one line naming the key on the first semantic problem."""
    runs = config.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ConfigError("runs: at least one run is required")
    model = config.get("model", {})
    if model.get("source") == "tiny":
        check_tiny(model.get("tiny", {}))
    if config.get("device") == "cpu" and model.get("source") == "tiny":
        _check_vllm_cpu_heads(config)
    check_dataset(config.get("dataset", {}))
    for name, spec in runs.items():
        _check_run(config, name, spec)


def check_tiny(tiny: dict[str, Any]) -> None:
    """model.tiny: heads that split the hidden size and share key/value heads evenly."""
    heads, kv = tiny.get("num_attention_heads", 1), tiny.get("num_key_value_heads", 1)
    if heads % kv:
        raise ConfigError(
            f"model.tiny.num_key_value_heads: {kv} must divide num_attention_heads ({heads})"
        )
    if tiny.get("hidden_size", heads) % heads:
        raise ConfigError("model.tiny.hidden_size: must be a multiple of num_attention_heads")


def check_dataset(ds: dict[str, Any]) -> None:
    """dataset: a path where the source needs one, ranges that hold a value, an eval subset
    the test split can hold, enough generated tasks to draw num_samples from."""
    if ds.get("source") == "path" and not ds.get("path"):
        raise ConfigError("dataset.path: required when dataset.source is 'path'")
    gen = ds.get("generate", {})
    for key in ("number_range", "target_range"):
        lo, hi = gen.get(key, [0, 1])
        if lo > hi:
            raise ConfigError(f"dataset.generate.{key}: [{lo}, {hi}] is empty (min > max)")
    num_tasks, num_samples = gen.get("num_tasks"), ds.get("num_samples")
    if num_tasks is not None and num_samples is not None and num_tasks < num_samples:
        raise ConfigError(
            f"dataset.generate.num_tasks: {num_tasks} is below dataset.num_samples ({num_samples})"
        )
    # the split's own size: ceil, as datasets' train_test_split and the data stage size it
    n_test = math.ceil(ds.get("num_samples", 0) * ds.get("test_size", 0))
    if {"num_samples", "test_size", "eval_size"} <= ds.keys() and ds["eval_size"] > n_test:
        raise ConfigError(
            f"dataset.eval_size: {ds.get('eval_size')} exceeds the test split ({n_test} tasks)"
        )


def _check_vllm_cpu_heads(config: dict[str, Any]) -> None:
    """A CPU rehearsal that samples or generates with vLLM needs a head size vLLM's CPU takes."""
    # `auto` takes vLLM on a rehearsal wherever it is installed (aha.stages.sample.choose_backend)
    vllm = config.get("sampling", {}).get("backend", "auto") != "hf" or any(
        (spec.get("grpo") or {}).get("use_vllm") for spec in config["runs"].values()
    )
    tiny = config["model"].get("tiny", {})
    head = tiny.get("hidden_size", 192) // tiny.get("num_attention_heads", 4)
    if vllm and head not in VLLM_CPU_HEAD_SIZES:
        raise ConfigError(
            f"model.tiny.hidden_size: {tiny.get('hidden_size')} / num_attention_heads gives head "
            f"size {head}; vLLM on the CPU (device cpu) takes {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}"
        )


def _check_run(config: dict[str, Any], name: str, spec: Any) -> None:
    key = f"runs.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: must be a mapping with 'mode' and 'grpo'")
    if spec.get("mode") not in MODES:
        raise ConfigError(f"{key}.mode: {spec.get('mode')!r} is not one of {', '.join(MODES)}")
    if not isinstance(spec.get("grpo"), dict):
        raise ConfigError(f"{key}.grpo: required (GRPOConfig options for this run)")
    grpo = spec["grpo"]
    max_steps = grpo.get("max_steps")
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"{key}.grpo.max_steps: required, a positive integer (got {max_steps!r})")
    seeds = spec.get("seeds")
    if seeds is not None:
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
        bad += [s for s in seeds if isinstance(s, int) and not 0 <= s <= MAX_SEED]
        if bad or not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(
                f"{key}.seeds: distinct integers in 0..{MAX_SEED}, at least one (got {seeds!r})"
            )
    view = run_view(config, name)
    ckpt_key = f"{key}.checkpoints" if spec.get("checkpoints") else "checkpoints"
    ckpts = view["checkpoints"]
    if any(not isinstance(s, int) or s <= 0 for s in ckpts):
        raise ConfigError(f"{ckpt_key}: steps must be positive integers (got {ckpts})")
    if any(b <= a for a, b in itertools.pairwise(ckpts)):
        raise ConfigError(f"{ckpt_key}: steps must be strictly ascending (got {ckpts})")
    if ckpts[-1] > max_steps:
        raise ConfigError(
            f"{ckpt_key}: step {ckpts[-1]} is beyond {key}.grpo.max_steps ({max_steps})"
        )
    n_gen = grpo.get("num_generations", 8)
    if not isinstance(n_gen, int) or n_gen < 2:
        raise ConfigError(f"{key}.grpo.num_generations: must be an integer >= 2 (got {n_gen!r})")
    batch = generation_batch_size(grpo)
    if batch % n_gen:
        raise ConfigError(
            f"{key}.grpo.num_generations: {n_gen} does not divide the generation batch ({batch} "
            "= per_device_train_batch_size x steps_per_generation, or generation_batch_size)"
        )
    if spec["mode"] == "cpu" and view["model"].get("source") != "tiny" and grpo.get("bf16"):
        raise ConfigError(f"{key}.grpo.bf16: not available in mode cpu")
    if spec["mode"] != "qlora" and (spec.get("lora") or spec.get("quantization")):
        raise ConfigError(f"{key}.lora: LoRA/quantization settings need mode qlora")
    if spec.get("vllm_server") and not (
        spec["mode"] == "zero3" and grpo.get("vllm_mode") == "server"
    ):
        raise ConfigError(f"{key}.vllm_server: needs mode zero3 with grpo.vllm_mode server")
    if uses_vllm_server(spec):
        _check_server_keys(key, spec)
