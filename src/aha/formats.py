"""The on-disk artifacts the stages hand each other, owned here: splits, JSON Lines, the run
folder (checkpoints, kept weights, manifests), the summary columns, and atomic writes.

The run folder's layout, owned here: where TRL's checkpoints, kept weights and manifests live.

A run folder (results/runs/{run}/seed-{seed}, the train rule's `--out-dir`):

- `trainer/`: TRL's output_dir (checkpoint-N with optimizer and rng state). Not a declared
  output, so Snakemake never deletes it: a rerun resumes from its newest complete checkpoint.
- `weights/step-N/`: the model (or LoRA adapter) and tokenizer of each configured step, copied
  out of `trainer/checkpoint-N` at save time, so `save_total_limit` rotation cannot delete it.
- `checkpoints/step-N.json`: the declared outputs, one `Manifest` per configured step, rewritten
  from `weights/` at the end of every run (Snakemake deletes them before a rerun). Sampling
  reads them back with `Manifest.read`.
- `train_log.jsonl`: TRL's log history.
- `tensorboard/`: the live training curves' TensorBoard event files (rank 0; a resumed run
  appends to them after its checkpoint's step). Not declared either, so a rerun keeps them.

`aha.stages.train` writes this layout and `aha.stages.sample` reads it; neither spells a path of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("aha.formats")

TRAINER_DIR = "trainer"
WEIGHTS_DIR = "weights"
MANIFEST_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files (aha.launch.tracking)
TRACKIO_DIR = "trackio"  # trackio's local database, unless $TRACKIO_DIR is set (W&B: wandb/)
STATE_FILE = "aha_state.json"  # in each checkpoint-N and weights/step-N: training seconds so far
# Top-level files of a checkpoint-N that are trainer or DeepSpeed state, not the model.
_STATE_FILES = frozenset(
    {
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "trainer_state.json",
        "training_args.bin",
        "latest",
        "zero_to_fp32.py",
        "zero_to_torch.py",
        STATE_FILE,
    }
)
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


class CheckpointError(RuntimeError):
    """A run folder that cannot be resumed or declared as it is; one line naming the fix."""


@dataclass(frozen=True)
class Manifest:
    """checkpoints/step-N.json: what sampling needs to load checkpoint N of a run."""

    run: str
    step: int
    mode: str
    path: str  # the weights folder (weights/step-N), relative to the workflow's directory
    base_model: str
    is_adapter: bool
    train_seconds: float | None = None
    saved_at: str | None = None

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at `path`; its weights looked up beside it if the run folder moved.

        Raises CheckpointError naming the file when it is missing or not a manifest.
        """
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: no such checkpoint manifest")
        try:
            data = json.loads(Path(path).read_text())
            manifest = cls(
                run=str(data["run"]),
                step=int(data["step"]),
                mode=str(data["mode"]),
                path=str(data["path"]),
                base_model=str(data.get("base_model") or ""),
                is_adapter=bool(data.get("is_adapter")),
                train_seconds=data.get("train_seconds"),
                saved_at=data.get("saved_at"),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: not a checkpoint manifest ({err})") from None
        if not Path(manifest.path).is_dir():
            beside = Path(path).resolve().parent.parent / WEIGHTS_DIR / f"step-{manifest.step}"
            if not beside.is_dir():
                raise CheckpointError(f"{path}: its weights {manifest.path} are missing")
            manifest = cls(**{**asdict(manifest), "path": str(beside)})
        if manifest.is_adapter and not manifest.base_model:
            raise CheckpointError(f"{path}: an adapter checkpoint without base_model")
        return manifest


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT_RE.fullmatch(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last: a checkpoint without a readable one is partial."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == checkpoint_step(checkpoint)


def newest_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest complete checkpoint-N under `trainer_dir`, or None."""
    if not trainer_dir.is_dir():
        return None
    found = [(checkpoint_step(p), p) for p in trainer_dir.iterdir() if checkpoint_step(p)]
    complete = [(s, p) for s, p in found if is_complete(p)]
    return max(complete)[1] if complete else None


def remove_partial_checkpoints(trainer_dir: Path) -> list[Path]:
    """Delete checkpoint-N dirs a kill left half-written; they would confuse resume and rotation."""
    removed = []
    if trainer_dir.is_dir():
        for path in trainer_dir.iterdir():
            if checkpoint_step(path) is not None and not is_complete(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def read_state_file(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def export_weights(checkpoint: Path, dest: Path) -> Path:
    """Copy the model files of `checkpoint` (no optimizer/rng/DeepSpeed state) to `dest`, atomically.

    Copied into a temporary sibling and renamed, so `dest` is either absent or complete.
    """
    files = [p for p in checkpoint.iterdir() if p.is_file() and p.name not in _STATE_FILES]
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise CheckpointError(
            f"{checkpoint}: no model weights (only sharded DeepSpeed state?); set "
            "zero3_save_16bit_model: true in the accelerate config so checkpoints are loadable"
        )
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in sorted(checkpoint.iterdir()):
        if (
            item.is_file()
            and item.name not in _STATE_FILES
            and not item.name.startswith("rng_state")
        ):
            shutil.copy2(item, tmp / item.name)
    state = read_state_file(checkpoint)
    (tmp / STATE_FILE).write_text(json.dumps({"step": checkpoint_step(checkpoint), **state}) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def write_manifests(
    run: str, mode: str, steps: Sequence[int], out_dir: Path, base_model: str
) -> list[Path]:
    """checkpoints/step-N.json for every configured step, from the weights dirs (must exist)."""
    manifest_dir = out_dir / MANIFEST_DIR
    manifest_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"step-{s}.json" for s in steps}
    for stale in manifest_dir.glob("step-*.json"):
        if stale.name not in wanted:
            stale.unlink()
    written = []
    for step in steps:
        weights = out_dir / WEIGHTS_DIR / f"step-{step}"
        if not weights.is_dir():
            raise CheckpointError(
                f"{weights}: missing, so checkpoint {step} cannot be declared; delete "
                f"{out_dir / TRAINER_DIR} to train this run again from scratch"
            )
        meta = read_state_file(weights)
        manifest = Manifest(
            run=run,
            step=step,
            mode=mode,
            path=str(weights),
            base_model=base_model,
            is_adapter=(weights / "adapter_config.json").is_file(),
            train_seconds=meta.get("train_seconds"),
            saved_at=meta.get("saved_at"),
        )
        path = manifest_dir / f"step-{step}.json"
        manifest.write(path)
        written.append(path)
    return written


def recover_weights(steps: Sequence[int], out_dir: Path, done_step: int) -> None:
    """Before resuming at `done_step`: every configured step up to it needs its weights dir.

    A kill between saving checkpoint-N and copying it out leaves the copy to do here.
    """
    for step in steps:
        weights = out_dir / WEIGHTS_DIR / f"step-{step}"
        if step > done_step or weights.is_dir():
            continue
        checkpoint = out_dir / TRAINER_DIR / f"checkpoint-{step}"
        if not is_complete(checkpoint):
            raise CheckpointError(
                f"checkpoint {step} was passed (resuming at step {done_step}) but neither "
                f"{weights} nor {checkpoint} exists; delete {out_dir / TRAINER_DIR} to retrain"
            )
        log.info("recovering %s from %s", weights, checkpoint)
        export_weights(checkpoint, weights)


def write_log_history(path: Path, history: Iterable[dict[str, Any]]) -> None:
    """TRL's log history as JSON lines, TRL's key names kept, replacing the file atomically."""
    write_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling and rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- JSON Lines


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; a bad line raises ValueError naming it."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON ({err})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            yield lineno, record


def salvage(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(objects, number of lines that are not one) of a file that may be partial or damaged.

    For readers that show what is there rather than refuse the file (the report: a run killed
    mid-write still gets its figures and pages); a missing file reads as no objects. Stages that
    compute numbers use `records`, which refuses a bad line.
    """
    objects: list[dict[str, Any]] = []
    bad = 0
    if not Path(path).exists():
        return objects, bad
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                objects.append(record)
            else:
                bad += 1
    return objects, bad


# ----------------------------------------------------------------------------- splits


class DataSourceError(RuntimeError):
    """A task source that cannot be read; the message is one line and names the fix."""


def read_split(path: str | Path) -> pd.DataFrame:
    """One split file the prepare_data stage wrote (columns nums and target at least), rows from 0.

    The one reader of train/test/eval.parquet for the later stages (warm start, training,
    sampling), so each names a missing file or column the same way: DataSourceError.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such split; run the prepare_data rule first")
    frame = pd.read_parquet(path)
    missing = {"nums", "target"} - set(frame.columns)
    if missing:
        raise DataSourceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------- summary

# Columns of results/summary.tsv, in order; also the scalar fields of a scores JSON.
# `seed` is the replicate's (runs.<run>.seeds); empty (NA) for a run's shared step-0 baseline.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "run",
    "seed",
    "step",
    "n_prompts",
    "n_completions",
    "k",
    "success_rate",
    "success_lo",
    "success_hi",
    "pass_at_1",
    "pass_at_k",
    "format_rate",
    "numbers_ok_share",
    "tokens_mean",
    "tokens_median",
    "truncated_share",
    "verify_share",
    "backtrack_share",
    "candidates_mean",
    "tokens_mean_correct",
    "tokens_mean_incorrect",
    "reflection_words_mean",
    "reflection_share",
    "success_with_reflection",
    "success_without_reflection",
)


# ----------------------------------------------------------------------------- across seeds

# Columns of results/summary_across_seeds.tsv, in order: `aggregate` writes it and the success
# figure draws its means and intervals.
ACROSS_SEEDS_COLUMNS: tuple[str, ...] = (
    "run",
    "step",
    "seeds",
    "n_seeds",
    "success_mean",
    "success_t_lo",
    "success_t_hi",
    "n_completions",
    "successes",
    "success_pooled",
    "success_pooled_lo",
    "success_pooled_hi",
)
BASELINE = "base"  # the `seeds` of a step-0 row: one sample of the untrained model, every seed's


def across_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, step) of a summary: ACROSS_SEEDS_COLUMNS.

    `success_mean` is the mean of the seeds' success rates with its 95% Student t interval over
    seeds (`success_t_lo/hi`, NA with one seed): how much another training seed would move the
    result. `success_pooled` and its Wilson interval count all completions of all seeds as one
    sample (sampling error only). A step-0 row is the run's shared baseline (`seeds` "base",
    `n_seeds` 1): the untrained model is sampled once and is every seed's step 0. Rows without a
    success rate (an empty samples file) are left out.
    """
    import math

    import pandas as pd

    from aha.task import metrics  # pure Python; imported here, as pandas is, when a table is made

    rows = []
    data = summary.dropna(subset=["success_rate", "n_completions"])
    for (run, step), part in data.groupby(["run", "step"], sort=True):
        seeds = part["seed"].dropna().astype(int).tolist() if "seed" in part else []
        rates = [float(r) for r in part["success_rate"]]
        counts = [
            (round(float(rate) * int(n)), int(n))
            for rate, n in zip(part["success_rate"], part["n_completions"], strict=True)
        ]
        mean, t_lo, t_hi = metrics.mean_t_interval(rates)
        pooled, lo, hi = metrics.pooled_wilson(counts)
        rows.append(
            {
                "run": run,
                "step": int(step),
                "seeds": ",".join(map(str, sorted(seeds))) if seeds else BASELINE,
                "n_seeds": len(rates),
                "success_mean": mean,
                "success_t_lo": None if math.isnan(t_lo) else t_lo,
                "success_t_hi": None if math.isnan(t_hi) else t_hi,
                "n_completions": sum(n for _, n in counts),
                "successes": sum(s for s, _ in counts),
                "success_pooled": pooled,
                "success_pooled_lo": lo,
                "success_pooled_hi": hi,
            }
        )
    out = pd.DataFrame(rows, columns=list(ACROSS_SEEDS_COLUMNS))
    return out.astype(
        {"run": "string", "step": "Int64", "n_seeds": "Int64", "n_completions": "Int64"}
        | {"successes": "Int64", "success_t_lo": "Float64", "success_t_hi": "Float64"}
    )
