"""Contract checks: each device branch's CUDA arguments, through the pinned library's own checks.

A CPU rehearsal runs the GPU code path, but wherever the code branches on the device the CUDA
side is not what ran. A qlora sampling bug hid exactly there: vLLM 0.30 refuses
`quantization="bitsandbytes"`, and only the GPU branch passed it. So every such branch builds
its CUDA arguments here, with the functions the stages themselves call, and hands them to the
library that will receive them on the cluster, short of allocating a GPU:

- sampling: the run's sampler (`aha.run.Run.sample_backend`), then vLLM's
  `EngineArgs(...).create_engine_config()` for the `vllm.LLM` kwargs
  (`aha.launch.vllm_sampler.engine_kwargs`), or transformers' `BitsAndBytesConfig` and its 4-bit
  quantizer for the `from_pretrained` kwargs (`aha.stages.sample.hf_load_kwargs`);
- training: `GRPOConfig(**Run.grpo_args(...))` (TRL and transformers), with only the hardware
  probe for bf16 answered as a GPU would; `LoraConfig` and `BitsAndBytesConfig`;
- launching: the `accelerate launch` argv against accelerate's own parser, the zero3 yaml
  through accelerate's loader and its DeepSpeed plugin into DeepSpeed's ZeRO config model;
- the vLLM server: the `vllm serve` argv against vLLM's own parser and engine config.

`python -m aha check-contracts` runs them all for a config (the seed's by default) and prints one
line per check. Where vLLM is not installed (a GPU machine without it), the vLLM checks use
`vllm-0.30.json`, a snapshot of vLLM 0.30's argument names and quantization registry, which a
test compares with the installed vLLM of the rehearsal environment.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from aha.cli import failing_as, parser, setup_logging
from aha.config import ConfigError, check, validate_section
from aha.launch import gpu
from aha.launch.commands import train_command

if TYPE_CHECKING:
    from aha.run import Run

SNAPSHOT = Path(__file__).with_name("vllm-0.30.json")
log = logging.getLogger("aha.contracts")


class ContractError(ValueError):
    """A CUDA branch's arguments that the receiving library refuses; the message is its own."""


@dataclass(frozen=True)
class Contract:
    """One device branch: `name` says which, `check` raises ContractError or returns a note."""

    name: str
    check: Callable[[], str]


# ----------------------------------------------------------------------------- vLLM


def vllm_snapshot() -> dict[str, Any]:
    """What vLLM 0.30 accepts, from the installed vLLM: EngineArgs fields, quantization
    methods, and the `vllm serve` options (`--name` strings)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return {
        "engine_args": sorted(f.name for f in dataclasses.fields(EngineArgs)),
        "quantization_methods": sorted(QUANTIZATION_METHODS),
        "serve_options": sorted(
            {opt for action in _serve_parser()._actions for opt in action.option_strings}
        ),
    }


def _serve_parser() -> argparse.ArgumentParser:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def check_vllm_engine(kwargs: dict[str, Any]) -> str:
    """`vllm.LLM(**kwargs)`'s own validation: EngineArgs and the engine config it builds."""
    if not gpu.has_package("vllm"):
        snap = _snapshot()
        unknown = sorted(set(kwargs) - set(snap["engine_args"]))
        if unknown:
            raise ContractError(f"vllm.LLM: unknown EngineArgs {unknown}")
        method = kwargs.get("quantization")
        if method is not None and method not in snap["quantization_methods"]:
            raise ContractError(f"vllm.LLM: Unknown quantization method: {method}")
        return "vLLM 0.30 snapshot (vllm not installed)"
    from vllm.engine.arg_utils import EngineArgs

    try:
        EngineArgs(**kwargs).create_engine_config()
    except (TypeError, ValueError, OSError) as err:  # pydantic's ValidationError: a ValueError
        raise ContractError(f"vllm.LLM: {_first_line(err)}") from None
    return "vllm EngineArgs.create_engine_config"


def check_vllm_serve(argv: Sequence[str]) -> str:
    """`vllm serve ARGV`'s own parser, then the engine config its arguments build."""
    argv = list(argv)
    if not gpu.has_package("vllm"):
        known = set(_snapshot()["serve_options"])
        unknown = [a.split("=")[0] for a in argv if a.startswith("--")]
        unknown = [a for a in unknown if a not in known and a.replace("_", "-") not in known]
        if unknown:
            raise ContractError(f"vllm serve: unrecognized arguments {unknown}")
        return "vLLM 0.30 snapshot (vllm not installed)"
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    try:
        args = _serve_parser().parse_args(argv)
    except SystemExit:
        raise ContractError(f"vllm serve: its parser refuses {argv}") from None
    if args.model_tag is not None:  # as `vllm serve` itself does (vllm/entrypoints/cli/serve.py)
        args.model = args.model_tag
    try:
        validate_parsed_serve_args(args)
        AsyncEngineArgs.from_cli_args(args).create_engine_config()
    except (TypeError, ValueError, OSError) as err:  # OSError: no such model
        raise ContractError(f"vllm serve: {_first_line(err)}") from None
    return "vllm serve parser + AsyncEngineArgs.create_engine_config"


# ----------------------------------------------------------------------------- transformers, TRL


def check_grpo_config(args: dict[str, Any]) -> str:
    """`GRPOConfig(**args)`: TRL's and transformers' validation, on a CPU answering the bf16
    hardware probe as a GPU does (the only check that needs the device itself)."""
    import transformers.training_args as training_args
    from trl import GRPOConfig

    with mock.patch.object(training_args, "is_torch_bf16_gpu_available", return_value=True):
        try:
            GRPOConfig(**args)
        except (TypeError, ValueError) as err:
            raise ContractError(f"GRPOConfig: {_first_line(err)}") from None
    return "trl GRPOConfig"


def check_bnb_load(kwargs: dict[str, Any]) -> str:
    """`from_pretrained` kwargs of a 4-bit base: transformers' bitsandbytes quantizer accepts
    its config and device map."""
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(kwargs["quantization_config"])
    try:
        quantizer.validate_environment(device_map=kwargs.get("device_map"))
    except (ImportError, ValueError) as err:
        raise ContractError(f"from_pretrained: {_first_line(err)}") from None
    return "transformers Bnb4BitHfQuantizer.validate_environment"


def check_peft(lora: dict[str, Any], quantization: dict[str, Any] | None = None) -> str:
    """peft's `LoraConfig` (and transformers' `BitsAndBytesConfig`, for a 4-bit base)."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    try:
        LoraConfig(**lora)
        if quantization is not None:
            BitsAndBytesConfig(**quantization)
    except (TypeError, ValueError) as err:
        raise ContractError(f"LoraConfig/BitsAndBytesConfig: {_first_line(err)}") from None
    if quantization is None:
        return "peft LoraConfig"
    return "peft LoraConfig + transformers BitsAndBytesConfig"


# ----------------------------------------------------------------------------- accelerate, DeepSpeed


def check_accelerate_launch(argv: Sequence[str], config_file: str) -> str:
    """The `accelerate launch` options against its parser; the yaml through its loader, its
    DeepSpeed plugin, and DeepSpeed's own ZeRO config model where DeepSpeed is installed."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DeepSpeedPlugin

    try:
        launch_command_parser().parse_args(list(argv))
    except SystemExit:
        raise ContractError(f"accelerate launch: its parser refuses {list(argv)}") from None
    loaded = load_config_from_file(config_file)
    if loaded.distributed_type != "DEEPSPEED":
        raise ContractError(f"{config_file}: distributed_type {loaded.distributed_type}")
    ds = loaded.deepspeed_config
    try:
        plugin = DeepSpeedPlugin(
            zero_stage=ds["zero_stage"],
            offload_optimizer_device=ds.get("offload_optimizer_device"),
            offload_param_device=ds.get("offload_param_device"),
            zero3_init_flag=ds.get("zero3_init_flag"),
            zero3_save_16bit_model=ds.get("zero3_save_16bit_model"),
        )
    except (TypeError, ValueError) as err:
        raise ContractError(f"accelerate DeepSpeedPlugin: {_first_line(err)}") from None
    if not gpu.has_package("deepspeed"):
        return "accelerate launch parser + DeepSpeedPlugin (deepspeed not installed)"
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    zero = {k: v for k, v in plugin.deepspeed_config["zero_optimization"].items() if v != "auto"}
    try:
        DeepSpeedZeroConfig(**zero)
    except (TypeError, ValueError) as err:
        raise ContractError(f"DeepSpeed zero_optimization: {_first_line(err)}") from None
    return "accelerate launch parser + DeepSpeedPlugin + DeepSpeedZeroConfig"


def accelerate_options(command: Sequence[str]) -> list[str]:
    """The argv after `accelerate launch` (`-m accelerate.commands.launch`) in a command."""
    command = list(command)
    for i, arg in enumerate(command):
        if arg == "accelerate.commands.launch" and command[i - 1] == "-m":
            return command[i + 1 :]
    raise ContractError(f"no accelerate launch in {command}")


# ----------------------------------------------------------------------------- the branches


def contracts(config: dict[str, Any], model_dir: str, accelerate_config: str) -> list[Contract]:
    """Every device branch of every run of `config`, on cuda. `model_dir` stands in for the
    run's weights (vLLM reads its config.json): no Hub download, no GPU."""
    from aha.run import Run

    found: list[Contract] = []
    for name in config["runs"]:
        run = Run.build({**config, "device": "cuda"}, name)  # its first replicate, on a GPU
        if run.device != "cuda":  # a mode that only ever runs on the CPU: no CUDA branch
            continue
        found += _sample_contracts(run, model_dir)
        grpo = run.grpo_args("/nonexistent/out", env={})
        found.append(Contract(f"{name}: train, GRPOConfig", _bind(check_grpo_config, grpo)))
        if run.lora is not None:
            what = "LoRA + NF4" if run.quantization is not None else "LoRA"
            check = _bind(check_peft, run.lora, run.quantization)
            found.append(Contract(f"{name}: train, {what}", check))
        if run.quantization is not None:
            load = {**run.peft_objects(), **(grpo["model_init_kwargs"] or {})}
            found.append(Contract(f"{name}: train, NF4 base", _bind(check_bnb_load, load)))
        if run.mode.launcher == "accelerate":
            command = train_command(run, [], model=model_dir, accelerate_config=accelerate_config)
            options = accelerate_options(command)
            found.append(
                Contract(
                    f"{name}: launch, accelerate + DeepSpeed",
                    _bind(check_accelerate_launch, options, accelerate_config),
                )
            )
        if run.uses_vllm_server:
            serve = server_argv(run.vllm_server, model_dir)
            found.append(Contract(f"{name}: server, vllm serve", _bind(check_vllm_serve, serve)))
    return found


def _sample_contracts(run: Run, model_dir: str) -> list[Contract]:
    """The sample rule's branch on cuda: vLLM's engine (vllm; auto is vLLM on a GPU node with
    the gpu extra), or transformers' 4-bit load of a run sampled on its NF4 base."""
    from aha.launch import vllm_sampler as sample_vllm
    from aha.stages import sample

    found = []
    if run.sample_backend in ("vllm", "auto"):
        kwargs = sample_vllm.engine_kwargs(model_dir, None, seed=0, device="cuda")
        found.append(Contract(f"{run.name}: sample, vllm.LLM", _bind(check_vllm_engine, kwargs)))
    if run.sample_backend in ("hf", "auto") and run.quantization:
        load = sample.hf_load_kwargs(run.quantization, "cuda")
        found.append(Contract(f"{run.name}: sample, NF4 base", _bind(check_bnb_load, load)))
    return found


def server_argv(options: dict[str, Any], model: str) -> list[str]:
    """The `vllm serve` arguments the server-mode wrapper starts with the run's `vllm_server`
    options (after `serve`)."""
    from aha.launch.vllm_serve import server_command

    command = server_command(model, port=8000, options=options)
    return command[command.index("serve") + 1 :]


def _bind(func: Callable[..., str], *args: Any) -> Callable[[], str]:
    return lambda: func(*copy.deepcopy(args))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[:2])[:400] or type(err).__name__


def run_all(found: Sequence[Contract]) -> list[tuple[str, bool, str]]:
    """(name, passed, what checked it or why it failed) of each contract, every one run."""
    results = []
    for contract in found:
        try:
            results.append((contract.name, True, contract.check()))
        except ContractError as err:
            results.append((contract.name, False, str(err)))
    return results


def load_config(paths: Sequence[str]) -> dict[str, Any]:
    """The config files merged in order (as Snakemake's --configfile), completed with the
    schema's defaults and checked: what the workflow validates, without Snakemake (a GPU
    machine may lack it)."""
    import yaml

    config: dict[str, Any] = {}
    for path in paths:
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    config = validate_section((), config)
    check(config)
    return config


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def cli(argv: list[str], prog: str) -> None:
    """Check every device branch's CUDA arguments with the pinned libraries' own validation, on
    any machine (no GPU needed). One line per check; exit 1 if any fails."""
    root = Path(__file__).resolve().parents[2]
    p = parser(prog, cli.__doc__)
    p.add_argument(
        "--configfile",
        nargs="+",
        default=[str(root / "config" / "config.yaml")],
        help="config files, merged in order (default: the seed, config/config.yaml)",
    )
    p.add_argument(
        "--model",
        default=str(root / "models" / "tiny-base"),
        help="a local model directory standing in for the runs' weights (default: the "
        "committed tiny Qwen2, models/tiny-base)",
    )
    p.add_argument(
        "--accelerate-config",
        default=str(root / "workflow" / "accelerate" / "zero3.yaml"),
        help="the zero3 accelerate + DeepSpeed yaml (default: the workflow's)",
    )
    p.add_argument("--write-vllm-snapshot", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.write_vllm_snapshot:
        SNAPSHOT.write_text(json.dumps(vllm_snapshot(), indent=1) + "\n")
        print(f"{prog}: wrote {SNAPSHOT}")
        return
    with failing_as(prog, ConfigError):
        found = contracts(load_config(args.configfile), args.model, args.accelerate_config)
    results = run_all(found)
    for name, passed, detail in results:
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", flush=True)
    failed = sum(not passed for _, passed, _ in results)
    print(f"{prog}: {len(results) - failed} passed, {failed} failed")
    if failed:
        raise SystemExit(1)


__all__ = ["Contract", "ContractError", "cli", "contracts", "run_all"]
