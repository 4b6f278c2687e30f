"""A run in a mode: one typed `Run` per (run, seed), and `MODES`, one row per mode.

`Run.build(config, run, seed)` is the one place a run's settings are put together from the
validated config: the top-level model and checkpoints with the run's overrides, its replicate
seed as TRL's `grpo.seed`, its mode's row, its device and devices, its sampler. The rules, the
launcher, the GPU check, training, sampling (through the rule's arguments) and the contract
checks read this object, and the train rule hands it to `python -m aha train` as one JSON
argument (`to_json` / `from_json`). Nothing else derives what a mode implies: that is the row's.

A row says, for one mode: the GPUs a training job asks for on cuda, the CPU processes standing
in for them on a rehearsal, the launcher, whether it trains a LoRA adapter and loads its base in
4-bit NF4, who samples its checkpoints, whether it can generate on a `vllm serve` of its own,
the packages `check-gpu` requires, whether it only ever runs on the CPU, and the GRPOConfig
values it implies. Adding a mode is adding a row here and its name to the schema's `mode` enum
(with the `allOf` entries of workflow/schemas/config.schema.yaml that give LoRA and
quantization defaults to the modes that take them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aha import config as cfg
from aha.config import ConfigError
from aha.formats import TRAINER_DIR

log = logging.getLogger("aha.run")

# Checkpoints TRL keeps in trainer/: the newest to resume from and one before it. The configured
# steps' weights are copied out to weights/step-N when saved, so rotation never loses them; a
# run that kept every checkpoint-N of a 3B ZeRO-3 run would hold ~43 GB each.
SAVE_TOTAL_LIMIT = 2
# transformers 5: `gradient_checkpointing` is a deprecated alias of `activation_checkpointing`;
# TRL's config still defaults the alias to True, so a mode default must set the new name.
CHECKPOINTING_KEYS = ("activation_checkpointing", "gradient_checkpointing")
LAUNCHERS = ("python", "accelerate")  # `python -m aha train`; `accelerate launch` + DeepSpeed
# The trackers every mode reports to (TRL's report_to; the run's grpo.report_to replaces it):
# TensorBoard event files in the run folder (aha.launch.tracking).
REPORT_TO = ["tensorboard"]
# Trackers TRL 1.16's GRPOTrainer.log sends its completion tables to (log_completions): a run
# that reports to one gets them unless its grpo sets log_completions.
COMPLETION_TRACKERS = ("trackio", "wandb")
# A rehearsed node of a run across nodes (device cpu): one CPU process, one ZeRO-3 rank.
REHEARSAL_NODE_DEVICES = 1
# GRPOConfig values of every GPU mode, on a GPU and rehearsed on the CPU alike.
GPU_GRPO = {
    "bf16": True,
    "activation_checkpointing": True,
    "report_to": REPORT_TO,
    "save_total_limit": SAVE_TOTAL_LIMIT,
}


@dataclass(frozen=True)
class Mode:
    """One row of the table: everything a mode implies, whatever the run."""

    name: str
    gpus: int  # GPUs a training job asks for on cuda (a vLLM server's included)
    rehearsal_devices: int  # CPU processes standing in for the training GPUs (device cpu)
    launcher: str  # one of LAUNCHERS
    lora: bool  # trains a LoRA adapter (peft): each step saves the adapter
    quantized: bool  # loads the base in 4-bit NF4 (bitsandbytes), trained and sampled so
    sampler: str | None  # who samples its checkpoints: "hf", or None for sampling.backend
    vllm_server: bool  # grpo.vllm_mode server generates on a `vllm serve` beside the trainer
    packages: tuple[str, ...]  # import names `check-gpu` requires (grpo.use_vllm adds vllm)
    cpu_only: bool  # always on the CPU, whatever `device`: no GPU check, no rehearsal
    multinode: bool  # can train across several nodes (`runs.<run>.nodes`)
    grpo: Mapping[str, Any]  # GRPOConfig values it implies, where the run's grpo sets none
    rehearsal_grpo: Mapping[str, Any]  # ... and on a CPU rehearsal, on top of them

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"mode {self.name}: launcher {self.launcher!r} not in {LAUNCHERS}")
        for name in ("grpo", "rehearsal_grpo"):  # read-only: rows share GPU_GRPO
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        # The tiny model: one plain process on the CPU, full weights, sampled by transformers.
        Mode(
            name="cpu",
            gpus=0,
            rehearsal_devices=0,
            launcher="python",
            lora=False,
            quantized=False,
            sampler="hf",
            vllm_server=False,
            packages=(),
            cpu_only=True,
            multinode=False,
            grpo={
                "use_cpu": True,
                "bf16": False,
                "activation_checkpointing": False,
                "report_to": REPORT_TO,
                "save_total_limit": SAVE_TOTAL_LIMIT,
            },
            rehearsal_grpo={},
        ),
        # One GPU: NF4 base + LoRA adapter. Sampled by transformers on the NF4 base with the
        # adapter unmerged, every step (step 0 too): vLLM 0.30 has no bitsandbytes method.
        # Rehearsed with `use_cpu` (bf16 on the CPU, which transformers allows only so).
        Mode(
            name="qlora",
            gpus=1,
            rehearsal_devices=1,
            launcher="python",
            lora=True,
            quantized=True,
            sampler="hf",
            vllm_server=False,
            packages=("bitsandbytes", "peft"),
            cpu_only=False,
            multinode=False,
            grpo=GPU_GRPO,
            rehearsal_grpo={"use_cpu": True},
        ),
        # N GPUs: `accelerate launch` + DeepSpeed ZeRO-3, vLLM colocated or a server on the last
        # GPU; gathered 16-bit weights, sampled by sampling.backend. Rehearsed on two gloo ranks
        # (`use_cpu` would make accelerate skip DeepSpeed; without a backend it counts one).
        Mode(
            name="zero3",
            gpus=4,
            rehearsal_devices=2,
            launcher="accelerate",
            lora=False,
            quantized=False,
            sampler=None,
            vllm_server=True,
            packages=("deepspeed",),
            cpu_only=False,
            multinode=True,
            grpo=GPU_GRPO,
            rehearsal_grpo={"ddp_backend": "gloo"},
        ),
        # One GPU: the base in model.dtype (bf16) + LoRA adapter, no quantization. Sampled by
        # transformers with the adapter unmerged on the base, in its dtype (fp32 on the CPU).
        Mode(
            name="lora",
            gpus=1,
            rehearsal_devices=1,
            launcher="python",
            lora=True,
            quantized=False,
            sampler="hf",
            vllm_server=False,
            packages=("peft",),
            cpu_only=False,
            multinode=False,
            grpo=GPU_GRPO,
            rehearsal_grpo={"use_cpu": True},
        ),
    )
}


def mode_of(name: Any, key: str = "mode") -> Mode:
    """The row of mode `name`; ConfigError naming `key` (e.g. runs.r.mode) if there is none."""
    if name not in MODES:
        raise ConfigError(f"{key}: {name!r} is not one of {', '.join(MODES)}")
    return MODES[name]


def _names(has: Any) -> str:
    return ", ".join(name for name, mode in MODES.items() if has(mode))


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    """One replicate of one run: its settings and its mode's row, built once (`Run.build`)."""

    name: str
    seed: int  # the replicate's seed, which is also grpo.seed (TRL's)
    mode: Mode
    device: str  # cuda, or cpu: mode cpu, or a GPU mode rehearsed on CPU processes
    model: dict[str, Any]  # the model section with the run's overrides
    checkpoints: tuple[int, ...]  # the configured steps whose weights are kept and sampled
    grpo: dict[str, Any]  # passed to GRPOConfig (`grpo_args` adds the mode's values)
    lora: dict[str, Any] | None  # peft.LoraConfig kwargs, where the mode trains an adapter
    quantization: dict[str, Any] | None  # BitsAndBytesConfig kwargs, where the base is NF4
    vllm_server: dict[str, Any]  # options of the run's `vllm serve` (server mode)
    weight_sync_timeout_s: float  # server mode: the longest call to the server
    devices: int  # GPUs of the training job (per node), or the CPU processes of a rehearsal
    nodes: int  # nodes that train (`runs.<run>.nodes`); server mode adds one that serves
    sample_backend: str  # hf, vllm or auto: the mode's sampler, else sampling.backend

    @classmethod
    def build(
        cls, config: dict[str, Any], run: str, seed: int | None = None, gpus: int | None = None
    ) -> Run:
        """The Run of replicate `seed` (default: the first) of `run`, from `config` (its schema
        defaults filled in here, on a copy) and the run's checks against its mode's row.

        `gpus` are the training job's GPUs (a profile's `resources: gpu`) where they are not the
        mode's; a rehearsal's devices are CPU processes, the row's. ConfigError, one line.
        """
        config = cfg.validate_section((), config)
        if run not in config["runs"]:
            raise ConfigError(f"runs.{run}: no such run (have: {', '.join(config['runs'])})")
        spec, key = config["runs"][run], f"runs.{run}"
        mode = mode_of(spec["mode"], f"{key}.mode")
        seeds = run_seeds(config, run)
        seed = seeds[0] if seed is None else int(seed)
        if seed not in seeds:
            raise ConfigError(f"{key}: seed {seed} is not one of its seeds {seeds}")
        model = {**config["model"], **(spec.get("model") or {})}
        if model.get("source") != "tiny":
            model.pop("tiny", None)  # the tiny model's recipe means nothing to a Hub model's run
        device = "cpu" if mode.cpu_only else config["device"]
        grpo = {**spec["grpo"], "seed": seed}
        vllm_server = dict(spec.get("vllm_server") or {})
        _check_against_row(key, mode, spec, grpo, model)
        server = _serves(mode, grpo)
        nodes = int(spec.get("nodes", 1))
        if nodes > 1 and not mode.multinode:
            raise ConfigError(
                f"{key}.nodes: mode {mode.name} trains on one node "
                f"(modes that span nodes: {_names(lambda m: m.multinode)})"
            )
        if device == "cuda":
            devices = mode.gpus if gpus is None else int(gpus)
        elif nodes > 1:
            devices = REHEARSAL_NODE_DEVICES  # per "node"; the server's is a node of its own
        else:
            devices = mode.rehearsal_devices + (1 if server else 0)  # the server's CPU slot
        return cls(
            name=run,
            seed=seed,
            mode=mode,
            device=device,
            model=model,
            checkpoints=tuple(spec.get("checkpoints") or config["checkpoints"]),
            grpo=grpo,
            lora=dict(spec["lora"]) if mode.lora else None,
            quantization=dict(spec["quantization"]) if mode.quantized else None,
            vllm_server=vllm_server,
            weight_sync_timeout_s=spec["weight_sync_timeout_s"],
            devices=devices,
            nodes=nodes,
            sample_backend=mode.sampler or config["sampling"]["backend"],
        )

    # -------------------------------------------------------------------- what follows from it

    @property
    def max_steps(self) -> int:
        return int(self.grpo["max_steps"])

    @property
    def rehearsal(self) -> bool:
        """A GPU mode run on the CPU (device cpu) with its own launcher and libraries."""
        return self.device == "cpu" and not self.mode.cpu_only

    @property
    def uses_vllm_server(self) -> bool:
        """Generates on a separate `vllm serve`, which the launcher starts on the last device."""
        return _serves(self.mode, self.grpo)

    @property
    def training_processes(self) -> int:
        """Training processes on the run's devices: all of them, less the vLLM server's (on one
        node its last device; across nodes a node of its own)."""
        if self.mode.launcher == "python":
            return 1
        if self.nodes > 1:
            return self.nodes * self.devices
        return self.devices - 1 if self.uses_vllm_server else self.devices

    @property
    def job_nodes(self) -> int:
        """Nodes of the training job: those that train, and across nodes in server mode one
        more, the last, that serves vLLM."""
        return self.nodes + (1 if self.nodes > 1 and self.uses_vllm_server else 0)

    @property
    def completions_per_step(self) -> int:
        """Completions per optimizer step: per-device batch x processes x accumulation."""
        grpo = self.grpo
        per_device = int(grpo["per_device_train_batch_size"])
        return per_device * self.training_processes * int(grpo["gradient_accumulation_steps"])

    @property
    def grpo_defaults(self) -> dict[str, Any]:
        """GRPOConfig values the mode implies on this device (the run's grpo overrides them)."""
        return {**self.mode.grpo, **(self.mode.rehearsal_grpo if self.rehearsal else {})}

    @property
    def trackers(self) -> list[str]:
        """The integrations TRL reports to: grpo.report_to, else the mode's ("none": [])."""
        report_to = self.grpo.get("report_to", self.grpo_defaults.get("report_to"))
        if report_to in (None, "none", ["none"]):
            return []
        return [report_to] if isinstance(report_to, str) else list(report_to)

    @property
    def model_init_kwargs(self) -> dict[str, Any]:
        """`from_pretrained` kwargs of training: the model section's dtype and attention, the
        run's own grpo.model_init_kwargs over them; one process on a GPU takes the job's first
        (TRL's default device_map "auto" would spread the model over every visible GPU)."""
        kwargs = {k: self.model[k] for k in ("dtype", "attn_implementation") if self.model.get(k)}
        kwargs.update(self.grpo.get("model_init_kwargs") or {})
        if self.device == "cuda" and self.mode.launcher == "python":
            kwargs.setdefault("device_map", {"": 0})
        return kwargs

    def grpo_args(
        self, out_dir: str | Path, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The GRPOConfig kwargs: the run's grpo unchanged plus the mode's values where it sets
        none, TRL's output_dir OUT/trainer (resume and weight export rely on it), the model
        kwargs, completion tables and a run name (RUN-seed-SEED) where it reports to trackio or
        W&B and sets neither, and in server mode the ports its wrapper chose for this job (`env`, default
        os.environ)."""
        args = dict(self.grpo)
        for key, value in self.grpo_defaults.items():
            aliases = CHECKPOINTING_KEYS if key in CHECKPOINTING_KEYS else (key,)
            if not any(alias in self.grpo for alias in aliases):
                args[key] = list(value) if isinstance(value, list) else value  # rows share it
        if set(self.trackers) & set(COMPLETION_TRACKERS):
            args.setdefault("log_completions", True)
            args.setdefault("run_name", f"{self.name}-seed-{self.seed}")
        args.update(self.vllm_client_args(os.environ if env is None else env))
        if "output_dir" in self.grpo:
            log.warning("grpo.output_dir is ignored: training state lives in OUT/%s", TRAINER_DIR)
        args["output_dir"] = str(Path(out_dir) / TRAINER_DIR)
        args["model_init_kwargs"] = self.model_init_kwargs or None
        return args

    def vllm_client_args(self, env: Mapping[str, str]) -> dict[str, Any]:
        """GRPOConfig's server-mode client settings: the server and weight-sync group ports the
        wrapper chose for this job (`env`). Nothing outside server mode or the wrapper."""
        if not self.uses_vllm_server or cfg.ENV_SERVER_URL not in env:
            return {}
        url = env[cfg.ENV_SERVER_URL]
        host, _, port = url.removeprefix("http://").partition(":")
        chosen = {"vllm_server_port": int(port), "vllm_group_port": int(env[cfg.ENV_GROUP_PORT])}
        for key, value in chosen.items():
            pinned = self.grpo.get(key)
            if pinned is not None and int(pinned) != value:
                raise ConfigError(f"grpo.{key}: {pinned}, but the server wrapper serves on {value}")
        return {"vllm_server_base_url": url, "vllm_server_host": host, **chosen}

    def peft_objects(self) -> dict[str, Any]:
        """GRPOTrainer's `quantization_config` (a 4-bit base) and `peft_config` (a LoRA adapter)
        where the mode has them; TRL >= 1.8 takes both. transformers and peft are imported here,
        after `check-gpu` made sure they are installed."""
        objects: dict[str, Any] = {}
        if self.quantization is not None:
            from transformers import BitsAndBytesConfig

            objects["quantization_config"] = BitsAndBytesConfig(**self.quantization)
        if self.lora is not None:
            from peft import LoraConfig

            objects["peft_config"] = LoraConfig(**self.lora)
        return objects

    # -------------------------------------------------------------------- what only the job knows

    def on(self, gpus: int | None) -> Run:
        """This Run on the job's `gpus` (its `resources: gpu`); a run on the CPU keeps its own
        devices, CPU processes for which the job asks no GPU."""
        if gpus is None or self.device != "cuda":
            return self
        return dataclasses.replace(self, devices=int(gpus))

    # -------------------------------------------------------------------- one JSON argument

    def to_json(self) -> str:
        """The Run as one JSON object (the mode by name), keys sorted: a stable argument."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["mode"] = self.mode.name
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> Run:
        """The Run `to_json` wrote (a string, or its parsed object); ConfigError naming a key
        that is not a field, or a field that is missing."""
        data = dict(json.loads(data) if isinstance(data, str) else data)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [name for name in names if name not in data]
        if unknown or missing:
            problem = unknown and f"unknown key{'s' if len(unknown) > 1 else ''} {unknown}"
            problem = problem or f"missing {missing}"
            raise ConfigError(f"run: {problem} (a Run has {', '.join(names)})")
        data["mode"] = mode_of(data["mode"], "run.mode")
        data["checkpoints"] = tuple(data["checkpoints"])
        return cls(**data)


def _serves(mode: Mode, grpo: Mapping[str, Any]) -> bool:
    return mode.vllm_server and bool(grpo.get("use_vllm")) and grpo.get("vllm_mode") == "server"


def _check_against_row(
    key: str, mode: Mode, spec: dict[str, Any], grpo: dict[str, Any], model: dict[str, Any]
) -> None:
    """What the run sets that its mode cannot take, named by key; server mode's own keys."""
    if spec.get("lora") and not mode.lora:
        raise ConfigError(
            f"{key}.lora: mode {mode.name} trains no LoRA adapter "
            f"(modes that do: {_names(lambda m: m.lora)})"
        )
    if spec.get("quantization") and not mode.quantized:
        raise ConfigError(
            f"{key}.quantization: mode {mode.name} loads no 4-bit base "
            f"(modes that do: {_names(lambda m: m.quantized)})"
        )
    if mode.cpu_only and model.get("source") != "tiny" and grpo.get("bf16"):
        raise ConfigError(f"{key}.grpo.bf16: not available in mode {mode.name}")
    if spec.get("vllm_server") and not (mode.vllm_server and grpo.get("vllm_mode") == "server"):
        needs = " or ".join(name for name, m in MODES.items() if m.vllm_server)
        raise ConfigError(f"{key}.vllm_server: needs mode {needs} with grpo.vllm_mode server")
    if _serves(mode, grpo):
        cfg.check_server_keys(key, grpo, spec.get("vllm_server") or {})


# ----------------------------------------------------------------------------- per config


def run_seeds(config: dict[str, Any], run: str) -> list[int]:
    """The replicate seeds of one run of a validated config: `runs.<run>.seeds`, or one seed
    when it is absent (the run's `grpo.seed` if it sets one, else the top-level `seed`: what
    TRL seeded it with before replicates existed, so a config without `seeds` trains as before)."""
    spec = config["runs"][run]
    if spec.get("seeds"):
        return [int(s) for s in spec["seeds"]]
    return [int(spec["grpo"].get("seed", config["seed"]))]


def steps(config: dict[str, Any], run: str) -> list[int]:
    """Step 0 (the untrained baseline) followed by the run's checkpoint steps."""
    return [0, *(config["runs"][run].get("checkpoints") or config["checkpoints"])]


def build_all(config: dict[str, Any]) -> dict[tuple[str, int], Run]:
    """Every replicate's Run, by (run, seed): what the DAG reads; the first refusal is raised."""
    config = cfg.validate_section((), config)
    return {
        (name, seed): Run.build(config, name, seed)
        for name in config["runs"]
        for seed in run_seeds(config, name)
    }


def batch_notes(runs: Iterable[Run]) -> list[str]:
    """One line per run (its first replicate) that generates with vLLM colocated where it could
    use a server, saying what its batch is.

    Colocated vLLM trains on every GPU where server mode trains on all but one: switching the
    seed's run (3 x 8 x 8 = 192 completions on 4 GPUs) to colocate makes it 256 without a word.
    """
    notes, seen = [], set()
    for run in runs:
        if run.name in seen:
            continue
        seen.add(run.name)
        grpo = run.grpo
        if not (run.mode.vllm_server and grpo.get("use_vllm")) or run.uses_vllm_server:
            continue
        as_server = dataclasses.replace(run, grpo={**grpo, "vllm_mode": "server"})
        batch, n_gen = run.completions_per_step, int(grpo["num_generations"])
        if batch == as_server.completions_per_step:  # across nodes the server has its own
            continue
        notes.append(
            f"runs.{run.name}: vllm_mode colocate trains on all {run.devices} devices: {batch} "
            f"completions ({batch // n_gen} prompts x {n_gen}) per optimizer step, where server "
            f"mode on the same devices gives {as_server.completions_per_step}; set "
            "gradient_accumulation_steps to choose the batch"
        )
    return notes
