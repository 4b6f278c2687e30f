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
    replicate_view,
    run_seeds,
    run_view,
    schema_error,
    steps,
)
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
        ("runs.r.lora", {"r": 8}, "runs.r.lora: LoRA/quantization settings need mode qlora"),
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


def test_run_view_applies_overrides_without_touching_the_config() -> None:
    cfg = base()
    cfg["model"] = {"source": "hub", "name_or_path": "A"}
    cfg["runs"]["r"]["model"] = {"name_or_path": "B"}
    cfg["runs"]["r"]["checkpoints"] = [1, 3]
    before = copy.deepcopy(cfg)
    view = run_view(cfg, "r")
    assert view["model"] == {"source": "hub", "name_or_path": "B"}
    assert steps(cfg, "r") == [0, 1, 3]
    assert cfg == before
    with pytest.raises(ConfigError, match=r"runs\.nope: no such run"):
        run_view(cfg, "nope")


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
    assert replicate_view(cfg, "r", 3)["grpo"]["seed"] == 3
    cfg["runs"]["r"]["seeds"] = [44, 43]
    check(cfg)
    assert run_seeds(cfg, "r") == [44, 43]
    view = replicate_view(cfg, "r", 43)
    assert view["grpo"]["seed"] == 43 and "seeds" not in view
    assert cfg["runs"]["r"]["grpo"]["seed"] == 3  # the config itself untouched
    assert run_view(cfg, "r")["grpo"]["seed"] == 3


def test_replicates_overlay_dry_run_trains_each_seed_and_samples_step_0_once(
    tmp_path: Path,
) -> None:
    """config/tiny-replicates.yaml over tiny.yaml: 3 trainings, one step-0 sample; its eval is
    the whole test split (ceil(2905 x 0.1) = 291 tasks) at k 6."""
    files = [ROOT / "config" / "tiny.yaml", ROOT / "config" / "tiny-replicates.yaml"]
    merged = yaml.safe_load(files[0].read_text())
    overlay = yaml.safe_load(files[1].read_text())
    merged["dataset"]["eval_size"] = overlay["dataset"]["eval_size"]
    validate(merged, str(SCHEMA))
    check(merged)  # 291 is the whole split: one more is refused
    merged["dataset"]["eval_size"] += 1
    with pytest.raises(ConfigError, match="exceeds the test split"):
        check(merged)
    proc = snakemake(tmp_path, "-n", configfile=files)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE))
    assert counts["train"] == "3" and counts["sample_base"] == "1" and counts["sample"] == "12"
    for seed in (42, 43, 44):
        assert f"results/runs/tiny-cpu/seed-{seed}/checkpoints" in proc.stdout
    assert "results/runs/tiny-cpu/base/samples/step-0.jsonl" in proc.stdout


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


@pytest.mark.parametrize("configfile", ["config/tiny.yaml", "config/config.yaml"])
def test_dry_run_both_configs(tmp_path: Path, configfile: str) -> None:
    proc = snakemake(tmp_path, "-n", configfile=ROOT / configfile)
    assert "prepare_data" in proc.stdout


def test_configfile_runs_do_not_leak_between_configs(tmp_path: Path) -> None:
    """The tiny default must not add its run to a DAG built from another config file."""
    proc = snakemake(tmp_path, "-n", "--printshellcmds", configfile=ROOT / "config" / "config.yaml")
    assert "tiny-cpu" not in proc.stdout


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--lint", configfile=None, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


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
