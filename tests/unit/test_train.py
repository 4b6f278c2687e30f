"""aha.stages.train: per-mode GRPOConfig building (no CUDA needed), errors, signals, timing.

The shared fixtures build a random 1-layer Qwen2 with a small byte-level BPE tokenizer and a
ChatML template in a second, so these tests (and the real tiny CPU GRPO runs of
tests/integration/test_train_runs.py) do not depend on the workflow's tiny model.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from aha.run import Run
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


def run_spec(
    mode: str = "cpu", checkpoints=(2, 4), device: str = "cuda", config: dict | None = None, **grpo
) -> Run:
    """Run `t` of a small config: the tiny fixtures' GRPO settings with `grpo` over them (a key
    set to None is left out), on `device` (mode cpu: always the CPU), `config` merged on top."""
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
    run = {"mode": mode, "grpo": {k: v for k, v in base.items() if v is not None}}
    full = {
        "device": device,
        "model": {"source": "tiny", "dtype": "float32"},
        "checkpoints": list(checkpoints),
        "runs": {"t": run},
    }
    for key, value in (config or {}).items():
        if key == "runs":
            run.update(value)
        else:
            full[key] = value
    return Run.build(full, "t")


# ----------------------------------------------------------------------------- per-mode args (pure)


def test_cpu_mode_args_set_cpu_flags_and_keep_grpo(tmp_path: Path) -> None:
    run = run_spec(temperature=0.7, reward_weights=[0.1, 1.0])
    assert run.device == "cpu"  # mode cpu, whatever the config's device
    args = run.grpo_args(tmp_path / "run")
    assert args["use_cpu"] is True
    assert args["bf16"] is False
    assert args["activation_checkpointing"] is False
    assert args["report_to"] == ["tensorboard"]
    assert args["output_dir"] == str(tmp_path / "run" / "trainer")
    assert args["temperature"] == 0.7 and args["reward_weights"] == [0.1, 1.0]
    assert args["seed"] == run.seed == 7  # the run's own seed is its one replicate's
    assert args["model_init_kwargs"] == {"dtype": "float32"}
    from trl import GRPOConfig

    config = GRPOConfig(**args)  # TRL accepts every key
    assert config.use_cpu and not config.bf16 and not config.gradient_checkpointing


def test_user_settings_beat_mode_defaults(tmp_path: Path) -> None:
    run = run_spec(gradient_checkpointing=True, report_to="none", seed=None, config={"seed": 99})
    args = run.grpo_args(tmp_path)
    assert args["gradient_checkpointing"] is True
    assert "activation_checkpointing" not in args  # the alias the user chose is left alone
    assert args["report_to"] == "none"  # not the default ["tensorboard"]
    assert args["seed"] == 99  # no grpo.seed: the top-level seed


def test_qlora_mode_quantization_and_lora(tmp_path: Path) -> None:
    run = run_spec(
        "qlora",
        checkpoints=[2],
        max_steps=2,
        config={
            "model": {"source": "hub", "dtype": "bfloat16"},
            "runs": {
                "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
                "quantization": {"bnb_4bit_use_double_quant": True},
            },
        },
    )
    args = run.grpo_args(tmp_path)
    assert args["bf16"] is True and args["activation_checkpointing"] is True
    assert "use_cpu" not in args
    # one process on the job's first GPU: TRL's default device_map="auto" spreads over all
    assert args["model_init_kwargs"] == {"dtype": "bfloat16", "device_map": {"": 0}}
    assert args["save_total_limit"] == 2  # configured steps live on in weights/step-N
    objects = run.peft_objects()
    quant, lora = objects["quantization_config"], objects["peft_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant is True
    assert str(quant.bnb_4bit_compute_dtype).endswith("bfloat16")
    assert (
        lora.r == 8 and lora.lora_alpha == 32 and set(lora.target_modules) == {"q_proj", "v_proj"}
    )
    assert run_spec().peft_objects() == {}


def test_a_gpu_mode_rehearsed_on_cpu_keeps_its_gpu_settings(tmp_path: Path) -> None:
    rehearsal = {}
    for mode in ("qlora", "zero3"):
        run = run_spec(mode, [2], "cpu", {"model": {"source": "hub", "dtype": "bfloat16"}})
        assert run.rehearsal
        args = rehearsal[mode] = run.grpo_args(tmp_path)
        assert args["bf16"] is True and args["activation_checkpointing"] is True
        assert args["model_init_kwargs"] == {"dtype": "bfloat16"}  # no GPU device_map
    assert rehearsal["qlora"]["use_cpu"] is True and "ddp_backend" not in rehearsal["qlora"]
    # accelerate skips DeepSpeed under use_cpu; without a named backend it counts one process
    assert "use_cpu" not in rehearsal["zero3"] and rehearsal["zero3"]["ddp_backend"] == "gloo"


def test_zero3_mode_keeps_vllm_settings(tmp_path: Path) -> None:
    run = run_spec(
        "zero3",
        checkpoints=[50, 450],
        config={"model": {"source": "hub", "attn_implementation": "flash_attention_2"}},
        max_steps=450,
        use_vllm=True,
        vllm_mode="server",
        vllm_server_port=8000,
        bf16=True,
    )
    args = run.grpo_args(tmp_path, env={})
    assert args["use_vllm"] is True and args["vllm_mode"] == "server"
    assert args["vllm_server_port"] == 8000
    assert args["activation_checkpointing"] is True and args["bf16"] is True
    assert args["model_init_kwargs"] == {
        "dtype": "bfloat16",
        "attn_implementation": "flash_attention_2",
    }
    assert run.quantization is None and run.lora is None


def test_gpu_mode_without_cuda_fails_with_the_fix(tmp_path: Path, tiny_model: Path) -> None:
    run = run_spec("zero3", checkpoints=[2], max_steps=2)
    with pytest.raises(TrainError, match=r"(aha-countdown\[gpu\]|config/tiny.yaml)"):
        train.train(run, tmp_path, str(tiny_model), tmp_path / "run")
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


# ----------------------------------------------------------------------------- CLI and stop signals
# (real tiny CPU runs: tests/integration/test_train_runs.py)


def test_cli_help_documents_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--help"], prog="python -m aha train")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for arg in ("--run", "--data-dir", "--model", "--out-dir", "--sample-rate"):
        assert arg in out


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
