"""Live training curves: the trackers a run reports to (TRL's `report_to`, `Run.trackers`).

TensorBoard is every mode's default: rank 0 writes its event files into the run folder's
`tensorboard/` (`aha.formats.TENSORBOARD_DIR`), whatever `$TENSORBOARD_LOGGING_DIR` says, so
each replicate has its own. transformers' `TensorBoardCallback` is replaced by one whose writer
purges what a killed session logged after the checkpoint a run resumes from: a run resumed from
checkpoint-N starts its events with TensorBoard's purge marker at step N + 1
(`SummaryWriter(purge_step=...)`), and every reader hides the older events from N + 1 on, so
each step appears once, with the values of the session that kept it.

The other trackers are transformers' own integrations, set up by environment variables read
when they start: where the user has not set them, trackio keeps its database in the run
folder's `trackio/` (`$TRACKIO_DIR`, which trackio reads when it is imported: this must run
before `trl` is) and W&B runs offline into the run folder's `wandb/` (`$WANDB_MODE`,
`$WANDB_DIR`; `wandb sync` uploads it later, `WANDB_MODE=online` streams instead).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

from aha.formats import TENSORBOARD_DIR, TRACKIO_DIR

log = logging.getLogger("aha.launch.tracking")

TENSORBOARD = "tensorboard"


def tracker_env(
    trackers: Iterable[str], out_dir: Path, env: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """The environment variables the run's trackers need that `env` (default os.environ) lacks:
    their local folders inside the run folder `out_dir`, W&B offline."""
    env = os.environ if env is None else env
    wanted: dict[str, str] = {}
    names = set(trackers)
    if "trackio" in names:
        wanted["TRACKIO_DIR"] = str(Path(out_dir) / TRACKIO_DIR)
    if "wandb" in names:
        wanted["WANDB_MODE"] = "offline"
        wanted["WANDB_DIR"] = str(out_dir)  # wandb writes its own wandb/ inside
    return {key: value for key, value in wanted.items() if not env.get(key)}


def prepare(
    trackers: Iterable[str], out_dir: Path, env: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Set `tracker_env` in `env` (default os.environ), before transformers or TRL start the
    trackers; the variables set, each logged once."""
    env = os.environ if env is None else env
    chosen = tracker_env(trackers, out_dir, env)
    for key, value in chosen.items():
        env[key] = value
        log.info("tracking: %s=%s", key, value)
    return chosen


@functools.cache
def _callback_class() -> type:
    from transformers.integrations import TensorBoardCallback

    class RunFolderTensorBoardCallback(TensorBoardCallback):
        """transformers' TensorBoardCallback (rank 0 only, as it is) writing into `log_dir`,
        with a writer that purges the events of steps after the one training starts from."""

        def __init__(self, log_dir: str | Path) -> None:
            super().__init__()
            self.logging_dir = str(log_dir)
            self.purge_step: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # state.global_step is the checkpoint's here (Trainer loads its state before
            # on_train_begin): its step's events stay, the later ones a killed session left go
            if state.is_world_process_zero and self.tb_writer is None:
                self.purge_step = state.global_step + 1
            return super().on_train_begin(args, state, control, **kwargs)

        def _init_summary_writer(self, args):
            self.tb_writer = self._SummaryWriter(
                log_dir=self.logging_dir, purge_step=self.purge_step
            )

    return RunFolderTensorBoardCallback


def tensorboard_callback(log_dir: str | Path) -> Any:
    """A TensorBoard callback writing into `log_dir` that purges after the resumed step."""
    return _callback_class()(log_dir)


def use_run_folder_tensorboard(trainer: Any, out_dir: Path) -> Path | None:
    """Where the trainer reports to TensorBoard: swap transformers' callback for ours, writing
    into OUT/tensorboard (added last, so it also sees what our callbacks add to a log entry).
    The folder, or None when the run does not report to TensorBoard."""
    from transformers.integrations import TensorBoardCallback

    if TENSORBOARD not in (trainer.args.report_to or []):
        return None
    trainer.remove_callback(TensorBoardCallback)
    log_dir = Path(out_dir) / TENSORBOARD_DIR
    trainer.add_callback(tensorboard_callback(log_dir))
    return log_dir
