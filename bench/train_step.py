"""Seconds per GRPO step on CPU, split into generation, scoring and optimisation.

    .venv/bin/python bench/train_step.py [--model results/models/tiny] [--data-dir results/data]
        [--config config/tiny.yaml] [--run tiny-cpu] [--steps 12] [--threads 0]

Trains `--steps` steps of the run's real settings (aha.stages.train.train, so the same code as the
workflow) in a temporary folder, timing per step:

- generate: `GRPOTrainer._generate_single_turn` (transformers `generate` of every completion);
- score: the rest of `_generate_and_score_completions` (old/ref log-probs, rewards, advantages);
- optimise: the rest of the step (forward + backward of the loss, optimizer step, logging).

Prints a row per step and the mean/median over steps after the first (warm-up). Needs the tiny
model and data of the workflow (`snakemake --cores 2 results/models/tiny`) or any model dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from aha import formats
from aha.run import Run
from aha.stages import train

PHASES = {
    "generate": "_generate_single_turn",
    "generate_and_score": "_generate_and_score_completions",
}


def instrument(timers: dict[str, float]) -> None:
    """Wrap the GRPOTrainer methods of PHASES so each call adds its seconds to `timers`."""
    from trl import GRPOTrainer

    for phase, name in PHASES.items():
        original = getattr(GRPOTrainer, name)

        @functools.wraps(original)
        def timed(self, *args, _original=original, _phase=phase, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return _original(self, *args, **kwargs)
            finally:
                timers[_phase] += time.perf_counter() - t0
                timers[_phase + "_cpu"] += time.process_time() - c0

        setattr(GRPOTrainer, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/models/tiny")
    parser.add_argument("--data-dir", default="results/data")
    parser.add_argument("--config", default="config/tiny.yaml")
    parser.add_argument("--run", default=None, help="run of the config (default: its first)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model; build it with `snakemake --cores 2 results/models/tiny`")

    import torch
    from transformers import TrainerCallback

    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    run = args.run or next(iter(config["runs"]))
    spec = Run.build(config, run)
    grpo = {**spec.grpo, "max_steps": args.steps, "logging_steps": 1, "save_steps": 10**6}
    spec = dataclasses.replace(spec, grpo=grpo, checkpoints=(args.steps,))

    timers: dict[str, float] = defaultdict(float)
    instrument(timers)
    rows: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timers.clear()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.t0
            gen = timers["generate"]
            score = timers["generate_and_score"] - gen
            rows.append(
                {
                    "step": state.global_step,
                    "total": total,
                    "generate": gen,
                    "score": score,
                    "optimise": total - gen - score,
                    "cpu": time.process_time() - self.c0,
                    "generate_cpu": timers["generate_cpu"],
                }
            )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train.train(spec, Path(args.data_dir), args.model, out, extra_callbacks=[StepTimer()])
        log = [row for _, row in formats.records(out / formats.LOG_FILE)]
    lengths = [row["completions/mean_length"] for row in log if "completions/mean_length" in row]

    g = spec.grpo
    print(
        f"\nmodel {args.model}, run {run}: {g.get('per_device_train_batch_size')} completions/step "
        f"({g.get('num_generations')} per prompt), max_completion_length "
        f"{g.get('max_completion_length')}, torch threads {torch.get_num_threads()}"
    )
    print("wall seconds per phase; cpu: process CPU seconds (all threads), less sensitive to load")
    print(
        f"{'step':>5} {'total s':>8} {'generate':>9} {'score':>7} {'optimise':>9} "
        f"{'cpu s':>7} {'gen cpu':>8}"
    )
    for r in rows:
        print(
            f"{r['step']:>5} {r['total']:>8.3f} {r['generate']:>9.3f} {r['score']:>7.3f} "
            f"{r['optimise']:>9.3f} {r['cpu']:>7.3f} {r['generate_cpu']:>8.3f}"
        )
    steady = rows[1:] or rows
    for name, agg in (("mean", statistics.fmean), ("median", statistics.median)):
        keys = ("total", "generate", "score", "optimise", "cpu", "generate_cpu")
        vals = {k: agg(r[k] for r in steady) for k in keys}
        share = vals["generate"] / vals["total"]
        print(
            f"{name:>6} (steps 2..{rows[-1]['step']}): {vals['total']:.3f} s/step = generate "
            f"{vals['generate']:.3f} ({share:.0%}) + score {vals['score']:.3f} + optimise "
            f"{vals['optimise']:.3f}; cpu {vals['cpu']:.3f} s/step, generate "
            f"{vals['generate_cpu']:.3f}"
        )
    if lengths:
        print(f"mean completion length {statistics.fmean(lengths):.1f} tokens")


if __name__ == "__main__":
    main()
