"""Live training curves for real: tiny CPU GRPO runs (tests/unit/test_train.py's fixtures) write
TensorBoard events into the run folder, a resumed run's steps appear once, and trackio and W&B
(the `trackers` extra) keep their data locally, offline, in the run folder.

Read back with the trackers' own readers: TensorBoard's EventAccumulator, trackio's API; the
W&B offline run's record file and completion tables (wandb 0.31 has no Python reader of it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aha import formats
from aha.stages import train
from tests.unit.test_train import make_tiny_model, run_spec, write_tasks

pytestmark = pytest.mark.slow

CURVES = (
    "reward",
    "rewards/format_reward/mean",
    "rewards/equation_reward/mean",
    "completions/mean_length",
    "learning_rate",
)
TRACKERS = ["tensorboard", "trackio", "wandb"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("data"))


def read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


class Crash(RuntimeError):
    """A session that dies as a SIGKILL would: after logging a step it never saved."""


def test_a_cpu_runs_curves_reach_tensorboard_and_a_resume_repeats_no_step(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    from transformers import TrainerCallback

    class CrashBeforeStep4(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:  # step 3 logged, checkpoint-2 the newest
                raise Crash

    out = tmp_path / "run"
    spec = run_spec(checkpoints=(2, 4), save_steps=100)  # saves at 2 and 4 only
    assert spec.trackers == ["tensorboard"]  # the default: the spec sets no report_to
    with pytest.raises(Crash):
        train.train(spec, data_dir, str(tiny_model), out, extra_callbacks=[CrashBeforeStep4()])
    log_dir = out / formats.TENSORBOARD_DIR
    first = read_events(log_dir)
    assert [e.step for e in first.Scalars("train/reward")] == [1, 2, 3]

    resumed_at = time.time()
    result = train.train(spec, data_dir, str(tiny_model), out)
    assert result.resumed_from.endswith("checkpoint-2") and result.global_step == 4

    events = read_events(log_dir)
    log = [row for row in map(json.loads, (out / formats.LOG_FILE).open()) if "reward" in row]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    for key in (*CURVES, train.GENERATION_KEY):  # ours too: the callback runs after the split
        scalars = events.Scalars(f"train/{key}")
        assert [e.step for e in scalars] == [1, 2, 3, 4], key  # once each: step 3 not twice
        assert [e.value for e in scalars] == pytest.approx([row[key] for row in log], rel=1e-6)
        # steps 1 and 2 kept from the first session, 3 and 4 the resumed one's
        assert [e.wall_time >= resumed_at for e in scalars] == [False, False, True, True], key
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # one file per session
    assert not list((out / formats.TRAINER_DIR).glob("runs"))  # not transformers' default


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path):
    """`python -m aha train`, as the train rule runs it, reporting to TensorBoard, trackio and
    W&B with none of their variables set, and every proxy a dead port: nothing goes out."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    spec = run_spec(max_steps=2, checkpoints=(2,), save_steps=100, report_to=TRACKERS)
    cmd = [sys.executable, "-m", "aha", "train", "--run", spec.to_json()]
    cmd += ["--data-dir", str(data_dir), "--model", str(tiny_model), "--out-dir", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    dead = "http://127.0.0.1:9"
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", NO_PROXY="", no_proxy="")
    env.update({k: dead for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, spec, proc.stderr


def test_wandb_runs_offline_into_the_run_folder(tracked_run) -> None:
    out, spec, stderr = tracked_run
    assert "WANDB_MODE=offline" in stderr and f"WANDB_DIR={out}" in stderr
    (run,) = (out / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    data = records.read_bytes()
    assert data.startswith(b":W&B")  # W&B's record file, which `wandb sync` uploads
    for key in CURVES:
        assert f"train/{key}".encode() in data, key
    assert f"{spec.name}-seed-{spec.seed}".encode() in data  # the replicate's run name
    # log_completions, on by default with W&B: the completion tables with both rewards
    tables = sorted((run / "files" / "media" / "table").glob("completions_*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["step", "prompt", "completion"]
    assert {"format_reward", "equation_reward"} <= set(table["columns"])
    assert len(table["data"]) == 8  # one step's completions: 2 prompts x 4 generations


TRACKIO_READ = """
import json
from trackio.api import Api
from trackio.sqlite_storage import SQLiteStorage
runs = [run.name for run in Api().runs("huggingface")]
print(json.dumps({"runs": runs, "logs": SQLiteStorage.get_logs("huggingface", runs[0])}, default=str))
"""


def test_trackio_keeps_its_database_in_the_run_folder(tracked_run) -> None:
    out, spec, _ = tracked_run
    assert (out / formats.TRACKIO_DIR / "huggingface.db").is_file()  # TRL's default project
    env = {**os.environ, "TRACKIO_DIR": str(out / formats.TRACKIO_DIR), "HF_HUB_OFFLINE": "1"}
    read = subprocess.run(
        [sys.executable, "-c", TRACKIO_READ], env=env, capture_output=True, text=True, timeout=120
    )
    assert read.returncode == 0, read.stderr[-3000:]
    found = json.loads(read.stdout.splitlines()[-1])
    assert found["runs"] == [f"{spec.name}-seed-{spec.seed}"]
    by_step = {row["train/global_step"]: row for row in found["logs"] if "train/reward" in row}
    assert sorted(by_step) == [1, 2]
    rows = map(json.loads, (out / formats.LOG_FILE).open())
    log = {row["step"]: row for row in rows if "reward" in row}
    for step, row in by_step.items():
        for key in CURVES:
            assert row[f"train/{key}"] == pytest.approx(log[step][key]), (step, key)
    tables = [row["completions"] for row in found["logs"] if "completions" in row]
    assert tables and tables[0]["_type"] == "trackio.table"
    assert {"prompt", "completion", "format_reward"} <= set(tables[0]["_value"][0])
