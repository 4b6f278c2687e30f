"""Stage `train`: GRPO training of one run with TRL, checkpoints at exactly the configured steps.

The run folder (`--out-dir`, results/runs/{run}/seed-{seed}) is laid out by `aha.formats`: TRL's
`trainer/`, the configured steps' `weights/step-N/`, the declared `checkpoints/step-N.json`
manifests and `train_log.jsonl` (rewritten from the trainer state on every log, so a resumed
run still holds the whole history once). `completion_samples/` holds random completions and
successful ones, like the seed's script.

SIGTERM or SIGINT (SLURM preemption, a killed snakemake) asks the trainer to save a checkpoint
at the end of the current step and stop; the process then exits non-zero so the job counts as
failed and its rerun resumes. SIGKILL loses the steps since the newest checkpoint-N.

The run is an `aha.run.Run` (`--run`, the JSON the train rule passes): what its mode implies,
the GRPOConfig arguments among it, is the Run's and its mode's row, testable without CUDA;
bitsandbytes, peft, deepspeed and vLLM are only imported (by TRL or `Run.peft_objects`) in the
GPU modes, after `aha.launch.gpu` checked that they are installed.
"""

from __future__ import annotations

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
from aha.cli import failing_as, json_arg, parser, setup_logging
from aha.config import ConfigError
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
from aha.launch import cpu_threads, gpu_monitor, tracking
from aha.launch.stop_signals import StopRequest, block_stop_signals
from aha.run import Run
from aha.task import prompts
from aha.task.grpo_rewards import SAMPLES_DIR, CompletionSampler, reward_funcs

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainerCallback

log = logging.getLogger("aha.stages.train")


class TrainError(RuntimeError):
    """A run that cannot train or resume as configured; one line naming the fix."""


# ----------------------------------------------------------------------------- environment


def check_environment(run: Run, model: str) -> None:
    """GPU modes: packages and CUDA present; a model that is neither local nor reachable.

    Each failure is one line naming the fix (aha.launch.gpu), before any slow import or download.
    """
    from aha.launch import gpu

    try:
        gpu.check_run(run)
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
    run: Run,
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
            self.steps = frozenset(run.checkpoints)
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
    run: Run,
    data_dir: Path,
    model: str,
    out_dir: Path,
    *,
    sample_rate: float = 0.1,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train one run to `grpo.max_steps`, resuming from OUT/trainer's newest checkpoint if any:
    resume, or stop at once when it finished before; else build the trainer and train."""
    out_dir = Path(out_dir)
    check_environment(run, model)
    grpo_args = run.grpo_args(out_dir)  # a pinned port the wrapper did not take fails first
    resume = resume_point(run, out_dir)
    if resume is not None and checkpoint_step(resume) >= run.max_steps:
        return finished_before(run, resume, out_dir, model)
    stop = StopRequest()
    tracking.prepare(run.trackers, out_dir)  # trackio reads its folder when TRL imports it
    trainer = build_trainer(
        run, grpo_args, data_dir, model, out_dir, resume, stop, sample_rate, extra_callbacks
    )
    return fit(run, trainer, stop, out_dir, model, resume)


def _rank_zero() -> bool:  # before the trainer (and its accelerator) exists
    return int(os.environ.get("RANK", "0")) == 0


def resume_point(run: Run, out_dir: Path) -> Path | None:
    """The newest whole checkpoint-N to resume from, None for a fresh run. Partial checkpoints
    (a kill interrupted their saving) are removed, and the configured steps' weights a killed
    run had not exported yet recovered from the checkpoints (rank 0)."""
    trainer_dir = out_dir / TRAINER_DIR
    if _rank_zero():
        for path in remove_partial_checkpoints(trainer_dir):
            log.warning("removed the partial checkpoint %s (a kill interrupted its saving)", path)
    resume = newest_checkpoint(trainer_dir)
    if resume is not None:
        done = checkpoint_step(resume)
        log.info("resuming from %s (step %d of %d)", resume, done, run.max_steps)
        if _rank_zero():
            recover_weights(run.checkpoints, out_dir, done)
    return resume


def finished_before(run: Run, resume: Path, out_dir: Path, model: str) -> TrainResult:
    """A run that trained to max_steps before: only its declared outputs are written again."""
    done = checkpoint_step(resume)
    manifests: list[Path] = []
    if _rank_zero():
        state = json.loads((resume / "trainer_state.json").read_text())
        write_log_history(out_dir / LOG_FILE, state.get("log_history", []))
        manifests = write_manifests(run.name, run.mode.name, run.checkpoints, out_dir, model)
    return TrainResult(done, None, str(resume), manifests)


def build_trainer(
    run: Run,
    grpo_args: dict[str, Any],
    data_dir: Path,
    model: str,
    out_dir: Path,
    resume: Path | None,
    stop: StopRequest,
    sample_rate: float,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> Any:
    """The GRPOTrainer: a rehearsal's patches and server mode's bound on calls to the server
    first, then TRL's GRPOConfig (its own validation, one line), the seeded dataset, rewards
    and completion samples, our callbacks (then `extra_callbacks`), the LoRA/NF4 objects."""
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    if run.rehearsal:
        from aha.launch import cpu_rehearsal

        cpu_rehearsal.prepare(run)
    if run.uses_vllm_server:
        from aha.launch import weight_sync  # after the rehearsal's stand-ins: bounded too

        setting = f"runs.{run.name}.weight_sync_timeout_s"
        weight_sync.install(run.weight_sync_timeout_s, setting=setting)
    try:
        config = GRPOConfig(**grpo_args)
    except (TypeError, ValueError) as err:  # TRL validates its own options
        raise TrainError(f"runs.{run.name}.grpo: TRL's GRPOConfig refused it: {err}") from None
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left", truncation_side="left")
    dataset = load_train_dataset(data_dir, tokenizer)
    sampler = CompletionSampler(out_dir / SAMPLES_DIR, seed=config.seed, rate=sample_rate)
    if _rank_zero():
        sampler.touch()
    seconds_before = float(read_state_file(resume).get("train_seconds", 0.0)) if resume else 0.0
    timer = GenerationTimer()
    callbacks = make_callbacks(run, out_dir, stop, seconds_before, timer)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(sampler),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[*callbacks, *extra_callbacks],
        **run.peft_objects(),
    )
    timer.wrap(trainer)
    tracking.use_run_folder_tensorboard(trainer, out_dir)  # rank 0, appends after a resume
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:  # every rank stops at the same step
        import torch

        def any_rank(flag: bool) -> bool:
            flags = torch.tensor([float(flag)], device=accelerator.device)
            return bool(accelerator.reduce(flags, reduction="sum").item() > 0)

        callbacks[0].sync = any_rank
    return trainer


def fit(
    run: Run, trainer: Any, stop: StopRequest, out_dir: Path, model: str, resume: Path | None
) -> TrainResult:
    """Train with the stop signals installed; the manifests once max_steps is reached, or a
    stopped run's step (a rerun resumes from the checkpoint its stop saved)."""
    resumed = str(resume) if resume else None
    stop.install()
    try:
        trainer.train(resume_from_checkpoint=resumed)
    finally:
        stop.uninstall()
    step = trainer.state.global_step
    is_main = trainer.accelerator.is_main_process
    if is_main:
        write_log_history(out_dir / LOG_FILE, trainer.state.log_history)
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        log.warning(
            "stopped by %s at step %d; a rerun resumes from checkpoint-%d", name, step, step
        )
        return TrainResult(step, name, resumed, [])
    manifests = []
    if is_main:
        manifests = write_manifests(run.name, run.mode.name, run.checkpoints, out_dir, model)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(step, None, resumed, manifests)


# ----------------------------------------------------------------------------- CLI


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    p.add_argument(
        "--run",
        required=True,
        type=json_arg(Run.from_json),
        metavar="JSON",
        help="the run as one JSON object, as the train rule passes it (aha.run.Run.to_json: "
        "name, seed, mode, device, model, checkpoints, grpo, lora, quantization, ...)",
    )
    p.add_argument(
        "--data-dir", type=Path, required=True, help="folder holding train.parquet (results/data)"
    )
    p.add_argument(
        "--model", required=True, help="the policy to start from: a model directory or a Hub id"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="run folder (results/runs/RUN/seed-SEED): trainer/, weights/, checkpoints/, train_log.jsonl, tensorboard/",
    )
    p.add_argument(
        "--sample-rate",
        type=float,
        default=0.1,
        help="share of completions written to completion_samples/ (default 0.1, as the seed)",
    )
    args = p.parse_args(argv)
    block_stop_signals()  # before any thread starts: see StopRequest
    setup_logging()
    run: Run = args.run
    # GPU memory into $AHA_GPU_LOG (rank 0, when nvidia-smi exists); its thread starts after
    # block_stop_signals, so it never takes a stop signal either
    with gpu_monitor.monitor(), failing_as(prog, TrainError, CheckpointError, ConfigError):
        if run.mode.cpu_only:
            cpu_threads.fit_torch_threads()  # fewer threads beside a busy neighbour
        result = train(run, args.data_dir, args.model, args.out_dir, sample_rate=args.sample_rate)
    if result.stopped_by is not None:
        print(
            f"{prog}: stopped by {result.stopped_by} at step {result.global_step}; rerun to resume",
            file=sys.stderr,
        )
        raise SystemExit(143 if result.stopped_by == "SIGTERM" else 130)
    log.info("done: step %d, %d checkpoint manifests", result.global_step, len(result.manifests))
