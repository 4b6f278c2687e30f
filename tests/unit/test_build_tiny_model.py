"""The embedded tiny policy: tokenizer, chat template and traces (the small real build that trains
a model: tests/integration/test_tiny_model_build.py)."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from aha.config import ConfigError
from aha.sections import TinySpec, section
from aha.stages import build_tiny_model
from aha.task import countdown, generator, prompts, rewards
from aha.tiny import traces

TASKS = [([12, 7, 3], 27), ([4, 1, 9], 14), ([20, 14, 1], 7), ([6, 2, 9], 72), ([5, 4, 1], 25)]
SMALL = {
    "vocab_size": 200,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "warm_start": {
        "num_traces": 120,
        "max_steps": 20,
        "batch_size": 8,
        "warmup_steps": 2,
        "eval_tasks": 6,
    },
}


def some_traces(n: int = 200, seed: int = 0, give_up_rate: float = 0.5) -> list[traces.Trace]:
    rng = random.Random(seed)
    tasks = generator.generate(n, seed=3, num_counts=[3], number_range=(1, 20))
    return [
        traces.make_trace(s.task.nums, s.task.target, rng, give_up_rate=give_up_rate, max_wrong=2)
        for s in tasks
    ]


@pytest.fixture(scope="module")
def trained_tokenizer() -> PreTrainedTokenizerFast:
    boot = build_tiny_model._bootstrap_tokenizer()
    texts = [prompts.render(boot, t.nums, t.target) + t.completion for t in some_traces()]
    return build_tiny_model.train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, trained_tokenizer) -> Path:
    """Tokenizer saved beside a qwen2 config.json, as in the real model directory."""
    out = tmp_path_factory.mktemp("tok")
    spec = section(TinySpec, {k: v for k, v in SMALL.items() if k != "warm_start"})
    build_tiny_model.build_model(spec, trained_tokenizer, seed=0).save_pretrained(out)
    build_tiny_model.save_tokenizer(trained_tokenizer, out)
    return out


# ----------------------------------------------------------------------------- tokenizer


def test_auto_tokenizer_round_trips_ids_exactly(trained_tokenizer, tokenizer_dir):
    """The trap: transformers 5 loads a tokenizer beside a qwen2 config as Qwen2Tokenizer."""
    loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    fast = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    texts = [prompts.render(loaded, n, t) for n, t in TASKS] + [
        t.completion for t in some_traces(30, seed=1)
    ]
    texts.append("12345 + 678 = 13023, not 99; <|im_end|><|endoftext|> ünïcode")
    for text in texts:
        want = trained_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == want
        assert fast(text, add_special_tokens=False)["input_ids"] == want
        assert raw.encode(text, add_special_tokens=False).ids == want
        assert loaded.decode(want) == text


def test_digits_and_the_space_before_them_are_single_tokens(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "x 2048 + 17 = 2065, not 99"
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    with_digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert with_digits == list("2048172065" + "99")  # each digit alone, nothing glued to it
    starts = [i for i, p in enumerate(pieces) if p.isdigit() and not pieces[i - 1].isdigit()]
    assert [pieces[i - 1] for i in starts] == ["Ġ"] * 4  # the space before a number, alone


def test_special_tokens_eos_and_pad(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tokenizer_dir)
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1
    assert model.generation_config.eos_token_id == [im_end, eot]
    assert model.generation_config.pad_token_id == eot
    assert model.config.vocab_size == len(tok)
    assert model.config.tie_word_embeddings is True


def test_prompt_is_short_because_its_constant_text_is_whole_tokens(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(prompts.render(tok, [12, 7, 3], 27), add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-1] == "assistant\n" + prompts.PREFILL
    # specials, 5 chunks, 6 digits, separators: far below the ~140 of word-level BPE
    assert len(ids) <= 25
    assert [p for p in pieces if p.isdigit()] == list("127327")


def test_template_chunks_follow_the_prompt():
    chunks = build_tiny_model.template_chunks()
    assert any(c.startswith("system\n" + prompts.SYSTEM) for c in chunks)
    assert chunks[-1] == "assistant\n" + prompts.PREFILL
    assert all(not re.search(r"11111|22222|<\|im_", c) for c in chunks)


# ----------------------------------------------------------------------------- chat template


def test_chat_template_continues_the_prefilled_turn(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = prompts.render(tok, [12, 7, 3], 27)
    assert text.startswith(
        "<|im_start|>system\n" + prompts.SYSTEM + "<|im_end|>\n<|im_start|>user\n"
    )
    assert text.endswith("<|im_start|>assistant\n" + prompts.PREFILL)
    assert text.count("<|im_start|>") == 3 and text.count("<|im_end|>") == 2
    assert "Using the numbers [12, 7, 3], create an equation that equals 27." in text


def test_chat_template_generation_prompt_and_default_system(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------- traces


def test_traces_score_as_they_claim():
    ts = some_traces(300, seed=2)
    comps = [t.completion for t in ts]
    nums = [list(t.nums) for t in ts]
    targets = [t.target for t in ts]
    fmt = rewards.format_reward(comps, target=targets, nums=nums)
    eq = rewards.equation_reward(comps, target=targets, nums=nums)
    assert fmt == [1.0] * len(ts)
    assert eq == [1.0 if t.correct else 0.0 for t in ts]
    assert 0.3 < sum(t.correct for t in ts) / len(ts) < 0.7  # give_up_rate 0.5
    assert {t.wrong_candidates for t in ts} == {0, 1, 2}
    assert all(t.wrong_candidates >= 1 for t in ts if not t.correct)


def test_every_stated_step_is_exact():
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
    for t in some_traces(200, seed=4):
        lines = t.completion.split("</think>")[0].strip().split("\n")
        assert lines[0] == f"Numbers {', '.join(map(str, t.nums))}; target {t.target}."
        for line in lines[1:]:
            found = step.findall(line)
            assert len(found) == len(t.nums) - 1, line
            for a, op, b, r in found:
                assert rewards.evaluate(f"{a} {op} {b}") == int(r), line
            result = int(found[-1][3])
            assert line.endswith(", yes.") == (result == t.target), line


def test_trace_text_on_known_trees():
    tree = ("-", 20, ("-", 14, 1))
    assert traces.answer_text(tree) == "20 - (14 - 1)"
    assert traces.steps_text(tree) == ("14 - 1 = 13, 20 - 13 = 7", 7)
    assert traces.canonical(("+", 6, ("+", 18, 19))) == ("+", ("+", 19, 18), 6)
    assert traces.canonical(("*", 3, 17)) == ("*", 17, 3)
    assert traces.canonical(("-", 3, 17)) == ("-", 3, 17)
    assert traces.integral(("-", 3, 17)) is False
    assert traces.integral(("/", 12, ("-", 7, 3))) is True
    assert traces.integral(("/", 7, 2)) is False


def test_solutions_are_traced_as_their_text_reads():
    # show() prints 55 + (36 - 7) as "55 + 36 - 7", which a reader computes as (55 + 36) - 7.
    assert traces.as_written(("+", 55, ("-", 36, 7))) == ("-", ("+", 55, 36), 7)
    assert traces.as_written(("*", 2, ("*", 3, ("/", 8, 4)))) == ("/", ("*", ("*", 2, 3), 8), 4)
    assert traces.as_written(("-", 20, ("-", 14, 1))) == ("-", 20, ("-", 14, 1))
    assert traces.as_written(("+", 12, ("*", 5, 3))) == ("+", 12, ("*", 5, 3))
    trees = countdown.solution_trees([2, 3, 4, 6], 24)
    assert len(trees) > 10
    for tree in trees:
        assert traces.as_written(tree) == rewards.parse_expression(countdown.show(tree))


def test_make_trace_is_deterministic_and_never_claims_an_unreachable_target():
    a = traces.make_trace([12, 7, 3], 27, random.Random(5))
    b = traces.make_trace([12, 7, 3], 27, random.Random(5))
    assert a == b
    # 1, 1, 1 cannot make 50: the trace gives up on a wrong candidate, it never says "yes".
    t = traces.make_trace([1, 1, 1], 50, random.Random(0), give_up_rate=0.0)
    assert not t.correct and t.completion.endswith(f"<answer> {t.answer} </answer>")
    assert ", yes." not in t.completion


def test_max_value_caps_every_stated_step_where_the_task_allows():
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
    rng = random.Random(3)
    capped = uncapped = 0
    while capped + uncapped < 150:
        nums, target = [rng.randint(1, 10) for _ in range(3)], rng.randint(1, 40)
        if not countdown.is_solvable(nums, target):
            continue
        t = traces.make_trace(nums, target, rng, give_up_rate=0.5, max_value=40)
        values = [int(r) for a, op, b, r in step.findall(t.completion)]
        capped += max(values) <= 40
        uncapped += max(values) > 40
    # Only a task whose every solution passes 40 on the way (9 * 8 / 2 = 36) may state more.
    assert capped > 100 and uncapped < capped / 10
    # 10, 10, 10 -> 1000: no candidate stays under 5, yet the trace still shows one and gives up.
    t = traces.make_trace([10, 10, 10], 999, random.Random(0), give_up_rate=1.0, max_value=5)
    assert not t.correct and t.wrong_candidates >= 1


def test_answer_slip_writes_the_last_step_which_the_equation_reward_refuses():
    assert traces.slip_text(("+", ("+", 9, 4), 1)) == "13 + 1"
    assert traces.slip_text(("-", 20, ("-", 14, 1))) == "20 - 13"
    tasks = generator.generate(300, seed=3, num_counts=[3], number_range=(1, 10))
    for s in tasks:
        plain = traces.make_trace(s.task.nums, s.task.target, random.Random(s.task.target))
        slipped = traces.make_trace(
            s.task.nums, s.task.target, random.Random(s.task.target), slip=True
        )
        # Same candidates and verdicts; only the answer differs, and it never scores.
        assert (
            slipped.completion.rsplit("<answer>", 1)[0] == plain.completion.rsplit("<answer>", 1)[0]
        )
        assert slipped.slipped and not slipped.correct
        for t in (plain, slipped):
            answer = rewards.extract_answer("<think>" + t.completion)
            assert rewards.check_equation(answer, t.nums, t.target) == t.correct
            assert rewards.uses_numbers(answer, t.nums) != t.slipped


def test_slip_rate_changes_answers_only() -> None:
    frame = pd.DataFrame({"nums": [[9, 4, 1], [3, 5, 7], [2, 2, 5]], "target": [14, 22, 6]})
    base = dataclasses.replace(section(TinySpec, {}).warm_start, num_traces=300, give_up_rate=0.5)
    half = build_tiny_model.make_traces(
        frame, dataclasses.replace(base, answer_slip_rate=0.5), seed=1
    )
    none = build_tiny_model.make_traces(frame, base, seed=1)
    assert 100 < sum(t.slipped for t in half) < 200 and not any(t.slipped for t in none)
    assert traces.summary(half)["answer_slip_share"] == sum(t.slipped for t in half) / 300
    for a, b in zip(half, none, strict=True):
        assert a.completion.rsplit("<answer>", 1)[0] == b.completion.rsplit("<answer>", 1)[0]
        assert (a.answer == b.answer) == (not a.slipped)


# ----------------------------------------------------------------------------- spec + build


def test_spec_refuses_unknown_keys_and_bad_values_and_takes_schema_defaults():
    with pytest.raises(ConfigError, match=r"^model\.tiny\.hidden: unknown key"):
        section(TinySpec, {"hidden": 3})
    with pytest.raises(ConfigError, match=r"^model\.tiny\.warm_start\.steps: unknown key"):
        section(TinySpec, {"warm_start": {"steps": 3}})
    with pytest.raises(ConfigError, match=r"^model\.tiny\.num_key_value_heads: 3 must divide"):
        section(TinySpec, {"num_attention_heads": 4, "num_key_value_heads": 3})
    with pytest.raises(ConfigError, match=r"^model\.tiny\.warm_start\.give_up_rate: 2 is greater"):
        section(TinySpec, {"warm_start": {"give_up_rate": 2}})
    spec = section(TinySpec, SMALL)
    assert spec.hidden_size == 32 and spec.warm_start.max_steps == 20
    assert spec.warm_start.learning_rate == 0.002  # the schema's default


def test_split_tasks_holds_out_at_most_a_fifth_and_never_overlaps():
    tasks = pd.DataFrame({"nums": [[i, 1, 2] for i in range(50)], "target": list(range(50))})
    traced, held = build_tiny_model.split_tasks(tasks, 200, seed=1)
    assert len(held) == 10 and len(traced) == 40
    assert not set(held["target"]) & set(traced["target"])
    assert build_tiny_model.split_tasks(tasks, 200, seed=1)[1].equals(held)  # seeded
    with pytest.raises(ValueError, match="at least 5"):
        build_tiny_model.split_tasks(tasks.head(4), 1, seed=1)


def test_cli_help_documents_every_argument(capsys):
    with pytest.raises(SystemExit):
        build_tiny_model.cli(["--help"], prog="python -m aha build-tiny-model")
    out = capsys.readouterr().out
    for arg in ("--tiny", "--train", "--seed", "--out-dir"):
        assert arg in out
