"""`make rehearsal`, for real: the seed config's runs on this CPU with their own GPU libraries.

qwen-zero3 (DeepSpeed ZeRO-3 ranks + a real `vllm serve`), qwen-zero3-colocate (ZeRO-3 +
vLLM's CPU build in every rank, weights synced after each step) and qwen-qlora (bitsandbytes NF4
+ peft LoRA) train through the real DAG, are sampled by vLLM, scored, aggregated and reported;
their checkpoints are then sampled again with transformers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REHEARSAL_CONFIGS, rehearsal_python

pytestmark = pytest.mark.slow

OVERLAY = yaml.safe_load(REHEARSAL_CONFIGS[1].read_text())
RUNS = tuple(OVERLAY["runs"])  # every run of the rehearsal, those across nodes too
STEPS = [0, *OVERLAY["checkpoints"]]
N_SAMPLES = OVERLAY["dataset"]["eval_size"] * OVERLAY["sampling"]["k"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SEED = 42  # config/config.yaml's seed: each run's one replicate, results/runs/RUN/seed-42


def run_dir(workdir: Path, run: str) -> Path:
    return workdir / "results" / "runs" / run / f"seed-{SEED}"


def samples_file(workdir: Path, run: str, step: int) -> Path:
    """A trained step's samples (the replicate's), or step 0's (the run's base/)."""
    folder = run_dir(workdir, run) if step else workdir / "results" / "runs" / run / "base"
    return folder / "samples" / f"step-{step}.jsonl"


def test_the_overlay_keeps_the_seed_runs_modes_and_grpo_keys() -> None:
    seed = yaml.safe_load(REHEARSAL_CONFIGS[0].read_text())["runs"]
    for run in ("qwen-zero3", "qwen-qlora"):
        assert "mode" not in OVERLAY["runs"][run]  # the seed's mode, not the overlay's
        assert set(OVERLAY["runs"][run]["grpo"]) <= set(seed[run]["grpo"]) | {"bf16"}
    colocate = OVERLAY["runs"]["qwen-zero3-colocate"]["grpo"]
    changed = {k for k, v in seed["qwen-zero3"]["grpo"].items() if colocate.get(k) != v}
    # vllm_mode is the variant; the rest are the rehearsal's sizes and fp32 on the CPU
    assert changed == {
        "vllm_mode",
        "max_steps",
        "max_completion_length",
        "gradient_accumulation_steps",
        "bf16",
    }


ZERO3_RUNS = ("qwen-zero3", "qwen-zero3-colocate", "qwen-zero3-nodes", "qwen-zero3-colocate-nodes")


def test_zero3_runs_train_on_two_real_deepspeed_ranks(rehearsal_dag) -> None:
    workdir, _ = rehearsal_dag
    for run in ZERO3_RUNS:
        checkpoint = run_dir(workdir, run) / "trainer" / "checkpoint-4"
        assert (checkpoint / "global_step4").is_dir(), "no DeepSpeed state: DeepSpeed did not run"
        assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {
            "rng_state_0.pth",
            "rng_state_1.pth",
        }, "not two ranks"
        partitions = list((checkpoint / "global_step4").glob("*optim_states.pt"))
        assert len(partitions) == 2, "optimizer state not partitioned over two ranks (ZeRO)"
        for step in OVERLAY["checkpoints"]:
            weights = run_dir(workdir, run) / "weights" / f"step-{step}"
            assert (weights / "model.safetensors").is_file()  # gathered 16-bit save, loadable
            assert (
                not (weights / "global_step4").exists()
                and not (weights / "zero_to_torch.py").exists()
            )


def test_colocated_vllm_syncs_weights_and_the_server_run_goes_through_the_wrapper(
    rehearsal_dag,
) -> None:
    workdir, _ = rehearsal_dag
    logs = workdir / "logs" / "train"
    colocate = (logs / f"qwen-zero3-colocate-seed{SEED}.log").read_text()
    assert (
        "colocated engine can reload them" in colocate
    )  # aha.launch.cpu_rehearsal, before vLLM starts
    server_run = (logs / f"qwen-zero3-seed{SEED}.log").read_text()
    # on 127.0.0.1, at a port chosen for the job (none pinned), which the server log confirms
    port = re.search(r"server healthy at http://127\.0\.0\.1:(\d+)/health", server_run)
    assert port, server_run[-3000:]
    assert "init_communicator skipped (NCCL only)" in server_run
    # the server outlives the training command, then is stopped
    assert server_run.index("training command exited with status 0") < server_run.index(
        "stopping the vLLM server"
    )
    server_log = (logs / f"qwen-zero3-seed{SEED}.vllm-server.log").read_text()
    assert (  # vLLM's own server, run as `trl vllm-serve` ran it, with the dev-mode endpoints
        "VLLM_SERVER_DEV_MODE=1 " in server_log
        and f"-m vllm.entrypoints.cli.main serve results/models/tiny --host 127.0.0.1 "
        f"--port {port.group(1)} "
        in server_log
    )
    assert "POST /v1/completions" in server_log or "/inference/v1/generate" in server_log, (
        "the trainer generated nothing through the server"
    )


def test_runs_across_nodes_meet_as_two_machines_and_the_server_has_a_node_of_its_own(
    rehearsal_dag,
) -> None:
    """`aha nodes` stands two nodes in on this machine: machine ranks 0 and 1 meet at the port
    machine 0 published (c10d); in server mode a third serves, and outlives the training."""
    workdir, _ = rehearsal_dag
    logs = workdir / "logs" / "train"
    for run in ("qwen-zero3-colocate-nodes", "qwen-zero3-nodes"):
        log = (logs / f"{run}-seed{SEED}.log").read_text()
        points = re.findall(r"aha node (\d)/2 on \S+: rendezvous (127\.0\.0\.1:\d+)", log)
        assert sorted(rank for rank, _ in points) == ["0", "1"], log[-3000:]
        assert len({point for _, point in points}) == 1  # both at machine 0's one point
        assert not list((run_dir(workdir, run) / "trainer").glob("rendezvous-*.json"))
    server_run = (logs / f"qwen-zero3-nodes-seed{SEED}.log").read_text()
    assert "server on this node (127.0.0.1" in server_run
    assert server_run.index("training command exited with status 0") < server_run.index(
        "stopping the vLLM server"
    )
    assert "init_communicator skipped (NCCL only)" in server_run


def test_every_run_writes_live_curves_once_from_rank_0(rehearsal_dag) -> None:
    """TensorBoard by default: one event file per training session (one writer, rank 0, also
    across two stand-in nodes), read back with TensorBoard's own reader at the logged steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = rehearsal_dag
    for run in RUNS:
        folder = run_dir(workdir, run) / "tensorboard"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, f"{run}: not one writer"
        curves = EventAccumulator(str(folder))
        curves.Reload()
        for tag in ("train/reward", "train/completions/mean_length", "train/learning_rate"):
            assert [e.step for e in curves.Scalars(tag)] == [2, 4], (run, tag)
        assert not (run_dir(workdir, run) / "trainer" / "runs").exists()


def test_qlora_trains_a_lora_adapter(rehearsal_dag) -> None:
    workdir, _ = rehearsal_dag
    for step in OVERLAY["checkpoints"]:
        weights = run_dir(workdir, "qwen-qlora") / "weights" / f"step-{step}"
        assert (weights / "adapter_model.safetensors").is_file()
        adapter = json.loads((weights / "adapter_config.json").read_text())
        assert adapter["r"] == 16 and adapter["lora_alpha"] == 32  # the seed config's LoRA
        manifest = json.loads(
            (run_dir(workdir, "qwen-qlora") / "checkpoints" / f"step-{step}.json").read_text()
        )
        assert manifest["is_adapter"] is True and manifest["base_model"] == "results/models/tiny"


def test_every_step_is_sampled_by_its_runs_sampler_scored_and_reported(rehearsal_dag) -> None:
    """zero3 runs by vLLM (its CPU build), the qlora run in NF4 by transformers: the very
    sampler each takes on a GPU (aha.run.Run.sample_backend), so nothing differs but the device."""
    workdir, output = rehearsal_dag
    for run in RUNS:
        for step in STEPS:
            rows = read_jsonl(samples_file(workdir, run, step))
            assert len(rows) == N_SAMPLES and {r["step"] for r in rows} == {step}
            name = f"{run}-seed{SEED}-{step}" if step else f"{run}-base-0"
            log = (workdir / "logs" / "sample" / f"{name}.log").read_text()
            assert f"backend {'hf' if run == 'qwen-qlora' else 'vllm'}" in log
    summary = pd.read_csv(workdir / "results" / "summary.tsv", sep="\t")
    assert sorted(zip(summary["run"], summary["step"], strict=True)) == sorted(
        (run, step) for run in RUNS for step in STEPS
    )
    assert (workdir / "results" / "report.html").stat().st_size > 10_000
    assert "note: runs.qwen-zero3-colocate: vllm_mode colocate trains on all 2 devices" in output


def sample_command(python: Path, run: str, sampling: str, backend: str, out: Path) -> list[str]:
    """`python -m aha sample` of `run`'s step-4 checkpoint on the CPU, in a rehearsal folder."""
    cmd = [str(python), "-m", "aha", "sample"]
    cmd += ["--model", f"results/runs/{run}/seed-{SEED}/checkpoints/step-4.json"]
    cmd += ["--eval", "results/data/eval.parquet", "--sampling", sampling, "--backend", backend]
    return [*cmd, "--device", "cpu", "--run", run, "--step", "4", "--out", str(out)]


def test_checkpoints_also_sample_with_transformers(rehearsal_dag, tmp_path: Path) -> None:
    workdir, _ = rehearsal_dag
    python = rehearsal_python()
    sampling = json.dumps({**OVERLAY["sampling"], "backend": "hf"})
    quantization = json.dumps(
        {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_use_double_quant": True,
        }
    )
    for run in RUNS:
        out = tmp_path / f"{run}.jsonl"
        cmd = sample_command(python, run, sampling, "hf", out)
        if run == "qwen-qlora":
            cmd += ["--quantization", quantization]
        subprocess.run(cmd, cwd=workdir, check=True, capture_output=True, timeout=600)
        assert len(read_jsonl(out)) == N_SAMPLES


def test_a_checkpoint_also_samples_through_vllms_own_processes(rehearsal_dag, tmp_path) -> None:
    """The DAG samples with vLLM in process on the CPU (aha.launch.vllm_sampler); the GPU's
    engine core and worker run in processes of their own, spawned from `python -m aha`. That
    topology, asked for through the environment, samples a checkpoint here too."""
    workdir, _ = rehearsal_dag
    out = tmp_path / "step-4.jsonl"
    sampling = json.dumps(OVERLAY["sampling"])
    cmd = sample_command(rehearsal_python(), "qwen-zero3-colocate", sampling, "vllm", out)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # vLLM logs to stdout: the engine core ran in a process of its own
    assert "(EngineCore pid=" in proc.stdout + proc.stderr
    assert len(read_jsonl(out)) == N_SAMPLES
    dag_log = (workdir / "logs" / "sample" / f"qwen-zero3-colocate-seed{SEED}-4.log").read_text()
    assert "(EngineCore pid=" not in dag_log  # ... and in the DAG's, in the stage's process


def test_a_qlora_run_is_sampled_in_4_bit_at_every_step(rehearsal_dag) -> None:
    """Step 0 (the base alone) and a trained step load the same NF4 base; the adapter stays
    unmerged on it (merging would dequantize), so a run's curve compares one precision."""
    workdir, _ = rehearsal_dag
    python = rehearsal_python()
    code = """
import json, sys
from aha.stages.sample import load_hf, resolve_model
quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
out = {}
for step, model in (("0", "results/models/tiny"), ("4", "results/runs/qwen-qlora/seed-42/checkpoints/step-4.json")):
    m, _ = load_hf(resolve_model(model), quant, "cpu")
    kinds = {type(x).__name__ for x in m.modules()}
    out[step] = sorted(k for k in kinds if k in ("Linear4bit", "Linear", "LoraModel", "PeftModelForCausalLM"))
print(json.dumps(out))
"""
    result = subprocess.run(
        [str(python), "-c", code], cwd=workdir, check=True, capture_output=True, text=True
    )
    kinds = json.loads(result.stdout.strip().splitlines()[-1])
    assert "Linear4bit" in kinds["0"] and "PeftModelForCausalLM" not in kinds["0"]
    assert "Linear4bit" in kinds["4"] and "PeftModelForCausalLM" in kinds["4"]
    # the DAG sampled every step in NF4 with transformers, step 0 too, as on a GPU
    for step in STEPS:
        name = f"qwen-qlora-seed{SEED}-{step}" if step else "qwen-qlora-base-0"
        log = (workdir / "logs" / "sample" / f"{name}.log").read_text()
        assert "base in 4 bit (nf4)" in log and "backend hf" in log


def test_grpo_moves_the_weights_in_every_mode(rehearsal_dag) -> None:
    """Rewards vary within groups (the warm-started tiny model is well formed a third of the
    time), so the rehearsal trains for real: every step-4 checkpoint differs from where it
    started, and what colocated vLLM reloads after each step is a changed policy."""
    from safetensors.torch import load_file  # the adapter is bf16: numpy has no bf16

    workdir, _ = rehearsal_dag
    base = load_file(workdir / "results" / "models" / "tiny" / "model.safetensors")
    for run in ZERO3_RUNS:
        trained = load_file(run_dir(workdir, run) / "weights" / "step-4" / "model.safetensors")
        assert trained.keys() == base.keys()
        assert any(not trained[k].equal(base[k]) for k in base), f"{run}: weights unchanged"
    adapter = load_file(
        run_dir(workdir, "qwen-qlora") / "weights" / "step-4" / "adapter_model.safetensors"
    )
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b), "LoRA B is still its zero init"
    for run in RUNS:
        rows = [
            json.loads(x)
            for x in (run_dir(workdir, run) / "train_log.jsonl").read_text().splitlines()
        ]
        assert any(r.get("reward_std", 0) > 0 for r in rows), f"{run}: no reward variance"
