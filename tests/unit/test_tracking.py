"""aha.launch.tracking and the Run's trackers: TensorBoard by default in every mode, the trackers'
local folders, and the TensorBoard writer that purges what a killed session logged after the
checkpoint a run resumes from (real event files, read back with TensorBoard's own reader)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from aha import formats
from aha.launch import tracking
from aha.run import MODES, Run

# GPU modes on a GPU and rehearsed on the CPU; the cpu mode is on the CPU whatever the device
PLACES = [(mode, device) for mode in MODES for device in ("cuda", "cpu")]


def build(mode: str, device: str = "cuda", **grpo) -> Run:
    spec = {"mode": mode, "grpo": {"max_steps": 2, **grpo}}
    config = {"device": device, "model": {"name_or_path": "Org/M"}, "checkpoints": [2]}
    return Run.build({**config, "runs": {"r": spec}}, "r")


def build_seeded(**grpo) -> Run:
    spec = {"mode": "cpu", "seeds": [5, 6], "grpo": {"max_steps": 2, **grpo}}
    config = {"model": {"source": "tiny"}, "checkpoints": [2], "runs": {"r": spec}}
    return Run.build(config, "r", 6)


# ----------------------------------------------------------------------------- report_to


@pytest.mark.parametrize(("mode", "device"), PLACES)
def test_every_mode_reports_to_tensorboard_by_default(mode: str, device: str) -> None:
    run = build(mode, device)
    args = run.grpo_args("/out", env={})
    assert args["report_to"] == ["tensorboard"] and run.trackers == ["tensorboard"]
    # TensorBoard gets no completion tables from TRL: nothing else changes
    assert "log_completions" not in args and "run_name" not in args


def test_the_rows_default_list_is_not_shared_with_a_runs_arguments() -> None:
    first = build("zero3").grpo_args("/out", env={})
    first["report_to"].append("wandb")
    assert build("qlora").grpo_args("/out", env={})["report_to"] == ["tensorboard"]
    assert build("cpu").grpo_args("/out", env={})["report_to"] == ["tensorboard"]


@pytest.mark.parametrize("report_to", ["none", ["none"], [], "mlflow"])
def test_a_runs_report_to_replaces_the_default_unchanged(report_to) -> None:
    run = build("cpu", report_to=report_to)
    assert run.grpo_args("/out")["report_to"] == report_to
    assert run.trackers == ([] if report_to in ("none", ["none"], []) else ["mlflow"])


@pytest.mark.parametrize("report_to", ["wandb", "trackio", ["tensorboard", "wandb", "trackio"]])
def test_a_completion_tracker_gets_completion_tables_and_the_replicates_name(report_to) -> None:
    run = build_seeded(report_to=report_to)
    args = run.grpo_args("/out")
    assert args["report_to"] == report_to
    assert args["log_completions"] is True and args["run_name"] == "r-seed-6"
    from trl import GRPOConfig

    config = GRPOConfig(**{**args, "use_cpu": True})  # TRL takes them
    assert config.log_completions and config.run_name == "r-seed-6"


def test_a_runs_own_log_completions_and_run_name_are_kept() -> None:
    args = build("qlora", report_to=["wandb"], log_completions=False, run_name="x").grpo_args("/o")
    assert args["log_completions"] is False and args["run_name"] == "x"


# ----------------------------------------------------------------------------- environment


def test_tracker_folders_go_in_the_run_folder_where_the_user_set_none(tmp_path: Path) -> None:
    out = tmp_path / "results" / "runs" / "r" / "seed-5"
    assert tracking.tracker_env(["tensorboard"], out, {}) == {}
    assert tracking.tracker_env(["tensorboard", "trackio", "wandb"], out, {}) == {
        "TRACKIO_DIR": str(out / formats.TRACKIO_DIR),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(out),
    }
    user = {"WANDB_MODE": "online", "TRACKIO_DIR": "/mine", "WANDB_DIR": ""}
    assert tracking.tracker_env(["trackio", "wandb"], out, user) == {"WANDB_DIR": str(out)}
    env: dict[str, str] = {"WANDB_MODE": "online"}
    assert tracking.prepare(["wandb"], out, env) == {"WANDB_DIR": str(out)}
    assert env == {"WANDB_MODE": "online", "WANDB_DIR": str(out)}


# ----------------------------------------------------------------------------- TensorBoard


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, round(e.value, 3)) for e in events.Scalars(tag)]


def session(callback, log_dir: Path, start: int, steps: range, offset: float, rank0=True) -> None:
    """One training session as transformers drives the callback: begin at `start` (the resumed
    checkpoint's step), a log per step with loss = step + offset, end."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(log_dir.parent / "trainer"), report_to="none")
    state = TrainerState(global_step=start, is_world_process_zero=rank0)
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in steps:
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": step + offset})
    callback.on_train_end(args, state, control)


def test_a_resumed_session_replaces_the_steps_after_its_checkpoint(tmp_path: Path) -> None:
    """Steps 1..5 logged, killed after checkpoint-3: the rerun resumes at 3 and logs 4..6. Each
    step appears once, 4 and 5 with the rerun's values."""
    log_dir = tmp_path / formats.TENSORBOARD_DIR
    session(tracking.tensorboard_callback(log_dir), log_dir, 0, range(1, 6), 0.0)
    session(tracking.tensorboard_callback(log_dir), log_dir, 3, range(4, 7), 100.0)
    assert scalars(log_dir, "train/loss") == [(1, 1), (2, 2), (3, 3), (4, 104), (5, 105), (6, 106)]
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # one per session


def test_transformers_own_callback_would_keep_the_orphaned_steps(tmp_path: Path) -> None:
    """What the purge is for: the same two sessions through transformers' callback leave steps
    4 and 5 twice, the killed session's values first."""
    import os

    from transformers.integrations import TensorBoardCallback

    log_dir = tmp_path / formats.TENSORBOARD_DIR
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)
    try:
        session(TensorBoardCallback(), log_dir, 0, range(1, 6), 0.0)
        session(TensorBoardCallback(), log_dir, 3, range(4, 7), 100.0)
    finally:
        del os.environ["TENSORBOARD_LOGGING_DIR"]
    steps = [step for step, _ in scalars(log_dir, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 4, 5, 5, 6]


def test_a_fresh_session_hides_a_killed_one_that_saved_no_checkpoint(tmp_path: Path) -> None:
    log_dir = tmp_path / formats.TENSORBOARD_DIR
    session(tracking.tensorboard_callback(log_dir), log_dir, 0, range(1, 3), 0.0)
    session(tracking.tensorboard_callback(log_dir), log_dir, 0, range(1, 4), 10.0)
    assert scalars(log_dir, "train/loss") == [(1, 11), (2, 12), (3, 13)]


def test_only_rank_zero_writes_events(tmp_path: Path) -> None:
    log_dir = tmp_path / formats.TENSORBOARD_DIR
    session(tracking.tensorboard_callback(log_dir), log_dir, 0, range(1, 3), 0.0, rank0=False)
    assert not log_dir.exists()


def test_the_trainers_tensorboard_callback_is_replaced_by_the_run_folders(tmp_path: Path) -> None:
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    def trainer(report_to) -> Trainer:
        args = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=report_to)
        return Trainer(model=torch.nn.Linear(2, 1), args=args)

    with_tb = trainer(["tensorboard"])
    assert tracking.use_run_folder_tensorboard(with_tb, tmp_path) == tmp_path / "tensorboard"
    tb = [cb for cb in with_tb.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)]
    assert len(tb) == 1 and tb[0] is with_tb.callback_handler.callbacks[-1]
    assert tb[0].logging_dir == str(tmp_path / "tensorboard")
    without = trainer("none")
    before = list(without.callback_handler.callbacks)
    assert tracking.use_run_folder_tensorboard(without, tmp_path) is None
    assert without.callback_handler.callbacks == before


# ----------------------------------------------------------------------------- the report


def test_the_reports_front_page_names_each_replicates_tensorboard_folder() -> None:
    import jinja2

    from aha.config import validate_section
    from aha.report.inputs import runs_overview
    from tests.conftest import ROOT

    cpu = {"mode": "cpu", "grpo": {"max_steps": 2}}
    config = validate_section(
        (),
        {
            "model": {"source": "tiny"},
            "checkpoints": [2],
            "runs": {
                "a": {**cpu, "seeds": [1, 2]},
                "b": {**cpu, "grpo": {"max_steps": 2, "report_to": "none"}},
            },
        },
    )
    overview = runs_overview(config)
    assert [(r["name"], r["seeds"], r["tensorboard"]) for r in overview] == [
        ("a", [1, 2], "tensorboard"),
        ("b", [config["seed"]], None),
    ]
    job = SimpleNamespace(rule=SimpleNamespace(name="tables"), params={"overview": overview})
    page = jinja2.Template((ROOT / "workflow" / "report" / "workflow.rst").read_text()).render(
        snakemake=SimpleNamespace(config=config), files=[SimpleNamespace(job=job)]
    )
    assert (
        "(TensorBoard): ``results/runs/a/seed-1/tensorboard/``, "
        "``results/runs/a/seed-2/tensorboard/``." in page
    )
    assert "runs/b/" not in page  # b reports to nothing
    assert "``tensorboard --logdir results/runs``" in page
