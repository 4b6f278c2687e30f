"""aha.stages.train: per-mode GRPOConfig building (no CUDA needed), and real tiny CPU GRPO runs.

The real runs use a random 1-layer Qwen2 with a small byte-level BPE tokenizer and a ChatML
template, built here in a second, so these tests do not depend on the workflow's tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from aha import formats
from aha.config import ConfigError
from aha.sections import RunSpec
from aha.stages import train
from aha.stages.train import TrainError
from aha.task import grpo_rewards, prompts

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ----------------------------------------------------------------------------- fixtures (shared)


def make_tiny_model(path: Path, seed: int = 0, vocab_size: int = 320) -> Path:
    """A random 1-layer Qwen2 + byte-level BPE tokenizer with a ChatML template, saved at `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    corpus = [prompts.SYSTEM, prompts.USER_TEMPLATE, prompts.PREFILL] + [
        f"{a} + {b} - {c} = {a + b - c} <answer> ({a} * {b}) / {c} </answer> </think>"
        for a, b, c in zip(range(1, 60), range(3, 62), range(7, 66), strict=True)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    im_end, eot = fast.convert_tokens_to_ids("<|im_end|>"), fast.convert_tokens_to_ids(SPECIALS[0])
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(path)
    return path


def write_tasks(data_dir: Path, n_train: int = 64, n_eval: int = 5, seed: int = 0) -> Path:
    """train.parquet and eval.parquet with the data stage's columns (a + b - c tasks)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_eval):
        a, b, c = rng.sample(range(1, 20), 3)
        rows.append(
            {
                "id": i,
                "nums": [a, b, c],
                "target": a + b - c if a + b > c else a + b + c,
                "pattern": "+-" if a + b > c else "++",
                "solution": f"{a} + {b} - {c}" if a + b > c else f"{a} + {b} + {c}",
            }
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows[:n_train]).to_parquet(data_dir / "train.parquet")
    pd.DataFrame(rows[n_train:]).to_parquet(data_dir / "eval.parquet")
    return data_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("data"))


def run_spec(mode: str = "cpu", checkpoints=(2, 4), **grpo) -> RunSpec:
    base = {
        "max_steps": 4,
        "learning_rate": 1e-3,
        "beta": 0.0,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 16,
        "logging_steps": 1,
        "save_steps": 3,
        "seed": 7,
    }
    base.update(grpo)
    return RunSpec.from_view(
        {
            "name": "t",
            "mode": mode,
            "device": "cpu" if mode == "cpu" else "cuda",
            "model": {"source": "tiny", "dtype": "float32", "attn_implementation": None},
            "checkpoints": list(checkpoints),
            "grpo": base,
        }
    )


# ----------------------------------------------------------------------------- per-mode args (pure)


def test_cpu_mode_args_set_cpu_flags_and_keep_grpo(tmp_path: Path) -> None:
    spec = run_spec(temperature=0.7, reward_weights=[0.1, 1.0])
    args = train.build_grpo_args(spec, tmp_path / "run", seed=99)
    assert args["use_cpu"] is True
    assert args["bf16"] is False
    assert args["activation_checkpointing"] is False
    assert args["report_to"] == "none"
    assert args["output_dir"] == str(tmp_path / "run" / "trainer")
    assert args["temperature"] == 0.7 and args["reward_weights"] == [0.1, 1.0]
    assert args["seed"] == 7  # the run's own seed wins over the workflow seed
    assert args["model_init_kwargs"] == {"dtype": "float32"}
    from trl import GRPOConfig

    config = GRPOConfig(**args)  # TRL accepts every key
    assert config.use_cpu and not config.bf16 and not config.gradient_checkpointing


def test_user_settings_beat_mode_defaults(tmp_path: Path) -> None:
    spec = run_spec(gradient_checkpointing=True, report_to=["tensorboard"])
    spec.grpo.pop("seed")
    args = train.build_grpo_args(spec, tmp_path, seed=99)
    assert args["gradient_checkpointing"] is True
    assert "activation_checkpointing" not in args  # the alias the user chose is left alone
    assert args["report_to"] == ["tensorboard"]
    assert args["seed"] == 99


def test_qlora_mode_quantization_and_lora(tmp_path: Path) -> None:
    spec = RunSpec.from_view(
        {
            "name": "q",
            "mode": "qlora",
            "device": "cuda",
            "model": {"dtype": "bfloat16"},
            "checkpoints": [2],
            "grpo": {"max_steps": 2},
            "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
            "quantization": {"bnb_4bit_use_double_quant": True},
        }
    )
    args = train.build_grpo_args(spec, tmp_path)
    assert args["bf16"] is True and args["activation_checkpointing"] is True
    assert "use_cpu" not in args
    # one process on the job's first GPU: TRL's default device_map="auto" spreads over all
    assert args["model_init_kwargs"] == {"dtype": "bfloat16", "device_map": {"": 0}}
    assert args["save_total_limit"] == 2  # configured steps live on in weights/step-N
    objects = train.build_peft_objects(spec)
    quant, lora = objects["quantization_config"], objects["peft_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant is True
    assert str(quant.bnb_4bit_compute_dtype).endswith("bfloat16")
    assert (
        lora.r == 8 and lora.lora_alpha == 32 and set(lora.target_modules) == {"q_proj", "v_proj"}
    )
    assert train.build_peft_objects(run_spec()) == {}


def test_a_gpu_mode_rehearsed_on_cpu_keeps_its_gpu_settings(tmp_path: Path) -> None:
    base = {"name": "q", "model": {"dtype": "bfloat16"}, "checkpoints": [2]}
    rehearsal = {}
    for mode in ("qlora", "zero3"):
        spec = RunSpec.from_view({**base, "mode": mode, "device": "cpu", "grpo": {"max_steps": 2}})
        args = rehearsal[mode] = train.build_grpo_args(spec, tmp_path)
        assert args["bf16"] is True and args["activation_checkpointing"] is True
        assert args["model_init_kwargs"] == {"dtype": "bfloat16"}  # no GPU device_map
    assert rehearsal["qlora"]["use_cpu"] is True and "ddp_backend" not in rehearsal["qlora"]
    # accelerate skips DeepSpeed under use_cpu; without a named backend it counts one process
    assert "use_cpu" not in rehearsal["zero3"] and rehearsal["zero3"]["ddp_backend"] == "gloo"


def test_zero3_mode_keeps_vllm_settings(tmp_path: Path) -> None:
    spec = RunSpec.from_view(
        {
            "name": "z",
            "mode": "zero3",
            "device": "cuda",
            "model": {"dtype": "bfloat16", "attn_implementation": "flash_attention_2"},
            "checkpoints": [50, 450],
            "grpo": {
                "max_steps": 450,
                "use_vllm": True,
                "vllm_mode": "server",
                "vllm_server_port": 8000,
                "bf16": True,
            },
        }
    )
    args = train.build_grpo_args(spec, tmp_path)
    assert args["use_vllm"] is True and args["vllm_mode"] == "server"
    assert args["vllm_server_port"] == 8000
    assert args["activation_checkpointing"] is True and args["bf16"] is True
    assert args["model_init_kwargs"] == {
        "dtype": "bfloat16",
        "attn_implementation": "flash_attention_2",
    }
    assert train.quantization_kwargs(spec) is None and train.lora_kwargs(spec) is None


def test_a_run_spec_refuses_keys_run_view_never_writes() -> None:
    # values were checked once, by aha.config.check at DAG build; the spec only refuses what
    # is not one of its fields, so a rule passing a stale view fails at once
    data = {
        "name": "t",
        "mode": "cpu",
        "device": "cpu",
        "model": {},
        "checkpoints": [2],
        "grpo": {},
    }
    with pytest.raises(ConfigError, match=r"^run spec\.extra: unknown key \(allowed: name, "):
        RunSpec.from_view({**data, "extra": 1})
    assert RunSpec.from_view(data).checkpoints == (2,)  # a list becomes the field's tuple


def test_gpu_mode_without_cuda_fails_with_the_fix(tmp_path: Path, tiny_model: Path) -> None:
    spec = RunSpec.from_view(
        {
            "name": "z",
            "mode": "zero3",
            "device": "cuda",
            "model": {},
            "checkpoints": [2],
            "grpo": {"max_steps": 2},
        }
    )
    with pytest.raises(TrainError, match=r"(aha-countdown\[gpu\]|config/tiny.yaml)"):
        train.train(spec, tmp_path, str(tiny_model), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_grpo_option_and_missing_model_are_one_line_errors(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    with pytest.raises(
        TrainError, match=r"runs\.t\.grpo: TRL's GRPOConfig refused.*num_generationz"
    ):
        train.train(run_spec(num_generationz=4), data_dir, str(tiny_model), tmp_path / "a")
    with pytest.raises(TrainError, match="no such directory"):
        train.train(run_spec(), data_dir, str(tmp_path / "nowhere"), tmp_path / "b")


# ----------------------------------------------------------------------------- helpers on disk


def test_completion_sampler_writes_successes_and_respects_cap(tmp_path: Path) -> None:
    sampler = grpo_rewards.CompletionSampler(tmp_path, seed=0, rate=1.0, max_bytes=200)
    sampler.touch()
    good = " 3 + 4 = 7</think>\n<answer>3 + 4</answer>"
    bad = " no idea</think>\n<answer>3 * 4</answer>"
    scores = grpo_rewards.EquationReward(sampler)([good, bad], target=[7, 7], nums=[[3, 4], [3, 4]])
    assert scores == [1.0, 0.0]
    text = (tmp_path / grpo_rewards.SAMPLES_FILE).read_text()
    assert text.count("==============") == 2 and good in text and bad in text
    success = (tmp_path / grpo_rewards.SUCCESS_FILE).read_text()
    assert success.count("==============") == 1 and good in success and bad not in success
    for _ in range(20):
        sampler.record([good], [[3, 4]], [7], [1.0], step=1)
    assert (tmp_path / grpo_rewards.SAMPLES_FILE).stat().st_size < 200 + 2 * len(good) + 100


# ----------------------------------------------------------------------------- real CPU runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_cpu_run_checkpoints_exactly_at_configured_steps(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    out = tmp_path / "run"
    # rewards of a random model are all 0, so only weight decay moves the weights
    spec = run_spec(weight_decay=0.1)
    result = train.train(spec, data_dir, str(tiny_model), out, sample_rate=1.0)
    assert result.global_step == 4 and result.stopped_by is None and result.resumed_from is None

    manifests = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert manifests == ["step-2.json", "step-4.json"]
    for step in (2, 4):
        manifest = json.loads((out / "checkpoints" / f"step-{step}.json").read_text())
        assert manifest["step"] == step and manifest["mode"] == "cpu"
        assert manifest["base_model"] == str(tiny_model) and manifest["is_adapter"] is False
        weights = Path(manifest["path"])
        assert weights == out / "weights" / f"step-{step}"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in weights.iterdir()
        }
        assert not list(weights.glob("optimizer*")) and manifest["train_seconds"] > 0
    # save_steps=3 gives TRL's checkpoint-3; ours are 2 and 4 (the last step is always saved).
    # save_total_limit 2 (the default of every mode) rotated checkpoint-2 away: its weights
    # were exported when it was saved, and are the step's, not the final model's
    assert sorted(p.name for p in (out / "trainer").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    from safetensors.torch import load_file

    w2 = load_file(out / "weights" / "step-2" / "model.safetensors")
    w4 = load_file(out / "weights" / "step-4" / "model.safetensors")
    c4 = load_file(out / "trainer" / "checkpoint-4" / "model.safetensors")
    assert all((w4[k] == c4[k]).all() for k in c4)
    assert any((w2[k] != w4[k]).any() for k in w2)

    log = read_jsonl(out / "train_log.jsonl")
    steps = [row["step"] for row in log if "reward" in row]
    assert steps == [1, 2, 3, 4]
    row = next(r for r in log if "reward" in r)
    for key in ("reward_std", "rewards/format_reward/mean", "rewards/equation_reward/mean"):
        assert key in row
    assert "completions/mean_length" in row and "learning_rate" in row
    # the split of TRL's step_time (aha.stages.train's GenerationTimer): both parts, adding up
    for r in (r for r in log if "reward" in r):
        gen, opt = r[train.GENERATION_KEY], r[train.OPTIMISATION_KEY]
        assert (
            gen > 0 and opt > 0 and gen + opt == pytest.approx(r["step_time"], abs=2e-4)
        )  # rounded to 4 places

    samples = out / "completion_samples"
    text = (samples / "completion_samples.txt").read_text()
    # rate 1.0: every completion of every step, one header each (4 steps x 8 completions)
    headers = [line for line in text.splitlines() if line.startswith("============== step ")]
    assert len(headers) == 32
    assert {h.split(" | ")[0] for h in headers} == {f"============== step {s}" for s in range(1, 5)}
    assert (samples / "success_completion_samples.txt").exists()


@pytest.mark.slow
def test_resume_continues_without_redoing_steps(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    out = tmp_path / "run"
    spec2 = run_spec(max_steps=2, checkpoints=(2,))
    first = train.train(spec2, data_dir, str(tiny_model), out, sample_rate=1.0)
    assert first.global_step == 2
    step2 = out / "weights" / "step-2"
    mtime = step2.stat().st_mtime_ns
    # Snakemake deletes declared outputs before a rerun
    (out / "train_log.jsonl").unlink()
    for manifest in (out / "checkpoints").iterdir():
        manifest.unlink()

    second = train.train(run_spec(), data_dir, str(tiny_model), out, sample_rate=1.0)
    assert second.resumed_from == str(out / "trainer" / "checkpoint-2")
    assert second.global_step == 4
    state = json.loads((out / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert step2.stat().st_mtime_ns == mtime  # step 2 was not redone
    log = read_jsonl(out / "train_log.jsonl")
    assert [row["step"] for row in log if "reward" in row] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.json", "step-4.json"]
    # rng state and data position restored: the same completions as an uninterrupted run
    straight = tmp_path / "straight"
    train.train(run_spec(), data_dir, str(tiny_model), straight, sample_rate=1.0)
    samples = Path(grpo_rewards.SAMPLES_DIR, grpo_rewards.SAMPLES_FILE)
    assert (out / samples).read_text() == (straight / samples).read_text()

    # a finished run asked again only rewrites its declared outputs
    for manifest in (out / "checkpoints").iterdir():
        manifest.unlink()
    third = train.train(run_spec(), data_dir, str(tiny_model), out)
    assert third.global_step == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.json", "step-4.json"]


@pytest.mark.slow
def test_sigterm_saves_and_stops_then_resume_finishes(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    from transformers import TrainerCallback

    class TermAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # during step 2: the save happens at its end
                signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "run"
    spec = run_spec(max_steps=5, checkpoints=(4, 5), save_steps=100)
    stopped = train.train(spec, data_dir, str(tiny_model), out, extra_callbacks=[TermAtStep()])
    assert stopped.stopped_by == "SIGTERM" and stopped.global_step == 2
    assert [p.name for p in (out / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "checkpoints").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again

    done = train.train(spec, data_dir, str(tiny_model), out)
    assert done.global_step == 5 and done.resumed_from.endswith("checkpoint-2")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4.json", "step-5.json"]


def test_cli_help_documents_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--help"], prog="python -m aha train")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for arg in ("--run-spec", "--data-dir", "--model", "--out-dir", "--seed"):
        assert arg in out


@pytest.mark.slow
def test_cli_sigterm_saves_checkpoint_and_exits_nonzero(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    """The real thing: `python -m aha train` in a subprocess, SIGTERM from outside mid-run."""
    out = tmp_path / "run"
    spec = run_spec(max_steps=200, checkpoints=(200,), save_steps=1000)
    view = dataclasses.asdict(spec)  # a run view, as the train rule passes it
    cmd = [sys.executable, "-m", "aha", "train", "--run-spec", json.dumps(view)]
    cmd += ["--data-dir", str(data_dir), "--model", str(tiny_model), "--out-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    log_file = out / "train_log.jsonl"
    while not (log_file.exists() and log_file.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no step logged within 2 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    found = list((out / "trainer").glob("checkpoint-*"))
    assert len(found) == 1 and formats.is_complete(found[0])
    assert 1 <= formats.checkpoint_step(found[0]) < 200
    assert not (out / "checkpoints").exists()


def test_stop_request_treats_a_quick_repeat_as_the_same_request(monkeypatch) -> None:
    """SLURM + torchrun deliver SIGTERM twice within a fraction of a second: one request."""
    from aha.launch.stop_signals import StopRequest

    killed: list[int] = []
    monkeypatch.setattr("aha.launch.stop_signals.os.kill", lambda pid, sig: killed.append(sig))
    stop = StopRequest(debounce_s=5.0)
    stop.install()
    try:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the duplicate
        assert stop.signum == signal.SIGTERM and killed == []
        stop._first_at -= 10  # a later, deliberate second signal means "die now"
        signal.raise_signal(signal.SIGTERM)
        assert killed == [signal.SIGTERM]
    finally:
        stop.uninstall()


def test_a_blocked_stop_signal_reaches_the_watcher_thread_and_interrupts_no_thread() -> None:
    """As in a training process (block_stop_signals first): SIGTERM to the process is taken by
    the watcher's sigwait, so no thread's system call sees EINTR, and the request is recorded."""
    from aha.launch.stop_signals import StopRequest, block_stop_signals

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    block_stop_signals()
    stop = StopRequest(debounce_s=5.0)
    stop.install()
    try:
        assert stop._watcher is not None and stop._watcher.is_alive()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the duplicate: ignored, the process lives
        time.sleep(0.2)
        assert stop._watcher.is_alive()
        watcher = stop._watcher
    finally:
        stop.uninstall()
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    assert not watcher.is_alive()  # uninstall ends it: no thread left taking signals


# ----------------------------------------------------------------------------- s/step split (a fake trainer)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(clock: Clock, seconds: float) -> SimpleNamespace:
    """A trainer whose generation takes `seconds` on `clock`."""
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), calls=0)

    def generate(batch: list[int]) -> list[int]:
        trainer.calls += 1
        clock.now += seconds
        return batch

    trainer._generate_and_score_completions = generate
    return trainer


def test_generation_split_is_added_to_the_logged_entry(monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(train.time, "perf_counter", clock)
    trainer = fake_trainer(clock, 3.0)
    timer = train.GenerationTimer()
    assert timer.wrap(trainer)
    callback = train.make_timing_callback(timer)
    state = SimpleNamespace(log_history=[], global_step=0)
    # optimizer step 1 generates (3 s); step 2 reuses the buffered completions (0 s)
    assert trainer._generate_and_score_completions([1, 2]) == [1, 2] and trainer.calls == 1
    for step in (1, 2):
        state.global_step = step
        callback.on_step_end(None, state, None)
    trainer.model.training = False
    trainer._generate_and_score_completions([3])  # an evaluation: not a training step's time
    trainer.model.training = True
    logs = {"loss": 0.1, "step_time": 4.0}  # TRL's mean over the two logged steps
    state.log_history.append({**logs, "step": 2})  # what Trainer.log appends before on_log
    callback.on_log(None, state, None, logs=logs)
    assert state.log_history[-1][train.GENERATION_KEY] == 1.5
    assert state.log_history[-1][train.OPTIMISATION_KEY] == 2.5
    assert logs[train.GENERATION_KEY] == 1.5
    # the final summary entry (no step_time) is left alone; the stage reads the same keys
    final = {"train_runtime": 9.0}
    state.log_history.append({**final, "step": 2})
    callback.on_log(None, state, None, logs=final)
    assert train.GENERATION_KEY not in state.log_history[-1]


def test_without_the_generation_method_nothing_is_added_and_it_is_said_once(caplog) -> None:
    timer = train.GenerationTimer()
    with caplog.at_level(logging.WARNING, logger="aha.stages.train"):
        assert not timer.wrap(SimpleNamespace(model=None))
    assert sum("no generation/optimisation split" in r.message for r in caplog.records) == 1
    callback = train.make_timing_callback(timer)
    state = SimpleNamespace(log_history=[{"step_time": 4.0, "step": 1}], global_step=1)
    callback.on_step_end(None, state, None)
    logs = {"step_time": 4.0}
    callback.on_log(None, state, None, logs=logs)
    assert logs == {"step_time": 4.0} and state.log_history == [{"step_time": 4.0, "step": 1}]
