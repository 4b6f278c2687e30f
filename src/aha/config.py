"""Validation of the experiment config: the schema, then the relations between keys.

The JSON schema (workflow/schemas/config.schema.yaml) checks types, enums, unknown keys and fills
defaults, the only home of a default; this module checks what a schema cannot: relations between
keys. Each failure is one line that names the key, raised at DAG build so a bad sweep never
reaches a GPU queue. What a run's mode implies, and the checks of a run against its mode, are
`aha.run` (the typed Run and the table of modes), which builds on this module.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

# Head sizes vLLM's CPU attention backend takes (vllm 0.30 `CPUAttentionBackend`): a rehearsal
# of a vLLM path on the CPU needs a tiny model whose hidden_size / heads is one of them.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


# The one schema: Snakemake validates the whole config with it at DAG build, and a stage run by
# hand validates its own section with it (aha.sections). It lives with the workflow, as
# Snakemake's conventions want; the package is installed from this repository (`pip install -e`).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema as a fresh dict (parsed once per process)."""
    return copy.deepcopy(_parsed_schema(str(Path(path).resolve())))


@functools.cache
def _parsed_schema(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(
            f"config schema not found at {path}: install the package from its repository "
            "(pip install -e .) so the workflow's schema sits beside it"
        )
    return yaml.safe_load(Path(path).read_text())


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
    """`raw`, the config section at `path` (e.g. ("model", "tiny"); () the whole config),
    checked against the schema and completed with its defaults, a copy; ConfigError with one
    line naming the key."""
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


MAX_SEED = 2**32 - 1  # numpy's seeds, which TRL's set_seed reaches


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


def check_server_keys(key: str, grpo: dict[str, Any], vllm_server: dict[str, Any]) -> None:
    """A run in server mode (`key`: runs.NAME): no client address of its own, distinct pinned
    ports, no option of `vllm serve` that the workflow sets."""
    for name in GRPO_SERVER_KEYS_SET:
        if grpo.get(name) is not None:
            raise ConfigError(
                f"{key}.grpo.{name}: set by the workflow (its vLLM server listens on 127.0.0.1 "
                "of the job's node); pin grpo.vllm_server_port to fix the port"
            )
    ports = [grpo.get(k) for k in ("vllm_server_port", "vllm_group_port")]
    if None not in ports and ports[0] == ports[1]:
        raise ConfigError(f"{key}.grpo.vllm_group_port: {ports[1]} is vllm_server_port too")
    for option in vllm_server:
        reason = VLLM_SERVE_RESERVED.get(option.replace("-", "_"))
        if reason:
            raise ConfigError(f"{key}.vllm_server.{option}: set by the workflow ({reason})")


def generation_batch_size(grpo: dict[str, Any], num_processes: int = 1) -> int:
    """TRL's generation batch: explicit, or per-device batch x processes x steps_per_generation
    (`grpo` as the schema completes it)."""
    if grpo.get("generation_batch_size"):
        return int(grpo["generation_batch_size"])
    spg = grpo.get("steps_per_generation") or grpo["gradient_accumulation_steps"]
    return int(grpo["per_device_train_batch_size"]) * num_processes * int(spg)


def check(config: dict[str, Any]) -> None:
    """Raise ConfigError with one line naming the key on the first problem: the schema's (on a
    copy completed with its defaults, as the DAG validates it), then the relations between keys.

    What a run's mode takes is checked where the run is built (`aha.run.Run.build`).
    """
    config = validate_section((), config)
    model = config["model"]
    if model["source"] == "tiny":
        check_tiny(model["tiny"])
        if config["device"] == "cpu":
            _check_vllm_cpu_heads(config)
    check_dataset(config["dataset"])
    for name, spec in config["runs"].items():
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
    vllm = config["sampling"]["backend"] != "hf" or any(
        spec["grpo"].get("use_vllm") for spec in config["runs"].values()
    )
    tiny = config["model"]["tiny"]
    head = tiny["hidden_size"] // tiny["num_attention_heads"]
    if vllm and head not in VLLM_CPU_HEAD_SIZES:
        raise ConfigError(
            f"model.tiny.hidden_size: {tiny['hidden_size']} / num_attention_heads gives head "
            f"size {head}; vLLM on the CPU (device cpu) takes {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}"
        )


def _check_run(config: dict[str, Any], name: str, spec: dict[str, Any]) -> None:
    key = f"runs.{name}"
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
    ckpt_key = f"{key}.checkpoints" if spec.get("checkpoints") else "checkpoints"
    ckpts = spec.get("checkpoints") or config["checkpoints"]  # a run's own, or everyone's
    if any(not isinstance(s, int) or s <= 0 for s in ckpts):
        raise ConfigError(f"{ckpt_key}: steps must be positive integers (got {ckpts})")
    if any(b <= a for a, b in itertools.pairwise(ckpts)):
        raise ConfigError(f"{ckpt_key}: steps must be strictly ascending (got {ckpts})")
    if ckpts[-1] > max_steps:
        raise ConfigError(
            f"{ckpt_key}: step {ckpts[-1]} is beyond {key}.grpo.max_steps ({max_steps})"
        )
    n_gen = grpo["num_generations"]
    if n_gen < 2:
        raise ConfigError(f"{key}.grpo.num_generations: must be an integer >= 2 (got {n_gen!r})")
    batch = generation_batch_size(grpo)
    if batch % n_gen:
        raise ConfigError(
            f"{key}.grpo.num_generations: {n_gen} does not divide the generation batch ({batch} "
            "= per_device_train_batch_size x steps_per_generation, or generation_batch_size)"
        )
