"""Config validation: every bad config is refused at DAG build with one line naming the key."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from aha.config import (
    ConfigError,
    check,
    generation_batch_size,
    schema_error,
    validate_section,
)
from aha.run import Run, run_seeds, steps
from aha.sections import SECTIONS, DatasetConfig, section
from tests.conftest import ROOT, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def base() -> dict:
    return {
        "dataset": {"num_samples": 1000, "eval_size": 10},
        "checkpoints": [2, 4],
        "runs": {
            "r": {
                "mode": "cpu",
                "grpo": {"max_steps": 4, "num_generations": 4, "per_device_train_batch_size": 8},
            }
        },
    }


def with_change(path: str, value) -> dict:
    cfg = base()
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


def test_eval_size_may_be_the_whole_test_split_as_the_data_stage_sizes_it() -> None:
    """2905 x 0.1 = 290.5: the split holds ceil(290.5) = 291 tasks (aha.task.countdown), so
    eval_size 291 is valid and 292 is not (round() said 290 and refused 291)."""
    from aha.stages.prepare_data import split_indices

    cfg = with_change("dataset.num_samples", 2905)
    cfg["dataset"]["test_size"] = 0.1
    cfg["dataset"]["eval_size"] = 291
    assert len(split_indices(2905, 111, 2905, 0.1, 111, 291).test) == 291
    check(cfg)
    cfg["dataset"]["eval_size"] = 292
    with pytest.raises(ConfigError, match="292 exceeds the test split \\(291 tasks\\)"):
        check(cfg)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("checkpoints", [0, 4], "checkpoints: steps must be positive integers"),
        ("checkpoints", [-2, 4], "checkpoints: steps must be positive integers"),
        ("checkpoints", [4, 2], "checkpoints: steps must be strictly ascending"),
        ("checkpoints", [2, 2], "checkpoints: steps must be strictly ascending"),
        ("checkpoints", [2, 8], "checkpoints: step 8 is beyond runs.r.grpo.max_steps (4)"),
        ("runs.r.checkpoints", [3, 1], "runs.r.checkpoints: steps must be strictly ascending"),
        ("runs.r.grpo.num_generations", 1, "runs.r.grpo.num_generations: must be an integer >= 2"),
        (
            "runs.r.grpo.num_generations",
            3,
            "runs.r.grpo.num_generations: 3 does not divide the generation batch (8",
        ),
        (
            "runs.r.grpo.generation_batch_size",
            6,
            "runs.r.grpo.num_generations: 4 does not divide the generation batch (6",
        ),
        ("runs.r.grpo.max_steps", None, "runs.r.grpo.max_steps: required"),
        ("dataset.eval_size", 500, "dataset.eval_size: 500 exceeds the test split"),
        ("runs.r.seeds", [42, -1], "runs.r.seeds: distinct integers in 0..4294967295"),
        ("runs.r.seeds", [2**32], "runs.r.seeds: distinct integers in 0..4294967295"),
    ],
)
def test_semantic_checks_name_the_key(path: str, value, message: str) -> None:
    cfg = with_change(path, value)
    if value is not None:
        validate(cfg, str(SCHEMA))  # as at DAG build: defaults filled in
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({**base(), "extra": 1}, "extra: unknown key"),
        (with_change("runs.r.mode", "gpu"), "runs.r.mode: 'gpu' is not one of"),
        ({"runs": {"r": {"mode": "cpu"}}}, "runs.r.grpo: required"),
        (with_change("sampling.temprature", 0.7), "sampling.temprature: unknown key"),
        (with_change("runs.r.lr", 0.1), "runs.r.lr: unknown key"),
        ({"checkpoints": [1]}, "runs: required"),
        (with_change("dataset.source", "s3"), "dataset.source: 's3' is not one of"),
        (with_change("runs.r.seeds", [42, 42]), "runs.r.seeds: [42, 42] has non-unique elements"),
        (with_change("runs.r.seeds", []), "runs.r.seeds: [] should be non-empty"),
        (with_change("runs.r.seeds", [4.5]), "runs.r.seeds.0: 4.5 is not of type 'integer'"),
    ],
)
def test_schema_errors_are_one_line_naming_the_key(cfg: dict, message: str) -> None:
    problem = schema_error(cfg, SCHEMA)
    assert problem is not None and message in problem
    assert "\n" not in problem


def test_valid_configs_pass() -> None:
    for name in ("tiny.yaml", "config.yaml"):
        cfg = yaml.safe_load((ROOT / "config" / name).read_text())
        assert schema_error(cfg, SCHEMA) is None, name
        validate(cfg, str(SCHEMA))
        check(cfg)
    assert schema_error(base(), SCHEMA) is None
    check(base())


def test_a_run_applies_overrides_without_touching_the_config() -> None:
    cfg = base()
    cfg["model"] = {"source": "hub", "name_or_path": "A"}
    cfg["runs"]["r"]["model"] = {"name_or_path": "B"}
    cfg["runs"]["r"]["checkpoints"] = [1, 3]
    before = copy.deepcopy(cfg)
    run = Run.build(cfg, "r")  # the schema's defaults filled in, on a copy
    assert run.model == {
        "source": "hub",
        "name_or_path": "B",
        "dtype": "bfloat16",
        "attn_implementation": None,
    }
    assert run.checkpoints == (1, 3) and steps(cfg, "r") == [0, 1, 3]
    assert cfg == before
    with pytest.raises(ConfigError, match=r"runs\.nope: no such run"):
        Run.build(cfg, "nope")


def test_seeds_default_to_the_seed_training_used_before_and_replace_grpo_seed() -> None:
    """No `seeds`: one replicate, seeded as TRL was before (grpo.seed, else the top-level seed).
    With `seeds`, each replicate's seed is its TRL seed, the run's grpo.seed replaced."""
    cfg = base()
    validate(cfg, str(SCHEMA))
    assert run_seeds(cfg, "r") == [42]  # the schema's top-level seed
    cfg["seed"] = 7
    assert run_seeds(cfg, "r") == [7]
    cfg["runs"]["r"]["grpo"]["seed"] = 3
    assert run_seeds(cfg, "r") == [3]
    assert Run.build(cfg, "r", 3).grpo["seed"] == 3
    cfg["runs"]["r"]["seeds"] = [44, 43]
    check(cfg)
    assert run_seeds(cfg, "r") == [44, 43]
    run = Run.build(cfg, "r", 43)
    assert run.seed == run.grpo["seed"] == 43 and "seeds" not in run.grpo
    assert cfg["runs"]["r"]["grpo"]["seed"] == 3  # the config itself untouched
    assert Run.build(cfg, "r").seed == 44  # the first replicate
    with pytest.raises(ConfigError, match=r"^runs\.r: seed 3 is not one of its seeds \[44, 43\]"):
        Run.build(cfg, "r", 3)


def test_defaults_come_from_the_schema_alone_and_only_to_the_modes_that_take_them() -> None:
    """LoRA and NF4 defaults sit in the schema's `if`/`then` on the mode; both validators that
    fill defaults (Snakemake's `validate`, aha.config.validate_section) fill them there; the
    top-level seed and TRL's batch defaults come from it too, not from code."""
    cfg = base()
    cfg["runs"]["q"] = {"mode": "qlora", "grpo": {"max_steps": 4}, "lora": {"r": 8}}
    by_snakemake = copy.deepcopy(cfg)
    validate(by_snakemake, str(SCHEMA))
    ours = validate_section((), cfg)
    assert ours == by_snakemake
    qlora, cpu = ours["runs"]["q"], ours["runs"]["r"]
    assert qlora["lora"] == {
        "r": 8,  # the run's own
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "task_type": "CAUSAL_LM",
    }
    assert qlora["quantization"] == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    assert "lora" not in cpu and "quantization" not in cpu
    assert ours["seed"] == 42 and run_seeds(ours, "q") == [42]
    assert {k: qlora["grpo"][k] for k in ("num_generations", "per_device_train_batch_size")} == {
        "num_generations": 8,
        "per_device_train_batch_size": 8,
    }
    assert qlora["grpo"]["gradient_accumulation_steps"] == 1


def test_generation_batch_size() -> None:
    assert (
        generation_batch_size({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 8})
        == 64
    )
    assert (
        generation_batch_size({"per_device_train_batch_size": 8, "steps_per_generation": 2}, 3)
        == 48
    )
    assert generation_batch_size({"generation_batch_size": 12}) == 12


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("runs.r.mode", "tpu", "invalid config: runs.r.mode: 'tpu' is not one of"),
        ("bogus", True, "invalid config: bogus: unknown key"),
        ("checkpoints", [4, 2], "invalid config: checkpoints: steps must be strictly ascending"),
    ],
)
def test_snakemake_refuses_bad_config_at_dag_build(
    tmp_path: Path, path: str, value, message: str
) -> None:
    cfg = with_change(path, value)
    proc = snakemake(tmp_path, "-n", configfile=write(tmp_path, cfg), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_a_cpu_rehearsal_refuses_a_head_size_vllm_cannot_run_unless_sampling_uses_hf() -> None:
    """On `device: cpu` the `auto` sampler picks vLLM's CPU build, whose attention takes head
    sizes 32, 64, 80, ...: the tiny default's 192 / 4 = 48 fails at DAG build, not in a job."""
    cfg = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["runs"]["z"] = {"mode": "zero3", "grpo": {"max_steps": 450}}
    cfg["sampling"]["backend"] = "auto"
    with pytest.raises(ConfigError, match="head size 48"):
        check(cfg)
    cfg["sampling"]["backend"] = "hf"
    check(cfg)


# ----------------------------------------------------------------------------- one home per knob


def schema_leaves(props: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> default of every schema key that is not itself a section."""
    leaves: dict[str, object] = {}
    for key, sub in props.items():
        if "properties" in sub:
            leaves |= schema_leaves(sub["properties"], f"{prefix}{key}.")
        elif "default" in sub:
            leaves[prefix + key] = sub["default"]
    return leaves


def readme_defaults() -> dict[str, object]:
    """Dotted key -> default as config/README.md's key tables state it."""
    text = (ROOT / "config" / "README.md").read_text()
    rows: dict[str, object] = {}
    section = ""
    for line in text.splitlines():
        if heading := re.match(r"### `([a-z_]+)`", line):
            section = heading.group(1) + "."
        elif line.startswith("### "):
            section = ""
        elif cells := re.match(r"\| `([\w.]+)` \| `([^`]*)` \|", line):
            rows[section + cells.group(1)] = yaml.safe_load(cells.group(2))
    return rows


def test_every_schema_default_is_documented_as_the_schema_gives_it() -> None:
    leaves = schema_leaves(yaml.safe_load(SCHEMA.read_text())["properties"])
    documented = readme_defaults()
    assert {k: documented.get(k, "(missing)") for k in leaves} == leaves


@pytest.mark.parametrize("cls", list(SECTIONS))
def test_each_section_has_one_field_per_schema_key_and_builds_from_defaults_alone(cls) -> None:
    path, _ = SECTIONS[cls]
    schema = yaml.safe_load(SCHEMA.read_text())
    for key in path:
        schema = schema["properties"][key]

    def names(c: type, sub: dict) -> None:
        assert [f.name for f in dataclasses.fields(c)] == list(sub["properties"]), c.__name__
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(inner := typing.get_type_hints(c)[f.name]):
                names(inner, sub["properties"][f.name])

    names(cls, schema)
    built = section(cls, {})
    leaves = schema_leaves(schema["properties"])
    for dotted, default in leaves.items():
        value = built
        for part in dotted.split("."):
            value = getattr(value, part)
        assert value == (tuple(default) if isinstance(default, list) else default), dotted


def test_a_stage_run_by_hand_gets_the_dags_errors() -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.generate\.target_range: \[9, 1\] is empty"):
        section(DatasetConfig, {"generate": {"target_range": [9, 1]}})
    with pytest.raises(ConfigError, match=r"^dataset\.num_samples: 1 is less than the minimum"):
        section(DatasetConfig, {"num_samples": 1})
    with pytest.raises(ConfigError, match=r"^dataset\.generate\.num_tasks: 10 is below"):
        section(DatasetConfig, {"num_samples": 20, "generate": {"num_tasks": 10}})
