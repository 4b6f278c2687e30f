"""The run folder's layout (aha.formats): resume points, exported weights, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aha import formats
from aha.formats import CheckpointError, Manifest


def test_partial_checkpoints_are_not_resumed(tmp_path: Path) -> None:
    for step, state in ((2, {"global_step": 2}), (4, {"global_step": 4}), (6, None)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if state:
            (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # cut short
    assert formats.newest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    removed = formats.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoint-4", "checkpoint-6"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]


def test_export_weights_skips_trainer_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "trainer" / "checkpoint-3"
    (ckpt / "global_step3").mkdir(parents=True)
    names = ("model.safetensors", "config.json", "optimizer.pt", "rng_state.pth", "latest")
    names += ("zero_to_fp32.py", "zero_to_torch.py")  # DeepSpeed's converters, not the model
    for name in (*names, "training_args.bin"):
        (ckpt / name).write_text(name)
    (ckpt / formats.STATE_FILE).write_text('{"train_seconds": 1.5}')
    dest = formats.export_weights(ckpt, tmp_path / "weights" / "step-3")
    assert sorted(p.name for p in dest.iterdir()) == [
        formats.STATE_FILE,
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((dest / formats.STATE_FILE).read_text()) == {
        "step": 3,
        "train_seconds": 1.5,
    }
    (ckpt / "model.safetensors").unlink()  # ZeRO-3 without 16-bit consolidation
    with pytest.raises(CheckpointError, match="zero3_save_16bit_model"):
        formats.export_weights(ckpt, tmp_path / "weights" / "step-3b")


def test_manifests_are_written_from_the_weights_and_read_back(tmp_path: Path) -> None:
    for step in (2, 4):
        weights = tmp_path / "weights" / f"step-{step}"
        weights.mkdir(parents=True)
        (weights / "adapter_config.json").write_text("{}")
        (weights / formats.STATE_FILE).write_text('{"train_seconds": 3.5}')
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-9.json").write_text("{}")  # a step no longer configured
    written = formats.write_manifests("q", "qlora", [2, 4], tmp_path, "base/model")
    assert [p.name for p in written] == ["step-2.json", "step-4.json"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-2.json",
        "step-4.json",
    ]
    manifest = Manifest.read(written[1])
    assert manifest == Manifest(
        run="q",
        step=4,
        mode="qlora",
        path=str(tmp_path / "weights" / "step-4"),
        base_model="base/model",
        is_adapter=True,
        train_seconds=3.5,
        saved_at=None,
    )
    with pytest.raises(CheckpointError, match="weights/step-6: missing"):
        formats.write_manifests("q", "qlora", [6], tmp_path, "base/model")


def test_a_manifest_finds_its_weights_beside_it_after_the_run_folder_moved(tmp_path: Path) -> None:
    old = tmp_path / "old" / "run"
    (old / "weights" / "step-2").mkdir(parents=True)
    formats.write_manifests("r", "zero3", [2], old, "base")
    moved = tmp_path / "new" / "run"
    moved.parent.mkdir()
    old.rename(moved)
    manifest = Manifest.read(moved / "checkpoints" / "step-2.json")
    assert Path(manifest.path) == (moved / "weights" / "step-2").resolve()
    (moved / "weights" / "step-2").rmdir()
    with pytest.raises(CheckpointError, match="are missing"):
        Manifest.read(moved / "checkpoints" / "step-2.json")
    (moved / "checkpoints" / "step-2.json").write_text('{"step": 2}')
    with pytest.raises(CheckpointError, match="not a checkpoint manifest"):
        Manifest.read(moved / "checkpoints" / "step-2.json")
