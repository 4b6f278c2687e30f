"""The reward functions GRPO trains with, and the completion samples they write on the way.

The rewards themselves are `aha.task.rewards` (pure, bounded, tested on known inputs); this wraps
the equation reward so that, like the seed's script, it also writes a share of the completions
(and of the correct ones) to the run folder's `completion_samples/`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aha.task import rewards

SAMPLES_DIR = "completion_samples"
SAMPLES_FILE = "completion_samples.txt"
SUCCESS_FILE = "success_completion_samples.txt"


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
    """`aha.task.rewards.equation_reward` that also feeds the completion sampler (main process).

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
