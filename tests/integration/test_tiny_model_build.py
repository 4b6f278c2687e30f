"""The tiny model built for real: a very small build that trains a model and generates, and the
rebuild of the committed base model (models/tiny-base) through config/tiny-rebuild.yaml's path.
The unit tier tests the tokenizer, traces and recipe checks (tests/unit/test_build_tiny_model.py,
tests/unit/test_tiny_artifact.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha.stages import build_tiny_model
from aha.task import generator, prompts
from aha.tiny import artifact as tiny_artifact
from tests.conftest import ROOT
from tests.unit.test_build_tiny_model import SMALL
from tests.unit.test_tiny_artifact import ARTIFACT, rate_differences, tiny_config

REBUILD_YAML = ROOT / "config" / "tiny-rebuild.yaml"


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("build")
    tasks = generator.generate(300, seed=11, num_counts=[3], number_range=(1, 20))
    rows = [
        {
            "id": i,
            "nums": list(s.task.nums),
            "target": s.task.target,
            "pattern": s.pattern,
            "solution": s.solution,
        }
        for i, s in enumerate(tasks)
    ]
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    build_tiny_model.cli(
        [
            "--tiny",
            json.dumps(SMALL),
            "--train",
            str(root / "train.parquet"),
            "--seed",
            "7",
            "--out-dir",
            str(root / "model"),
        ],
        prog="test",
    )
    return root / "model"


@pytest.mark.slow
def test_small_build_writes_a_loadable_model_that_generates(small_build):
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "warm_start.json",
    ):
        assert (small_build / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(small_build)
    model = AutoModelForCausalLM.from_pretrained(small_build)
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    enc = tok(prompts.render(tok, [12, 7, 3], 27), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    assert len(new) > 0 and len(tok.decode(new)) > 0


@pytest.mark.slow
def test_small_build_report(small_build):
    report = json.loads((small_build / "warm_start.json").read_text())
    assert report["steps"] == 20 and len(report["losses"]) == 20
    assert report["losses"][-1] < report["losses"][0]  # it learned something in 20 steps
    assert report["final_loss"] == pytest.approx(sum(report["losses"][-5:]) / 5, abs=1e-3)
    assert report["eval"]["tasks"] == 6 and len(report["eval"]["examples"]) == 6
    assert 0.0 <= report["eval"]["format_rate"] <= 1.0
    assert report["traces"]["count"] == 120
    assert report["wall_seconds"]["total"] > 0
    assert report["cpu_kind"] == tiny_artifact.cpu_kind()  # what byte identity is keyed on
    assert report["vocab_size"] == len(AutoTokenizer.from_pretrained(small_build))


@pytest.mark.slow
@pytest.mark.rebuild
def test_rebuild_reproduces_the_committed_model(tiny_train_split: Path, tmp_path: Path) -> None:
    """config/tiny-rebuild.yaml's path: the rule's command with prebuilt null rebuilds the
    model. Same quality everywhere: warm-start loss within 10%, and sampled format and success
    rates not different from the committed ones by Fisher's two-sided exact test at level 0.01
    each (RATE_ALPHA: two samples, so noise in both is allowed). On the CPU kind and thread
    count that built it (`cpu_kind`: model, family, stepping and vector ISA, as the record
    names it), the same bytes."""
    cfg = tiny_config()
    tiny = {**cfg["model"]["tiny"], **yaml.safe_load(REBUILD_YAML.read_text())["model"]["tiny"]}
    assert tiny["prebuilt"] is None
    out = tmp_path / "tiny"
    cmd = [
        sys.executable, "-m", "aha", "build-tiny-model", "--tiny", json.dumps(tiny),
        "--train", str(tiny_train_split), "--seed", str(cfg["seed"]), "--out-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the rule pins its threads too
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    old = json.loads((ARTIFACT / "warm_start.json").read_text())
    new = json.loads((out / "warm_start.json").read_text())
    assert new["final_loss"] == pytest.approx(old["final_loss"], rel=0.10)
    assert rate_differences(old["eval"], new["eval"]) == []
    # a record without cpu_kind names only a model name ("AMD EPYC" on two different hosts):
    # it cannot say the kind is the same, so it does not ask for the same bytes
    same_machine = old.get("cpu_kind") is not None and (
        new["cpu_kind"],
        new["torch_threads"],
    ) == (old["cpu_kind"], old["torch_threads"])
    same_bytes = (out / "model.safetensors").read_bytes() == (
        ARTIFACT / "model.safetensors"
    ).read_bytes()
    print(
        f"rebuild on {new['cpu_kind']} x{new['torch_threads']} (committed: "
        f"{old.get('cpu_kind', old['cpu'])} x{old['torch_threads']}): same bytes {same_bytes}"
    )
    if same_machine:
        assert same_bytes
    shutil.rmtree(out)
