"""aha.stages.sample: config and manifest parsing, completion splitting, and real sampling of a tiny model."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from aha.config import ConfigError
from aha.formats import Manifest
from aha.sections import Sampling, section
from aha.stages import sample
from aha.stages.sample import ModelRef, SampleError
from tests.unit.test_train import make_tiny_model, write_tasks

CFG = {"k": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "batch_size": 4, "seed": 5}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def eval_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("data"), n_train=4, n_eval=5) / "eval.parquet"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- pure parts


def test_sampling_config_is_checked() -> None:
    assert section(Sampling, CFG) == Sampling(3, 1.0, 1.0, 8, 4, 5, "auto")
    assert section(Sampling, {}).k == 8  # schema defaults
    for bad, message in (
        ({"k": 0}, "sampling.k: 0 is less than the minimum of 1"),
        ({"top_p": 0}, "sampling.top_p: 0 is less than or equal to the minimum of 0"),
        ({"temperature": -1}, "sampling.temperature: -1 is less than the minimum"),
        ({"temperature": "hot"}, "sampling.temperature: 'hot' is not of type 'number'"),
        ({"beams": 2}, "sampling.beams: unknown key"),
        ({"backend": "tgi"}, "sampling.backend: 'tgi' is not one of"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            section(Sampling, bad)


def test_split_completion_stops_at_first_stop_token() -> None:
    stops = [9, 7]
    assert sample.split_completion([4, 5, 7, 0, 0], stops, 5) == ([4, 5], 3, False)
    assert sample.split_completion([9, 0, 0, 0, 0], stops, 5) == ([], 1, False)
    assert sample.split_completion([4, 5, 6, 1, 2], stops, 5) == ([4, 5, 6, 1, 2], 5, True)
    # a stop in the very last position is a finished completion, not a truncated one
    assert sample.split_completion([4, 5, 6, 1, 7], stops, 5) == ([4, 5, 6, 1], 5, False)


def test_resolve_model_reads_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sample.resolve_model(str(tmp_path)) == ModelRef(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SampleError, match=r"hf download Qwen/Qwen2\.5-3B-Instruct"):
        sample.resolve_model("Qwen/Qwen2.5-3B-Instruct")
    run = tmp_path / "runs" / "r"
    weights = run / "weights" / "step-4"
    weights.mkdir(parents=True)
    (run / "checkpoints").mkdir()
    manifest = run / "checkpoints" / "step-4.json"
    # a relative path that does not resolve from here: found beside the manifest instead
    manifest.write_text(
        json.dumps({"run": "r", "step": 4, "path": "elsewhere/weights/step-4", "mode": "cpu"})
    )
    assert sample.resolve_model(str(manifest)) == ModelRef(str(weights.resolve()), mode="cpu")
    adapter = {"run": "r", "step": 4, "path": str(weights), "is_adapter": True, "mode": "qlora"}
    manifest.write_text(json.dumps({**adapter, "base_model": "base/dir"}))
    assert sample.resolve_model(str(manifest)) == ModelRef(str(weights), "base/dir", True, "qlora")
    manifest.write_text(json.dumps({**adapter, "base_model": None}))
    with pytest.raises(SampleError, match="without base_model"):
        sample.resolve_model(str(manifest))
    with pytest.raises(SampleError, match="no such checkpoint manifest"):
        sample.resolve_model(str(tmp_path / "step-9.json"))


def test_vllm_backend_without_vllm_names_the_fix(tiny_model: Path, eval_path: Path) -> None:
    with pytest.raises(SampleError, match=r"vllm.*--backend hf"):
        sample._sample_vllm(
            ModelRef(str(tiny_model)), sample.load_tasks(eval_path), section(Sampling), None, "cuda"
        )
    assert sample.choose_backend("auto") == "hf"  # no CUDA, no vllm here
    assert sample.choose_backend("auto", "cpu") == "hf"  # a rehearsal without vllm installed


def test_a_4_bit_base_is_never_handed_to_vllm(
    tiny_model: Path, eval_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM 0.30 has no bitsandbytes method: `auto` takes transformers for an NF4 run even
    where vLLM is installed, and an explicit `vllm` is refused before anything loads."""
    from aha.launch import gpu

    monkeypatch.setattr(gpu, "has_package", lambda name: True)  # as on a GPU node with vLLM
    assert sample.choose_backend("auto", "cpu") == "vllm"
    assert sample.choose_backend("auto", "cpu", quantized=True) == "hf"
    assert sample.choose_backend("vllm", "cpu", quantized=True) == "vllm"  # asked for: refused next
    nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    with pytest.raises(SampleError, match=r"no bitsandbytes quantization.*--backend hf"):
        sample._sample_vllm(
            ModelRef(str(tiny_model)), sample.load_tasks(eval_path), section(Sampling), nf4, "cuda"
        )


def test_hf_load_kwargs_per_device() -> None:
    assert sample.hf_load_kwargs(None, "cpu") == {"dtype": "float32"}
    assert sample.hf_load_kwargs(None, "cuda") == {"dtype": "auto"}
    nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
    on_gpu = sample.hf_load_kwargs(nf4, "cuda")
    assert on_gpu["device_map"] == {"": 0} and on_gpu["dtype"] == "auto"
    assert on_gpu["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert sample.hf_load_kwargs(nf4, "cpu")["device_map"] == {"": "cpu"}


def test_vllm_runs_in_process_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's one-process engine is the CPU's alone: the GPU gets vLLM's own processes."""
    from aha.launch import vllm_sampler

    assert vllm_sampler.engine_env("cuda") == {}
    assert vllm_sampler.engine_env("cpu") == {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    # what the environment says wins: a test or a user asks for vLLM's processes on the CPU
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setitem(sys.modules, "vllm", None)  # stop at the import
    with pytest.raises(ImportError):
        vllm_sampler.sample_vllm("m", None, ["p"], 1, 1.0, 1.0, 4, 0, device="cpu")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_each_run_is_sampled_by_its_modes_sampler_the_same_on_either_device() -> None:
    """The rule's --backend and --quantization are the Run's: transformers for cpu and qlora
    (qlora on its NF4 base, every step), sampling.backend for zero3, on a GPU and rehearsed."""
    from aha.run import Run

    quant = {"bnb_4bit_use_double_quant": True}
    runs = {
        "c": {"mode": "cpu", "grpo": {"max_steps": 2}},
        "q": {"mode": "qlora", "grpo": {"max_steps": 2}, "quantization": quant},
        "z": {"mode": "zero3", "grpo": {"max_steps": 2}},
    }
    for device in ("cuda", "cpu"):
        for backend in ("auto", "vllm", "hf"):
            config = {"device": device, "checkpoints": [2], "runs": runs}
            config["sampling"] = {"backend": backend}
            cpu, qlora, zero3 = (Run.build(config, name) for name in runs)
            assert (cpu.sample_backend, cpu.quantization) == ("hf", None)
            assert qlora.sample_backend == "hf"
            assert qlora.quantization == {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": "bfloat16",
                "bnb_4bit_use_double_quant": True,
            }
            assert (zero3.sample_backend, zero3.quantization) == (backend, None)


# ----------------------------------------------------------------------------- real sampling


def test_sampling_writes_k_records_per_prompt_deterministically(
    tmp_path: Path, tiny_model: Path, eval_path: Path
) -> None:
    out = tmp_path / "samples" / "step-0.jsonl"
    argv = ["--model", str(tiny_model), "--eval", str(eval_path), "--sampling", json.dumps(CFG)]
    argv += ["--run", "r", "--step", "0", "--out", str(out), "--backend", "hf"]
    sample.cli(argv, prog="python -m aha sample")
    rows = read_jsonl(out)
    tasks = pd.read_parquet(eval_path)
    assert len(rows) == 5 * 3
    assert all(list(r) == list(sample.SAMPLE_KEYS) for r in rows)
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [
        (int(i), j) for i in tasks["id"] for j in range(3)
    ]
    assert [r["target"] for r in rows[::3]] == [int(t) for t in tasks["target"]]
    assert all(r["run"] == "r" and r["step"] == 0 for r in rows)
    assert all(r["truncated"] == (r["num_tokens"] == 8) for r in rows if r["truncated"])
    assert all(1 <= r["num_tokens"] <= 8 for r in rows)
    assert all(
        r["format_reward"] in (0.0, 1.0) and r["equation_reward"] in (0.0, 1.0) for r in rows
    )
    assert "<think>" not in "".join(r["text"] for r in rows)  # completion only, no prompt

    again = tmp_path / "again.jsonl"
    sample.cli([*argv[:-3], str(again), "--backend", "hf"], prog="python -m aha sample")
    assert again.read_text() == out.read_text()
    other = tmp_path / "other.jsonl"
    reseeded = json.dumps({**CFG, "seed": 6})
    sample.cli(
        [*argv[:5], reseeded, *argv[6:-3], str(other), "--backend", "hf"],
        prog="python -m aha sample",
    )
    assert [r["text"] for r in read_jsonl(other)] != [r["text"] for r in rows]


def test_truncated_flag_and_token_counts(tiny_model: Path, eval_path: Path) -> None:
    """Greedy decoding against a hand-rolled argmax loop: a stop token inside the continuation
    ends it there (counted, not in the text); a stop it never reaches leaves it truncated."""
    import torch

    model, tokenizer = sample.load_hf(ModelRef(str(tiny_model)))
    text = sample.render_prompts(tokenizer, sample.load_tasks(eval_path))[:1]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    greedy_tokens = []
    with torch.inference_mode():
        for _ in range(6):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            greedy_tokens.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    greedy = section(Sampling, {"k": 2, "temperature": 0.0, "max_new_tokens": 6, "batch_size": 2})

    def run_with_stop(stop: int) -> list:
        model.generation_config.eos_token_id = [stop]
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)
        return sample.generate_hf(model, tokenizer, text, greedy, progress=False)

    never = next(t for t in range(3, len(tokenizer)) if t not in greedy_tokens)
    full = run_with_stop(never)
    assert [(c.num_tokens, c.truncated) for c in full] == [(6, True)] * 2
    assert full[0].text == tokenizer.decode(greedy_tokens, skip_special_tokens=True)

    cut = greedy_tokens.index(greedy_tokens[3])  # first occurrence of the 4th token
    ended = run_with_stop(greedy_tokens[3])
    assert [(c.num_tokens, c.truncated) for c in ended] == [(cut + 1, False)] * 2
    assert ended[0].text == tokenizer.decode(greedy_tokens[:cut], skip_special_tokens=True)


def test_adapter_checkpoint_loads_on_its_base(
    tmp_path: Path, tiny_model: Path, eval_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    # random A and B (not PEFT's zero B), scaled up: the adapter must visibly change the model
    lora = LoraConfig(
        r=4,
        lora_alpha=256,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    adapter_dir = tmp_path / "run" / "weights" / "step-2"
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    manifest = tmp_path / "run" / "checkpoints" / "step-2.json"
    Manifest("r", 2, "qlora", str(adapter_dir), str(tiny_model), is_adapter=True).write(manifest)
    cfg = section(Sampling, {"k": 2, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 10})
    with_adapter = sample.sample(str(manifest), eval_path, cfg, "r", 2, tmp_path / "a.jsonl", "hf")
    plain = sample.sample(str(tiny_model), eval_path, cfg, "r", 0, tmp_path / "b.jsonl", "hf")
    assert len(with_adapter) == len(plain) == 10
    assert [r["text"] for r in with_adapter] != [r["text"] for r in plain]


def test_cli_refuses_bad_sampling_json(
    tmp_path: Path, tiny_model: Path, eval_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(tiny_model), "--eval", str(eval_path), "--sampling", '{"k": 0}']
    argv += ["--run", "r", "--step", "0", "--out", str(tmp_path / "x.jsonl")]
    with pytest.raises(SystemExit) as exc:  # argparse's one-line usage error, naming the key
        sample.cli(argv, prog="python -m aha sample")
    assert exc.value.code == 2
    assert re.search(r"argument --sampling: sampling\.k: 0 is less than", capsys.readouterr().err)
    argv[argv.index("--sampling") + 1] = json.dumps(CFG)
    with pytest.raises(SystemExit) as exc:
        sample.cli([*argv, "--quantization", "{nf4"], prog="python -m aha sample")
    assert exc.value.code == 2 and "argument --quantization: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
