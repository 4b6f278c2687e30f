"""aha.run: the table of modes (each row's consequences), the Run built once per (run, seed), its
checks against its row, its JSON round trip, and the seed config's GRPO arguments and launch
argv as literal values (what the rules passed before the Run existed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from aha.config import ConfigError
from aha.contracts import load_config
from aha.launch import gpu
from aha.launch.commands import train_command
from aha.run import MODES, Mode, Run, build_all, mode_of

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "config.yaml"
REHEARSAL = [SEED, ROOT / "config" / "rehearsal.yaml"]
ZERO3 = "/w/zero3.yaml"


def run_in(mode: str, device: str = "cuda", **run) -> Run:
    """Run `r` of mode `mode` on `device`: 2 steps of the schema's default batch, `run` keys."""
    spec = {"mode": mode, "grpo": {"max_steps": 2}, **run}
    config = {"device": device, "model": {"name_or_path": "Org/M"}, "checkpoints": [2]}
    return Run.build({**config, "runs": {"r": spec}}, "r")


def run_spec() -> dict:
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())[
        "properties"
    ]["runs"]["additionalProperties"]


# ----------------------------------------------------------------------------- the table


def test_the_schema_names_exactly_the_modes_of_the_table() -> None:
    assert run_spec()["properties"]["mode"]["enum"] == list(MODES)
    assert all(name == mode.name for name, mode in MODES.items())


def test_each_mode_the_schema_gives_lora_or_nf4_defaults_is_a_row_that_takes_them() -> None:
    """The schema's `allOf` hands LoRA defaults to exactly the rows that train an adapter, NF4
    defaults to exactly the rows with a 4-bit base: a new row must be named there too."""
    given: dict[str, set[str]] = {"lora": set(), "quantization": set()}
    for branch in run_spec()["allOf"]:
        for key in branch["then"]["properties"]:
            given[key] |= set(branch["if"]["properties"]["mode"]["enum"])
    assert given["lora"] == {name for name, mode in MODES.items() if mode.lora}
    assert given["quantization"] == {name for name, mode in MODES.items() if mode.quantized}


# mode -> (devices on cuda, on a rehearsal, launcher, adapter, NF4, sampler, packages, CPU only)
ROWS = {
    "cpu": (0, 0, "python", False, False, "hf", (), True),
    "qlora": (1, 1, "python", True, True, "hf", ("bitsandbytes", "peft"), False),
    "zero3": (4, 2, "accelerate", False, False, None, ("deepspeed",), False),
    "lora": (1, 1, "python", True, False, "hf", ("peft",), False),
}


@pytest.mark.parametrize("name", list(MODES))
def test_each_row_and_what_it_makes_of_a_run(name: str, monkeypatch, tmp_path: Path) -> None:
    gpus, ranks, launcher, lora, nf4, sampler, packages, cpu_only = ROWS[name]
    mode = MODES[name]
    assert (mode.gpus, mode.rehearsal_devices, mode.launcher) == (gpus, ranks, launcher)
    assert (mode.lora, mode.quantized, mode.sampler) == (lora, nf4, sampler)
    assert (mode.packages, mode.cpu_only) == (packages, cpu_only)
    on_gpu, rehearsed = run_in(name), run_in(name, "cpu")
    assert on_gpu.device == ("cpu" if cpu_only else "cuda") and rehearsed.device == "cpu"
    assert on_gpu.devices == (0 if cpu_only else gpus) and rehearsed.devices == ranks
    assert rehearsed.rehearsal is not cpu_only and not on_gpu.rehearsal
    # an adapter and an NF4 base where the row says so, with the schema's defaults
    assert (on_gpu.lora is not None, on_gpu.quantization is not None) == (lora, nf4)
    objects = {"peft_config": lora, "quantization_config": nf4}
    assert set(on_gpu.peft_objects()) == {key for key, has in objects.items() if has}
    # sampled by the row's sampler, else sampling.backend (auto by default)
    assert on_gpu.sample_backend == (sampler or "auto")
    # the GRPOConfig values it implies, on a GPU and rehearsed
    args = on_gpu.grpo_args(tmp_path, env={})
    assert {k: args[k] for k in mode.grpo} == dict(mode.grpo)
    rehearsal_args = rehearsed.grpo_args(tmp_path, env={})
    extra = {} if cpu_only else dict(mode.rehearsal_grpo)
    assert {k: rehearsal_args[k] for k in extra} == extra
    # the launcher
    argv = train_command(on_gpu, ["X"], accelerate_config=ZERO3)
    assert ("accelerate.commands.launch" in argv) == (launcher == "accelerate")
    assert (argv[0] == "env") == (launcher == "accelerate")  # torchrun's shutdown timeout
    assert ("DS_ACCELERATOR=cpu" in train_command(rehearsed, ["X"], accelerate_config=ZERO3)) is (
        not cpu_only
    )
    # what check-gpu requires
    missing: list[str] = []
    monkeypatch.setattr(gpu, "has_package", lambda p: missing.append(p) or False)
    if cpu_only:
        gpu.check_run(on_gpu)
        assert missing == []
    else:
        with pytest.raises(gpu.GpuEnvError, match=rf"^mode {name} needs {packages[0]}: "):
            gpu.check_run(on_gpu)


def test_a_bad_mode_is_refused_with_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        run_in("tpu")
    assert str(err.value).startswith("runs.r.mode: 'tpu' is not one of") and "\n" not in str(
        err.value
    )
    with pytest.raises(ConfigError, match=r"^runs\.r\.mode: 'tpu' is not one of cpu, qlora"):
        mode_of("tpu", "runs.r.mode")
    data = json.loads(run_in("cpu").to_json())
    with pytest.raises(ConfigError, match=r"^run\.mode: 'tpu' is not one of cpu, qlora, zero3"):
        Run.from_json({**data, "mode": "tpu"})
    with pytest.raises(ValueError, match="launcher 'srun'"):
        dataclasses.replace(MODES["cpu"], launcher="srun")


@pytest.mark.parametrize(
    ("mode", "run", "message"),
    [
        ("cpu", {"lora": {"r": 8}}, "runs.r.lora: mode cpu trains no LoRA adapter (modes that"),
        ("zero3", {"quantization": {"load_in_4bit": True}}, "runs.r.quantization: mode zero3"),
        ("qlora", {"vllm_server": {"x": 1}}, "runs.r.vllm_server: needs mode zero3 with grpo."),
        ("cpu", {"model": {"source": "hub"}, "grpo": {"max_steps": 2, "bf16": True}}, "bf16"),
        (
            "zero3",
            {
                "grpo": {
                    "max_steps": 2,
                    "use_vllm": True,
                    "vllm_mode": "server",
                    "vllm_server_host": "h",
                }
            },
            "runs.r.grpo.vllm_server_host: set by the workflow",
        ),
    ],
)
def test_what_a_mode_cannot_take_is_refused_naming_the_key(mode, run, message) -> None:
    with pytest.raises(ConfigError) as err:
        run_in(mode, **run)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_server_mode_and_its_devices() -> None:
    server = {"grpo": {"max_steps": 2, "use_vllm": True, "vllm_mode": "server"}}
    assert run_in("zero3", **server).uses_vllm_server
    assert run_in("zero3", **server).training_processes == 3
    assert run_in("zero3", "cpu", **server).devices == 3  # two ranks + the server's slot
    assert run_in("zero3", **server).on(8).training_processes == 7  # the job's GPUs
    assert run_in("zero3", "cpu", **server).on(8).devices == 3  # CPU processes stay the row's
    assert not run_in("qlora", **server).uses_vllm_server  # the row has no server


# ----------------------------------------------------------------------------- one JSON argument


def test_a_run_is_one_json_argument_and_back() -> None:
    for (name, seed), run in build_all(load_config(list(map(str, REHEARSAL)))).items():
        text = run.to_json()
        assert json.loads(text)["mode"] == run.mode.name and text == run.to_json()
        again = Run.from_json(text)
        assert again == run and isinstance(again.mode, Mode) and again.checkpoints == (2, 4)
        assert Run.from_json(json.loads(text)) == run  # argparse's json_arg hands the object
        assert (again.name, again.seed) == (name, seed)
    data = json.loads(run.to_json())
    with pytest.raises(ConfigError, match=r"^run: unknown key \['extra'\] \(a Run has name, seed"):
        Run.from_json({**data, "extra": 1})
    del data["devices"]
    with pytest.raises(ConfigError, match=r"^run: missing \['devices'\]"):
        Run.from_json(data)


# ----------------------------------------------------------------------------- the seed config


SEED_GRPO = {
    "activation_checkpointing": True,
    "activation_checkpointing_kwargs": {"use_reentrant": False},
    "beta": 0.001,
    "bf16": True,
    "gradient_accumulation_steps": 8,
    "logging_steps": 2,
    "loss_type": "grpo",
    "lr_scheduler_type": "cosine",
    "max_completion_length": 1024,
    "max_steps": 450,
    "num_generations": 8,
    "output_dir": "/out/trainer",
    "per_device_train_batch_size": 8,
    "report_to": ["tensorboard"],
    "save_steps": 50,
    "save_total_limit": 2,
    "scale_rewards": "group",
    "seed": 42,
    "temperature": 0.9,
    "warmup_steps": 14,
}


def test_the_seed_configs_grpo_arguments_are_the_ones_it_always_trained_with() -> None:
    config = load_config([str(SEED)])
    zero3, qlora = Run.build(config, "qwen-zero3"), Run.build(config, "qwen-qlora")
    assert zero3.grpo_args("/out", env={}) == {
        **SEED_GRPO,
        "learning_rate": 5e-07,
        "model_init_kwargs": {"dtype": "bfloat16"},
        "use_vllm": True,
        "vllm_importance_sampling_correction": False,
        "vllm_mode": "server",
    }
    assert qlora.grpo_args("/out", env={}) == {
        **SEED_GRPO,
        "learning_rate": 1e-05,
        "model_init_kwargs": {"device_map": {"": 0}, "dtype": "bfloat16"},
        "use_vllm": False,
    }
    assert qlora.lora == {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "task_type": "CAUSAL_LM",
    }
    assert qlora.quantization == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
    }
    assert (zero3.sample_backend, qlora.sample_backend) == ("auto", "hf")


def test_the_seed_configs_launch_argv_on_a_gpu_and_rehearsed() -> None:
    config = load_config([str(SEED)])
    args = ["--run", "RUN"]
    assert train_command(Run.build(config, "qwen-zero3"),
        args, model="M", server_log="L", accelerate_config=ZERO3
    ) == [
        "python", "-m", "aha", "with-vllm-server", "--model", "M", "--gpus", "4",
        "--grace", "255", "--server-grace", "30",
        "--server-args", '{"gpu_memory_utilization": 0.5}', "--server-log", "L", "--",
        "env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240", "python", "-m", "accelerate.commands.launch",
        "--config_file", ZERO3, "--num_processes", "3", "--main_process_port", "0",
        "-m", "aha", "train", *args,
    ]  # fmt: skip
    assert train_command(Run.build(config, "qwen-qlora"), args) == [
        "python",
        "-m",
        "aha",
        "train",
        *args,
    ]
    rehearsal = build_all(load_config(list(map(str, REHEARSAL))))
    cpu_env = ["env", "DS_ACCELERATOR=cpu", "VLLM_CPU_KVCACHE_SPACE=1"]
    model = "results/models/tiny"
    assert train_command(rehearsal["qwen-zero3", 42],
        ["X"], model=model, accelerate_config=ZERO3
    ) == [
        *cpu_env, "python", "-m", "aha", "with-vllm-server", "--model", model, "--gpus", "3",
        "--grace", "255", "--server-grace", "30",
        "--server-args", '{"enforce_eager": true, "gpu_memory_utilization": 0.5}', "--",
        "env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240", *cpu_env[1:],
        "python", "-m", "accelerate.commands.launch", "--config_file", ZERO3,
        "--num_processes", "2", "--main_process_port", "0", "--mixed_precision", "no",
        "-m", "aha", "train", "X",
    ]  # fmt: skip
    assert train_command(rehearsal["qwen-qlora", 42], ["X"]) == [
        *cpu_env,
        "python",
        "-m",
        "aha",
        "train",
        "X",
    ]
    assert train_command(rehearsal["qwen-zero3-colocate", 42], ["X"], accelerate_config=ZERO3) == [
        "env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=285", *cpu_env[1:],
        "python", "-m", "accelerate.commands.launch", "--config_file", ZERO3,
        "--num_processes", "2", "--main_process_port", "0", "--mixed_precision", "no",
        "-m", "aha", "train", "X",
    ]  # fmt: skip
