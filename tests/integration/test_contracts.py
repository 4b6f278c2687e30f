"""Contract tests: every device branch's CUDA arguments through the pinned library's validation.

They run on the CPU, in the rehearsal environment (vLLM 0.30's CPU build, DeepSpeed 0.19.8,
bitsandbytes 0.50.2: the gpu extra's versions), where the libraries' own checks live. The
sampling test drives the very command the sample rule writes for the seed config on cuda; the
qlora sampling bug (`quantization="bitsandbytes"` handed to vLLM) fails it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from aha import contracts
from tests.conftest import ROOT, rehearsal_python, snakemake

TINY = ROOT / "models" / "tiny-base"  # stands in for Qwen's weights: config.json is what's read
SEED = ROOT / "config" / "config.yaml"


def run_python(
    python: Path, code: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code, *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"},
    )


def test_every_cuda_branch_of_the_seed_config_passes_its_library() -> None:
    proc = subprocess.run(
        [str(rehearsal_python()), "-m", "aha", "check-contracts"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    names = {line.split(":")[0].split(maxsplit=1)[1] + ":" + line.split(":")[1] for line in lines}
    assert names == {
        "qwen-zero3: sample, vllm.LLM",
        "qwen-zero3: train, GRPOConfig",
        "qwen-zero3: launch, accelerate + DeepSpeed",
        "qwen-zero3: server, vllm serve",
        "qwen-qlora: sample, NF4 base",
        "qwen-qlora: train, GRPOConfig",
        "qwen-qlora: train, LoRA + NF4",
        "qwen-qlora: train, NF4 base",
    }
    assert all(line.startswith("ok") for line in lines), proc.stdout
    # the real libraries checked them, not the snapshot
    assert "snapshot" not in proc.stdout
    assert "8 passed, 0 failed" in proc.stdout


NEGATIVE = textwrap.dedent(
    """
    import json, sys
    from aha import contracts
    from aha.launch import vllm_sampler as sample_vllm
    seed = sample_vllm.engine_kwargs(sys.argv[1], None, seed=0, device="cuda")
    cases = {
        "bitsandbytes": lambda: contracts.check_vllm_engine({**seed, "quantization": "bitsandbytes"}),
        "engine_key": lambda: contracts.check_vllm_engine({**seed, "bogus": 1}),
        "serve_flag": lambda: contracts.check_vllm_serve([sys.argv[1], "--no-such-flag", "1"]),
        "grpo_key": lambda: contracts.check_grpo_config({"output_dir": "/x", "bogus": 1}),
        "grpo_batch": lambda: contracts.check_grpo_config(
            {"output_dir": "/x", "per_device_train_batch_size": 3, "num_generations": 8}),
        "lora": lambda: contracts.check_peft({"r": 16, "lora_dropout": 2.0, "bogus": 1}, {}),
        "accelerate_flag": lambda: contracts.check_accelerate_launch(
            ["--no-such-flag", "-m", "aha"], sys.argv[2]),
    }
    out = {}
    for name, case in cases.items():
        try:
            case()
            out[name] = None
        except contracts.ContractError as err:
            out[name] = str(err)
    print("RESULT " + json.dumps(out))
    """
)


def test_the_checks_refuse_what_their_library_refuses() -> None:
    """Each check can fail: the arguments of the qlora sampling bug among them."""
    proc = run_python(
        rehearsal_python(), NEGATIVE, str(TINY), str(ROOT / "workflow/accelerate/zero3.yaml")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    refused = json.loads(line.removeprefix("RESULT "))
    assert all(refused.values()), refused  # None: a case the library let through
    assert "Unknown quantization method: bitsandbytes" in refused["bitsandbytes"]
    assert "bogus" in refused["engine_key"] and "bogus" in refused["grpo_key"]
    assert refused["serve_flag"].startswith("vllm serve: its parser refuses")


def test_the_vllm_snapshot_is_the_installed_vllm() -> None:
    """The snapshot a GPU machine without vLLM checks against is vLLM 0.30's own."""
    code = "import json; from aha import contracts; print(json.dumps(contracts.vllm_snapshot()))"
    proc = run_python(rehearsal_python(), code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert installed == json.loads(contracts.SNAPSHOT.read_text())


def test_without_vllm_the_snapshot_refuses_the_same_arguments() -> None:
    """Here (no vLLM in this environment) the checks fall back to the snapshot."""
    from aha.launch import gpu
    from aha.launch import vllm_sampler as sample_vllm

    assert not gpu.has_package("vllm")
    seed = sample_vllm.engine_kwargs(str(TINY), None, seed=0, device="cuda")
    assert "snapshot" in contracts.check_vllm_engine(seed)
    with pytest.raises(contracts.ContractError, match="Unknown quantization method: bitsandbytes"):
        contracts.check_vllm_engine({**seed, "quantization": "bitsandbytes"})
    with pytest.raises(contracts.ContractError, match="bogus"):
        contracts.check_vllm_engine({**seed, "bogus": 1})
    serve = contracts.server_argv({"gpu_memory_utilization": 0.5}, str(TINY))
    assert "snapshot" in contracts.check_vllm_serve(serve)
    with pytest.raises(contracts.ContractError, match="--no-such-flag"):
        contracts.check_vllm_serve([*serve, "--no-such-flag", "1"])


# The sample stage as the rule runs it, on a "GPU": CUDA reported present, vLLM's engine
# replaced by one that runs vLLM's own argument validation and then answers without a model,
# transformers' 4-bit load checked by its quantizer before it loads on the CPU.
DRIVER = textwrap.dedent(
    """
    import sys, types
    from unittest import mock
    import torch
    from aha import contracts
    from aha.launch import gpu
    from aha.stages import sample

    class CheckedLLM:
        def __init__(self, **kwargs):
            contracts.check_vllm_engine(kwargs)  # raises ContractError: the job would fail
            print("vllm.LLM", sorted(kwargs), flush=True)

        def generate(self, prompts, params, lora_request=None):
            out = types.SimpleNamespace
            return [
                out(outputs=[out(index=j, text="<answer>1</answer>", token_ids=[1, 2],
                                 finish_reason="stop") for j in range(params.n)])
                for _ in prompts
            ]

    real_load, real_cuda = sample.load_hf, torch.cuda.is_available

    def checked_load(ref, quantization=None, device="cuda"):
        if quantization:  # bitsandbytes' own probe of its backend must see the real machine
            with mock.patch.object(torch.cuda, "is_available", real_cuda):
                contracts.check_bnb_load(sample.hf_load_kwargs(quantization, "cuda"))
        print("hf", "nf4" if quantization else "full", flush=True)
        return real_load(ref, quantization, "cpu")  # the CPU stands in for the GPU from here

    import vllm
    with mock.patch.object(torch.cuda, "is_available", return_value=True), \\
         mock.patch.object(gpu, "require_cuda", lambda mode: None), \\
         mock.patch.object(vllm, "LLM", CheckedLLM), \\
         mock.patch.object(sample, "load_hf", checked_load):
        try:
            sample.cli(sys.argv[1:], prog="sample")
        except contracts.ContractError as err:
            sys.exit(f"REFUSED {err}")
    """
)


def sample_commands(workdir: Path) -> dict[str, list[str]]:
    """The sample rule's `python -m aha sample` argv per run, for step 0 of the seed on cuda."""
    overlay = workdir / "weights.yaml"
    overlay.write_text(f"model:\n  name_or_path: {TINY}\n")  # no Hub download: the tiny Qwen2
    proc = snakemake(workdir, "-n", "-p", "--until", "sample_base", configfile=[SEED, overlay])
    commands = {}
    for line in proc.stdout.splitlines():
        if " -m aha sample " in line:
            argv = shlex.split(line.split(" -m aha sample ", 1)[1].split(" > ")[0])
            commands[argv[argv.index("--run") + 1]] = argv
    return commands


def test_the_rules_cuda_sample_commands_pass_the_libraries_they_reach(tmp_path: Path) -> None:
    """Step 0 of each GPU run, with the argv the rule writes on cuda: vLLM for zero3, NF4
    transformers for qlora. Before the fix, qlora's `auto` reached vLLM with bitsandbytes."""
    python = rehearsal_python()
    commands = sample_commands(tmp_path)
    assert set(commands) == {"qwen-zero3", "qwen-qlora"}
    eval_path = tmp_path / "eval.parquet"
    pd.DataFrame({"nums": [[3, 5, 7], [2, 4, 9]], "target": [8, 17]}).to_parquet(eval_path)
    seen = {}
    for run, argv in commands.items():
        assert argv[argv.index("--device") + 1] == "cuda"
        argv[argv.index("--eval") + 1] = str(eval_path)
        out = tmp_path / f"{run}.jsonl"
        argv[argv.index("--out") + 1] = str(out)
        proc = run_python(python, DRIVER, *argv)
        assert proc.returncode == 0, f"{run}: {proc.stderr[-2000:]}"
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 2 * 10  # 2 prompts x the seed's k
        seen[run] = next(x for x in proc.stdout.splitlines() if x.startswith(("vllm", "hf")))
    assert seen["qwen-zero3"].startswith("vllm.LLM")
    assert seen["qwen-qlora"] == "hf nf4"  # every step of a qlora run in 4 bit, step 0 too


def test_a_lora_run_has_its_training_branches_checked() -> None:
    """Mode lora (bf16 + LoRA, one GPU): GRPOConfig and LoraConfig; nothing to quantize, and
    sampled by transformers in the base's dtype, which needs no library's check."""
    config = contracts.load_config([str(SEED)])
    config["runs"] = {"l": {**config["runs"]["qwen-qlora"], "mode": "lora"}}
    del config["runs"]["l"]["quantization"]
    found = contracts.contracts(config, str(TINY), str(ROOT / "workflow/accelerate/zero3.yaml"))
    assert [c.name for c in found] == ["l: train, GRPOConfig", "l: train, LoRA"]
    assert [(passed, detail) for _, passed, detail in contracts.run_all(found)] == [
        (True, "trl GRPOConfig"),
        (True, "peft LoraConfig"),
    ]
