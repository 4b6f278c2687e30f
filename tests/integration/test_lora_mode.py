"""The `lora` mode (one row of aha.run.MODES: the base in bf16 + a LoRA adapter, one GPU),
rehearsed on the CPU through the real workflow: trained 4 steps, each checkpoint a LoRA adapter,
sampled by transformers with the adapter unmerged on its base, scored and aggregated (≈ 2.5 min
on 2 cores, 1 of it the warm start).

Its config is the rehearsal's tiny model (a 200-step warm start: a third of its completions are
well formed, so rewards vary within a group and GRPO moves the adapter) and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import snakemake

pytestmark = pytest.mark.slow

CONFIG = {
    "device": "cpu",  # a GPU mode rehearsed: its own launcher and libraries, on the CPU
    "dataset": {
        "source": "generate",
        "generate": {"num_counts": [3], "number_range": [1, 20], "target_range": [1, 99]},
        "num_samples": 600,
        "eval_size": 8,
    },
    "model": {
        "source": "tiny",
        "dtype": "bfloat16",
        "tiny": {
            "vocab_size": 400,
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 128,
            "warm_start": {"num_traces": 4000, "max_steps": 200, "batch_size": 16},
        },
    },
    "checkpoints": [2, 4],
    "sampling": {"k": 2, "max_new_tokens": 64, "batch_size": 16, "backend": "hf"},
    "runs": {
        "tiny-lora": {
            "mode": "lora",
            "grpo": {
                "max_steps": 4,
                "learning_rate": 5.0e-5,
                "beta": 0.0,
                "num_generations": 8,
                "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 2,
                "max_completion_length": 64,
                "logging_steps": 1,
                "seed": 42,
            },
            "lora": {"r": 8, "lora_alpha": 16},
        }
    },
    "report": {"seed_reference": False},
}
RUN = Path("results/runs/tiny-lora/seed-42")


def test_a_lora_run_trains_an_adapter_that_is_sampled_and_scored(tmp_path: Path) -> None:
    configfile = tmp_path / "lora.yaml"
    configfile.write_text(yaml.safe_dump(CONFIG))
    work = tmp_path / "work"
    work.mkdir()
    snakemake(work, "--cores", "2", "results/summary.tsv", configfile=configfile)

    for step in (2, 4):
        manifest = json.loads((work / RUN / "checkpoints" / f"step-{step}.json").read_text())
        assert manifest["mode"] == "lora" and manifest["is_adapter"] is True
        assert manifest["base_model"] == "results/models/tiny"
        weights = work / RUN / "weights" / f"step-{step}"
        assert (weights / "adapter_model.safetensors").is_file()
        assert not (weights / "model.safetensors").exists()  # the adapter, not full weights
        adapter = json.loads((weights / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)  # the run's, over the defaults
        assert adapter["lora_dropout"] == 0.05  # the schema's default for a LoRA mode
    from safetensors.torch import load_file

    lora_b = [
        v for k, v in load_file(weights / "adapter_model.safetensors").items() if "lora_B" in k
    ]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b), "LoRA B is still its zero init"
    rows = [json.loads(x) for x in (work / RUN / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]
    assert any(r["reward_std"] > 0 for r in rows if "reward" in r), "no reward variance"

    train_log = (work / "logs" / "train" / "tiny-lora-seed42.log").read_text()
    assert "check-gpu: ok (mode lora, model results/models/tiny)" in train_log
    for name in ("tiny-lora-base-0", "tiny-lora-seed42-2", "tiny-lora-seed42-4"):
        log = (work / "logs" / "sample" / f"{name}.log").read_text()
        assert "backend hf" in log and "4 bit" not in log
        assert ("adapter on results/models/tiny" in log) == name.endswith(("-2", "-4"))
    summary = pd.read_csv(work / "results" / "summary.tsv", sep="\t")
    assert sorted(summary["step"]) == [0, 2, 4] and set(summary["run"]) == {"tiny-lora"}
