"""Stage `train`: GRPO training of one run with TRL, checkpoints at exactly the configured steps.

The run folder (`--out-dir`, results/runs/{run}) is laid out by `aha.checkpoints`: TRL's
`trainer/`, the configured steps' `weights/step-N/`, the declared `checkpoints/step-N.json`
manifests and `train_log.jsonl` (rewritten from the trainer state on every log, so a resumed
run still holds the whole history once). `completion_samples/` holds random completions and
successful ones, like the seed's script.

SIGTERM or SIGINT (SLURM preemption, a killed snakemake) asks the trainer to save a checkpoint
at the end of the current step and stop; the process then exits non-zero so the job counts as
failed and its rerun resumes. SIGKILL loses the steps since the newest checkpoint-N.

Per-mode settings are pure functions of the run spec (`build_grpo_args`, `model_init_kwargs`,
`quantization_kwargs`, `lora_kwargs`), testable without CUDA; bitsandbytes, peft, deepspeed and
vLLM are only imported (by TRL or `build_peft_objects`) in the GPU modes, after `aha.gpu`
checked that they are installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha import prepare_data, prompts, rewards
from aha.checkpoints import (
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
from aha.config import MODES, ConfigError
from aha.config import quantization_kwargs as config_quantization
from aha.sections import RunSpec

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainerCallback

log = logging.getLogger("aha.train")

SAMPLES_DIR = "completion_samples"
SAMPLES_FILE = "completion_samples.txt"
SUCCESS_FILE = "success_completion_samples.txt"
# transformers 5: `gradient_checkpointing` is a deprecated alias of `activation_checkpointing`;
# TRL's config still defaults the alias to True, so a mode default must set the new name.
_CHECKPOINTING_KEYS = ("activation_checkpointing", "gradient_checkpointing")
GPU_HINT = (
    "pip install 'aha-countdown[gpu]' (or workflow/envs/aha.yaml), or use config/tiny.yaml on CPU"
)


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
    run sets itself.
    """
    grpo = dict(spec.grpo)
    args = dict(grpo)
    for key, value in mode_defaults(spec.mode, spec.device).items():
        aliases = _CHECKPOINTING_KEYS if key in _CHECKPOINTING_KEYS else (key,)
        if not any(alias in grpo for alias in aliases):
            args[key] = value
    if seed is not None and "seed" not in grpo:
        args["seed"] = seed
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

    Each failure is one line naming the fix (aha.gpu), before any slow import or download.
    """
    from aha import gpu

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
    would close the prefilled assistant turn (see aha.prompts). nums/target (and id, pattern)
    ride along as columns, which TRL passes to the reward functions.
    """
    from datasets import Dataset

    try:
        frame = prepare_data.read_split(Path(data_dir) / "train.parquet")
    except prepare_data.DataSourceError as err:
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


# ----------------------------------------------------------------------------- completion samples


class CompletionSampler:
    """Random completions (and successful ones) into the run folder, like the seed's script.

    The seed wrote 10% of completions, and 10% of the correct ones, from inside its reward
    functions; so does this, from the main process only, with a seeded generator and a size cap
    per file so a long run cannot fill a disk with text.
    """

    def __init__(
        self, out_dir: Path, seed: int, rate: float = 0.1, max_bytes: int = 2_000_000
    ) -> None:
        self.dir = Path(out_dir)
        self.rate = rate
        self.max_bytes = max_bytes
        self.rng = random.Random(seed)

    def touch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in (SAMPLES_FILE, SUCCESS_FILE):
            (self.dir / name).touch()

    def record(
        self,
        completions: Sequence[Any],
        nums: Sequence[Any],
        target: Sequence[Any],
        success: Sequence[float],
        step: int | None,
    ) -> None:
        for completion, n, t, ok in zip(completions, nums, target, success, strict=True):
            text = rewards.completion_text(completion)
            header = f"step {step} | nums {[int(x) for x in n]} | target {int(t)}"
            if self.rng.random() < self.rate:
                self._append(SAMPLES_FILE, header, text)
            if ok == 1.0 and self.rng.random() < self.rate:
                self._append(SUCCESS_FILE, header, text)

    def _append(self, name: str, header: str, text: str) -> None:
        path = self.dir / name
        if path.exists() and path.stat().st_size >= self.max_bytes:
            return
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"\n\n============== {header}\n{text}")


class EquationReward:
    """`aha.rewards.equation_reward` that also feeds the completion sampler (main process).

    A callable object with the reward's `__name__`, so TRL's log keys stay
    `rewards/equation_reward/mean`, and picklable, unlike a closure.
    """

    __name__ = "equation_reward"

    def __init__(self, sampler: CompletionSampler | None) -> None:
        self.sampler = sampler

    def __call__(
        self, completions: Sequence[Any], target: Sequence[Any], nums: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        scores = rewards.equation_reward(completions, target=target, nums=nums, **kwargs)
        state = kwargs.get("trainer_state")
        if self.sampler is not None and getattr(state, "is_world_process_zero", True):
            step = state.global_step + 1 if state is not None else None  # the step being trained
            self.sampler.record(completions, nums, target, scores, step)
        return scores


def reward_funcs(sampler: CompletionSampler | None) -> list[Callable[..., list[float]]]:
    """[format, equation], in the order of the configs' `reward_weights`."""
    return [rewards.format_reward, EquationReward(sampler)]


# ----------------------------------------------------------------------------- callbacks


def block_stop_signals() -> None:
    """Block SIGTERM and SIGINT in this thread and so in every thread it starts afterwards.

    Called first thing in a training process: a signal then interrupts no thread's system call
    (a gloo or HTTP wait in C code could fail on EINTR mid-collective and lose the checkpoint
    the signal asks for); StopRequest's watcher thread takes it with sigwait instead.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)


class StopRequest:
    """SIGTERM/SIGINT -> a flag the step callback turns into "save and stop"; again -> die now.

    A repeat within `debounce_s` counts as the same request: under SLURM each torchrun worker
    gets SIGTERM from both the job step and its launcher within a fraction of a second, and
    dying on the second copy would lose the checkpoint the first one asked for. Where the
    signals are blocked (`block_stop_signals`) a watcher thread waits for them; the handler
    covers a thread that has them unblocked.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, debounce_s: float = 5.0) -> None:
        self.signum: int | None = None
        self.debounce_s = debounce_s
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closing = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        if self._watcher is None and set(self.SIGNALS) <= blocked:
            self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
            self._watcher.start()  # inherits the mask: sigwait needs the signals blocked

    def uninstall(self) -> None:
        """Restore the handlers and end the watcher; the signals stay blocked, so a late one
        waits while the process writes its log and exits (the launcher's grace covers it)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._watcher is not None:
            self._closing = True
            signal.pthread_kill(self._watcher.ident, self.SIGNALS[0])
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        while True:
            signum = signal.sigwait(self.SIGNALS)
            if self._closing:
                return
            self._request(signum, main_thread=False)

    def _handle(self, signum: int, frame: Any) -> None:
        self._request(signum, main_thread=True)

    def _request(self, signum: int, *, main_thread: bool) -> None:
        with self._lock:
            if self.signum is not None:
                if time.monotonic() - self._first_at < self.debounce_s:
                    return  # the same stop request delivered twice (launcher + job step)
                log.warning("%s again: stopping now", signal.Signals(signum).name)
                if not main_thread:
                    os._exit(128 + signum)
                signal.signal(signum, signal.SIG_DFL)  # a later one: stop waiting for the step
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
                os.kill(os.getpid(), signum)
                return
            self.signum = signum
            self._first_at = time.monotonic()
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping",
            signal.Signals(signum).name,
        )


def make_callbacks(
    spec: RunSpec, out_dir: Path, stop: StopRequest, seconds_before: float
) -> list[TrainerCallback]:
    """The step callback (exact checkpoints, stop on signal, weight export) and the log writer."""
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

    return [CheckpointCallback(), LogHistoryCallback()]


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
        from aha import cpu_rehearsal

        cpu_rehearsal.prepare(spec.grpo)

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
    callbacks = make_callbacks(spec, out_dir, stop, seconds_before)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(sampler),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[*callbacks, *extra_callbacks],
        **build_peft_objects(spec),
    )
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
        help="run folder (results/runs/RUN): trainer/, weights/, checkpoints/, train_log.jsonl",
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
    try:
        spec = RunSpec.from_view(json.loads(args.run_spec))
        result = train(
            spec, args.data_dir, args.model, args.out_dir, args.seed, sample_rate=args.sample_rate
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
