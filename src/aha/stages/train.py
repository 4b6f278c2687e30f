"""Stage `train`: GRPO training of one run with TRL, checkpoints at exactly the configured steps.

The run folder (`--out-dir`, results/runs/{run}/seed-{seed}) is laid out by `aha.formats`: TRL's
`trainer/`, the configured steps' `weights/step-N/`, the declared `checkpoints/step-N.json`
manifests and `train_log.jsonl` (rewritten from the trainer state on every log, so a resumed
run still holds the whole history once). `completion_samples/` holds random completions and
successful ones, like the seed's script.

SIGTERM or SIGINT (SLURM preemption, a killed snakemake) asks the trainer to save a checkpoint
at the end of the current step and stop; the process then exits non-zero so the job counts as
failed and its rerun resumes. SIGKILL loses the steps since the newest checkpoint-N.

Per-mode settings are pure functions of the run spec (`build_grpo_args`, `model_init_kwargs`,
`quantization_kwargs`, `lora_kwargs`), testable without CUDA; bitsandbytes, peft, deepspeed and
vLLM are only imported (by TRL or `build_peft_objects`) in the GPU modes, after `aha.launch.gpu`
checked that they are installed.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import formats
from aha.config import MODES, ConfigError, uses_vllm_server, vllm_client_args
from aha.config import quantization_kwargs as config_quantization
from aha.formats import (
    LOG_FILE,
    STATE_FILE,
    TRAINER_DIR,
    WEIGHTS_DIR,
    CheckpointError,
    checkpoint_step,
    export_weights,
    newest_checkpoint,
    read_state_file,
    recover_weights,
    remove_partial_checkpoints,
    write_log_history,
    write_manifests,
)
from aha.launch import cpu_threads, gpu_monitor
from aha.launch.stop_signals import StopRequest, block_stop_signals
from aha.sections import RunSpec
from aha.task import prompts
from aha.task.grpo_rewards import SAMPLES_DIR, CompletionSampler, reward_funcs

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainerCallback

log = logging.getLogger("aha.stages.train")

# transformers 5: `gradient_checkpointing` is a deprecated alias of `activation_checkpointing`;
# TRL's config still defaults the alias to True, so a mode default must set the new name.
_CHECKPOINTING_KEYS = ("activation_checkpointing", "gradient_checkpointing")
GPU_HINT = "pip install 'aha-countdown[gpu]' (or environment.yml), or use config/tiny.yaml on CPU"


class TrainError(RuntimeError):
    """A run that cannot train or resume as configured; one line naming the fix."""


# ----------------------------------------------------------------------------- run spec


# ----------------------------------------------------------------------------- pure per-mode settings


# Checkpoints TRL keeps in trainer/: the newest to resume from and one before it. The configured
# steps' weights are copied out to weights/step-N when saved, so rotation never loses them; a
# run that kept every checkpoint-N of a 3B ZeRO-3 run would hold ~43 GB each.
SAVE_TOTAL_LIMIT = 2


def mode_defaults(mode: str, device: str = "cuda") -> dict[str, Any]:
    """GRPOConfig values a mode implies; each applies only where the run's grpo does not set it.

    A GPU mode rehearsed on the CPU (`device: cpu`) keeps its GPU settings. qlora adds
    `use_cpu`. zero3 must not (accelerate would then skip DeepSpeed and run one plain process):
    it names the process group's backend instead, `ddp_backend: gloo`, without which accelerate
    takes its world for a single process while DeepSpeed has two ranks.
    """
    if mode == "cpu":
        return {
            "use_cpu": True,
            "bf16": False,
            "activation_checkpointing": False,
            "report_to": "none",
            "save_total_limit": SAVE_TOTAL_LIMIT,
        }
    if mode in ("qlora", "zero3"):
        defaults = {
            "bf16": True,
            "activation_checkpointing": True,
            "report_to": "none",
            "save_total_limit": SAVE_TOTAL_LIMIT,
        }
        if device != "cpu":
            return defaults
        return (
            {**defaults, "use_cpu": True}
            if mode == "qlora"
            else {**defaults, "ddp_backend": "gloo"}
        )
    raise TrainError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")


def model_init_kwargs(spec: RunSpec) -> dict[str, Any]:
    """`from_pretrained` kwargs from the model section (dtype, attention implementation)."""
    kwargs: dict[str, Any] = {}
    if spec.model.get("dtype"):
        kwargs["dtype"] = spec.model["dtype"]
    if spec.model.get("attn_implementation"):
        kwargs["attn_implementation"] = spec.model["attn_implementation"]
    return kwargs


def build_grpo_args(spec: RunSpec, out_dir: str | Path, seed: int | None = None) -> dict[str, Any]:
    """The GRPOConfig kwargs of a run: its `grpo` unchanged plus our overrides and mode defaults.

    `output_dir` is always OUT/trainer (resume and weight export rely on it); the mode's
    defaults fill only keys the run leaves unset; `seed` (the workflow seed) applies when grpo
    sets none; model kwargs from the model section go under `model_init_kwargs`, below any the
    run sets itself; in server mode the client goes to the ports the wrapper chose for this job.
    """
    grpo = dict(spec.grpo)
    args = dict(grpo)
    for key, value in mode_defaults(spec.mode, spec.device).items():
        aliases = _CHECKPOINTING_KEYS if key in _CHECKPOINTING_KEYS else (key,)
        if not any(alias in grpo for alias in aliases):
            args[key] = value
    if seed is not None and "seed" not in grpo:
        args["seed"] = seed
    # server mode: the server and weight-sync ports its wrapper chose for this job
    args.update(vllm_client_args({"mode": spec.mode, "grpo": grpo}, dict(os.environ)))
    if "output_dir" in grpo:
        log.warning("grpo.output_dir is ignored: training state lives in OUT/%s", TRAINER_DIR)
    args["output_dir"] = str(Path(out_dir) / TRAINER_DIR)
    init_kwargs = {**model_init_kwargs(spec), **(grpo.get("model_init_kwargs") or {})}
    if spec.mode == "qlora" and spec.device == "cuda":
        # TRL's default for one process is device_map="auto", which spreads the 4-bit base
        # over every visible GPU; the job's GPU is the first one it sees.
        init_kwargs.setdefault("device_map", {"": 0})
    args["model_init_kwargs"] = init_kwargs or None
    return args


def quantization_kwargs(spec: RunSpec) -> dict[str, Any] | None:
    """BitsAndBytesConfig kwargs (qlora only): 4-bit NF4 with bf16 compute unless overridden."""
    return config_quantization(spec.mode, spec.quantization)


def lora_kwargs(spec: RunSpec) -> dict[str, Any] | None:
    """peft.LoraConfig kwargs (qlora only): the notebook's r/alpha/dropout unless overridden."""
    if spec.mode != "qlora":
        return None
    defaults = {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "task_type": "CAUSAL_LM",
    }
    return {**defaults, **spec.lora}


def build_peft_objects(spec: RunSpec) -> dict[str, Any]:
    """GRPOTrainer's `quantization_config` and `peft_config` for qlora (TRL >= 1.8 takes both)."""
    if spec.mode != "qlora":
        return {}
    try:
        from peft import LoraConfig
    except ImportError:
        raise TrainError(f"mode qlora needs peft: {GPU_HINT}") from None
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(**quantization_kwargs(spec)),
        "peft_config": LoraConfig(**lora_kwargs(spec)),
    }


def check_environment(spec: RunSpec, model: str) -> None:
    """GPU modes: packages and CUDA present; a model that is neither local nor reachable.

    Each failure is one line naming the fix (aha.launch.gpu), before any slow import or download.
    """
    from aha.launch import gpu

    try:
        gpu.check_mode(spec.mode, spec.grpo, spec.device)
        if not Path(model).is_dir():
            gpu.resolve_model(model)
    except gpu.GpuEnvError as err:
        raise TrainError(str(err)) from None


# ----------------------------------------------------------------------------- data


def load_train_dataset(data_dir: Path, tokenizer: Any) -> Dataset:
    """train.parquet with a `prompt` column: the R1 prompt rendered as a plain string.

    A string, not chat messages: TRL renders chat prompts with add_generation_prompt=True, which
    would close the prefilled assistant turn (see aha.task.prompts). nums/target (and id, pattern)
    ride along as columns, which TRL passes to the reward functions.
    """
    from datasets import Dataset

    try:
        frame = formats.read_split(Path(data_dir) / "train.parquet")
    except formats.DataSourceError as err:
        raise TrainError(str(err)) from None
    nums = [[int(n) for n in row] for row in frame["nums"]]
    targets = [int(t) for t in frame["target"]]
    columns: dict[str, list[Any]] = {
        "prompt": [prompts.render(tokenizer, n, t) for n, t in zip(nums, targets, strict=True)],
        "nums": nums,
        "target": targets,
    }
    if "id" in frame.columns:
        columns["id"] = [int(i) for i in frame["id"]]
    if "pattern" in frame.columns:
        columns["pattern"] = [None if p is None else str(p) for p in frame["pattern"]]
    return Dataset.from_dict(columns)


# ----------------------------------------------------------------------------- timing

# The GRPOTrainer method that generates a batch's completions and scores them (rewards, and the
# old and reference log-probs when the loss needs them): TRL 1.16's name, checked at runtime.
GENERATION_METHOD = "_generate_and_score_completions"
GENERATION_KEY = "timing/generation_s_per_step"
OPTIMISATION_KEY = "timing/optimisation_s_per_step"


class GenerationTimer:
    """Wall seconds spent generating (and scoring) completions, per optimizer step.

    TRL logs `step_time`, the seconds of a whole optimizer step's `training_step` calls,
    generation included; this splits it, for the report's compute figure: generation per
    step, and the rest ("optimisation": the loss's forward and backward passes; the optimizer
    update itself runs outside TRL's `step_time`). Steps that reuse buffered completions
    (steps_per_generation, num_iterations > 1) generate nothing: 0 s.
    """

    def __init__(self) -> None:
        self.active = False
        self.pending = 0.0  # seconds in the optimizer step under way
        self.per_step: list[float] = []  # one value per optimizer step since the last log

    def wrap(self, trainer: Any) -> bool:
        """Time `trainer`'s generation method (this instance only). Without one (another TRL
        version) nothing is timed or logged, and the training log says so once: False."""
        method = getattr(trainer, GENERATION_METHOD, None)
        if not callable(method):
            log.warning(
                "%s has no %s (TRL %s): the training log gets no generation/optimisation "
                "split of step_time",
                type(trainer).__name__,
                GENERATION_METHOD,
                _trl_version(),
            )
            return False

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if getattr(getattr(trainer, "model", None), "training", True):  # not eval
                    self.pending += time.perf_counter() - start

        setattr(trainer, GENERATION_METHOD, timed)
        self.active = True
        return True

    def step_end(self) -> None:
        if self.active:
            self.per_step.append(self.pending)
            self.pending = 0.0

    def split(self, step_time: Any) -> dict[str, float]:
        """The log entry's split of `step_time` (TRL's mean over the logged steps), from the mean
        over the same steps; {} when not timing or nothing was measured."""
        steps, self.per_step = self.per_step, []
        if not self.active or not steps or not isinstance(step_time, int | float):
            return {}
        generation = sum(steps) / len(steps)
        return {
            GENERATION_KEY: round(generation, 4),
            OPTIMISATION_KEY: round(max(float(step_time) - generation, 0.0), 4),
        }


def _trl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return "?"


def make_timing_callback(timer: GenerationTimer) -> TrainerCallback:
    """Adds the generation/optimisation split to every training log entry with a `step_time`.

    transformers' `Trainer.log` appends a copy of the logs to `state.log_history` before the
    callbacks see them, so the entry is updated there too; this callback runs before the one
    that writes train_log.jsonl.
    """
    from transformers import TrainerCallback

    class TimingCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer.step_end()
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "step_time" not in logs:
                return control
            split = timer.split(logs["step_time"])
            logs.update(split)
            entry = state.log_history[-1] if state.log_history else {}
            if split and entry.get("step") == state.global_step and "step_time" in entry:
                entry.update(split)
            return control

    return TimingCallback()


# ----------------------------------------------------------------------------- callbacks


def make_callbacks(
    spec: RunSpec,
    out_dir: Path,
    stop: StopRequest,
    seconds_before: float,
    timer: GenerationTimer | None = None,
) -> list[TrainerCallback]:
    """The step callback (exact checkpoints, stop on signal, weight export), the timing split
    (when `timer` is given) and the log writer, in that order."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        """Save at exactly the configured steps (and the last), export their weights."""

        def __init__(self) -> None:
            self.steps = frozenset(spec.checkpoints)
            self.started = time.monotonic()
            # Set by `train` under several processes: all ranks must agree to stop together.
            self.sync: Callable[[bool], bool] = lambda flag: flag

        def train_seconds(self) -> float:
            return round(seconds_before + time.monotonic() - self.started, 3)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in self.steps or state.global_step >= state.max_steps:
                control.should_save = True
            if self.sync(stop.signum is not None):
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return control
            step = state.global_step
            checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
            meta = {
                "train_seconds": self.train_seconds(),
                "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            if checkpoint.is_dir():
                (checkpoint / STATE_FILE).write_text(json.dumps(meta) + "\n")
                if step in self.steps:
                    export_weights(checkpoint, out_dir / WEIGHTS_DIR / f"step-{step}")
                    log.info("checkpoint %d: weights in %s", step, out_dir / WEIGHTS_DIR)
            return control

    class LogHistoryCallback(TrainerCallback):
        """Rewrite train_log.jsonl from the trainer's whole log history at every log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_log_history(out_dir / LOG_FILE, state.log_history)
            return control

    timing = [make_timing_callback(timer)] if timer is not None else []
    return [CheckpointCallback(), *timing, LogHistoryCallback()]


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    global_step: int
    stopped_by: str | None  # signal name when a signal stopped training early
    resumed_from: str | None
    manifests: list[Path]


def train(
    spec: RunSpec,
    data_dir: Path,
    model: str,
    out_dir: Path,
    seed: int | None = None,
    *,
    sample_rate: float = 0.1,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train one run to `grpo.max_steps`, resuming from OUT/trainer's newest checkpoint if any."""
    out_dir = Path(out_dir)
    check_environment(spec, model)
    trainer_dir = out_dir / TRAINER_DIR
    grpo_args = build_grpo_args(spec, out_dir, seed)
    is_main = int(os.environ.get("RANK", "0")) == 0

    if is_main:
        for path in remove_partial_checkpoints(trainer_dir):
            log.warning("removed the partial checkpoint %s (a kill interrupted its saving)", path)
    resume = newest_checkpoint(trainer_dir)
    done = checkpoint_step(resume) if resume else 0
    if resume is not None:
        log.info("resuming from %s (step %d of %d)", resume, done, spec.max_steps)
        if is_main:
            recover_weights(spec.checkpoints, out_dir, done)
    if done >= spec.max_steps:  # finished before; only the declared outputs are missing
        state = json.loads((resume / "trainer_state.json").read_text())
        if is_main:
            write_log_history(out_dir / LOG_FILE, state.get("log_history", []))
            manifests = write_manifests(spec.name, spec.mode, spec.checkpoints, out_dir, model)
        return TrainResult(done, None, str(resume), manifests if is_main else [])

    from transformers import AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    if spec.device == "cpu" and spec.mode != "cpu":
        from aha.launch import cpu_rehearsal

        cpu_rehearsal.prepare(spec.grpo)
    if uses_vllm_server({"mode": spec.mode, "grpo": spec.grpo}):
        from aha.launch import (
            weight_sync,  # after the rehearsal's stand-ins, so they are bounded too
        )

        if spec.weight_sync_timeout_s is None:
            raise TrainError(f"runs.{spec.name}.weight_sync_timeout_s: required in server mode")
        weight_sync.install(
            spec.weight_sync_timeout_s, setting=f"runs.{spec.name}.weight_sync_timeout_s"
        )

    try:
        config = GRPOConfig(**grpo_args)
    except (TypeError, ValueError) as err:  # TRL validates its own options
        raise TrainError(f"runs.{spec.name}.grpo: TRL's GRPOConfig refused it: {err}") from None
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left", truncation_side="left")
    dataset = load_train_dataset(data_dir, tokenizer)
    sampler = CompletionSampler(out_dir / SAMPLES_DIR, seed=config.seed, rate=sample_rate)
    if is_main:
        sampler.touch()
    stop = StopRequest()
    seconds_before = float(read_state_file(resume).get("train_seconds", 0.0)) if resume else 0.0
    timer = GenerationTimer()
    callbacks = make_callbacks(spec, out_dir, stop, seconds_before, timer)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(sampler),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[*callbacks, *extra_callbacks],
        **build_peft_objects(spec),
    )
    timer.wrap(trainer)
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        import torch

        def any_rank(flag: bool) -> bool:
            flags = torch.tensor([float(flag)], device=accelerator.device)
            return bool(accelerator.reduce(flags, reduction="sum").item() > 0)

        callbacks[0].sync = any_rank
    is_main = accelerator.is_main_process

    stop.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        stop.uninstall()
    step = trainer.state.global_step
    if is_main:
        write_log_history(out_dir / LOG_FILE, trainer.state.log_history)
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        log.warning(
            "stopped by %s at step %d; a rerun resumes from checkpoint-%d", name, step, step
        )
        return TrainResult(step, name, str(resume) if resume else None, [])
    manifests = (
        write_manifests(spec.name, spec.mode, spec.checkpoints, out_dir, model) if is_main else []
    )
    accelerator.wait_for_everyone()
    return TrainResult(step, None, str(resume) if resume else None, manifests)


# ----------------------------------------------------------------------------- CLI


def cli(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="GRPO training of one run with TRL: checkpoints at exactly the configured "
        "steps, resume from the newest checkpoint, train_log.jsonl and completion samples.",
    )
    parser.add_argument(
        "--run-spec",
        required=True,
        help="the run's settings as one JSON string: aha.config.run_view(config, run) "
        "(name, mode, model, checkpoints, grpo, lora, quantization, vllm_server)",
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder holding train.parquet (results/data)"
    )
    parser.add_argument(
        "--model", required=True, help="the policy to start from: a model directory or a Hub id"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="run folder (results/runs/RUN/seed-SEED): trainer/, weights/, checkpoints/, train_log.jsonl",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed used when the run's grpo sets no `seed`"
    )
    parser.add_argument(
        "--sample-rate",
        type=float,
        default=0.1,
        help="share of completions written to completion_samples/ (default 0.1, as the seed)",
    )
    args = parser.parse_args(argv)
    block_stop_signals()  # before any thread starts: see StopRequest
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True
    )
    # GPU memory into $AHA_GPU_LOG (rank 0, when nvidia-smi exists); its thread starts after
    # block_stop_signals, so it never takes a stop signal either
    with gpu_monitor.monitor():
        try:
            spec = RunSpec.from_view(json.loads(args.run_spec))
            if spec.mode == "cpu":
                cpu_threads.fit_torch_threads()  # fewer threads beside a busy neighbour
            result = train(
                spec,
                args.data_dir,
                args.model,
                args.out_dir,
                args.seed,
                sample_rate=args.sample_rate,
            )
        except json.JSONDecodeError as err:
            raise SystemExit(f"{prog}: --run-spec is not JSON: {err}") from None
        except (TrainError, CheckpointError, ConfigError) as err:
            raise SystemExit(f"{prog}: {err}") from None
    if result.stopped_by is not None:
        print(
            f"{prog}: stopped by {result.stopped_by} at step {result.global_step}; rerun to resume",
            file=sys.stderr,
        )
        raise SystemExit(143 if result.stopped_by == "SIGTERM" else 130)
    log.info("done: step %d, %d checkpoint manifests", result.global_step, len(result.manifests))
