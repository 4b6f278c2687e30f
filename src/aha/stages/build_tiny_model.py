"""The embedded tiny policy: offline tokenizer, a small Qwen2, and a supervised warm start.

It plays the part Qwen2.5-3B-Instruct plays in the seed, on a 2-core CPU with no network:
`aha.task.prompts` renders its prompt with the same code, and the warm start (a short supervised run
on solver-generated reasoning traces, `aha.tiny.traces`) stands in for pretraining, so the model writes
the `<think>…</think>\\n<answer>…</answer>` format and solves some tasks but far from all.

The tokenizer uses exactly Qwen2's pre-tokenizer (every digit its own token, a space before a
digit its own token): transformers 5 loads any `tokenizer.json` beside a `qwen2` config as
`Qwen2Tokenizer`, which rebuilds Qwen2's split rules around our vocabulary. With the same rules
on both sides, every loader yields the same ids (tests/unit/test_build_tiny_model.py checks it). The prompt's
constant text (system turn, instructions, prefill) is added as whole tokens, so a rendered prompt
is ≈ 22 tokens instead of ≈ 140: the tiny model does not need to read English, and the saving is
most of the warm start's and GRPO's compute.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import trainers as tok_trainers
from tqdm import tqdm
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    get_cosine_schedule_with_warmup,
)

from aha import formats
from aha.cli import add_json, failing_as, parser, setup_logging
from aha.formats import DataSourceError
from aha.sections import TinySpec, WarmStart, section
from aha.task import prompts, rewards
from aha.tiny import artifact as tiny_artifact
from aha.tiny import traces

log = logging.getLogger("aha.stages.build_tiny_model")

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Qwen2's pre-tokenizer regex (transformers' Qwen2Tokenizer): `\p{N}` alone makes every digit its
# own token; `\s+(?!\S)|\s+` leaves the space before a digit on its own.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# ChatML as in Qwen2.5's template (without tools): a default system turn when none is given.
# `continue_final_message=True` works with it: transformers cuts the render after the last
# message's content, leaving the assistant turn open.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MIN_CHUNK_CHARS = 8  # constant prompt text shorter than this stays ordinary BPE text
MAX_NEW_TOKENS = 128


# ----------------------------------------------------------------------------- tokenizer


def _bootstrap_tokenizer() -> PreTrainedTokenizerFast:
    """A vocabulary-less tokenizer that only renders the chat template (to get the text)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE()), chat_template=CHAT_TEMPLATE
    )


def template_chunks(tokenizer: PreTrainedTokenizerFast | None = None) -> list[str]:
    """The constant text of a rendered prompt: every stretch between specials and the numbers.

    Found by rendering with sentinel numbers, so it follows `aha.task.prompts` if the prompt changes.
    """
    sentinels = (11111, 22222, 33333, 44444)
    text = prompts.render(tokenizer or _bootstrap_tokenizer(), sentinels[:3], sentinels[3])
    pieces = re.split("|".join(map(re.escape, [*SPECIAL_TOKENS, *map(str, sentinels)])), text)
    seen: dict[str, None] = {}
    for piece in pieces:
        if len(piece) >= MIN_CHUNK_CHARS:
            seen.setdefault(piece)
    return list(seen)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's split rules, ChatML specials and the prompt's chunks."""
    bpe = Tokenizer(
        models.BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = tok_trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = template_chunks()
    # The chunks become whole tokens afterwards; BPE merges are spent on the rest.
    splitter = re.compile("|".join(map(re.escape, sorted(chunks, key=len, reverse=True))))
    bpe.train_from_iterator((part for t in texts for part in splitter.split(t)), trainer)
    bpe.add_tokens([AddedToken(c, special=False, normalized=False) for c in chunks])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        chat_template=CHAT_TEMPLATE,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        model_max_length=1 << 30,
    )
    return tok


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save, naming the class AutoTokenizer picks for a qwen2 config anyway (see module doc)."""
    tokenizer.save_pretrained(out_dir)
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(cfg, indent=2) + "\n")


# ----------------------------------------------------------------------------- model


def build_model(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 with tied embeddings, sized by the spec and the vocabulary."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = generation_config(tokenizer)
    return model


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Stop on the end of the assistant turn (or end of text); plain temperature-1 sampling."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(
        eos_token_id=[im_end, eot],
        pad_token_id=eot,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
    )


# ----------------------------------------------------------------------------- warm start


@dataclass(frozen=True)
class Example:
    """One supervised sequence: prompt ids (no loss) followed by completion ids (loss)."""

    ids: tuple[int, ...]
    prompt_len: int


def encode(tokenizer: PreTrainedTokenizerFast, prompt: str, completion: str) -> Example:
    """Prompt and completion tokenized apart, as GRPO sees them: the prompt alone, then tokens."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return Example(ids=(*p, *c, tokenizer.eos_token_id), prompt_len=len(p))


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels -100 on the prompt and the padding."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        labels[row, e.prompt_len : n] = ids[row, e.prompt_len : n]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supervised(
    model: Qwen2ForCausalLM, examples: Sequence[Example], ws: WarmStart, seed: int, pad_id: int
) -> list[float]:
    """AdamW + cosine schedule over shuffled epochs; returns the loss of every step."""
    order_rng = random.Random(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=ws.learning_rate, betas=(0.9, 0.98), weight_decay=0.01
    )
    schedule = get_cosine_schedule_with_warmup(
        optimizer, min(ws.warmup_steps, ws.max_steps), ws.max_steps
    )
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(ws.max_steps), desc="warm start", unit="step", mininterval=5)
    for step in bar:
        if len(order) < ws.batch_size:
            fresh = list(range(len(examples)))
            order_rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[: ws.batch_size]]
        del order[: ws.batch_size]
        loss = model(**collate(batch, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if step % 50 == 0 or step == ws.max_steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, ws.max_steps, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def sample_eval(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    tasks: pd.DataFrame,
    seed: int,
    temperature: float = 1.0,
    keep_all: bool = False,
) -> dict[str, Any]:
    """Format and success rate of one temperature-1 sample per task, scored by `aha.task.rewards`,
    with the first ten completions as examples (all of them with `keep_all`)."""
    torch.manual_seed(seed)
    texts = [prompts.render(tokenizer, list(r.nums), int(r.target)) for r in tasks.itertuples()]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    completions = tokenizer.batch_decode(
        out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
    )
    nums = [list(map(int, n)) for n in tasks["nums"]]
    targets = [int(t) for t in tasks["target"]]
    fmt = rewards.format_reward(completions, target=targets, nums=nums)
    eq = rewards.equation_reward(completions, target=targets, nums=nums)
    return {
        "tasks": len(completions),
        "temperature": temperature,
        "max_new_tokens": MAX_NEW_TOKENS,
        "format_rate": sum(fmt) / len(fmt),
        "success_rate": sum(eq) / len(eq),
        "examples": [
            {"nums": n, "target": t, "completion": c, "format": f, "equation": e}
            for n, t, c, f, e in list(zip(nums, targets, completions, fmt, eq, strict=True))[
                : None if keep_all else 10
            ]
        ],
    }


# ----------------------------------------------------------------------------- build


def split_tasks(tasks: pd.DataFrame, n_eval: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trace tasks, held-out eval tasks): the eval tasks never appear in a trace.

    At most a fifth of the tasks is held out, so a small test config still has traces.
    """
    n_eval = min(n_eval, len(tasks) // 5)
    if n_eval < 1:
        raise ValueError(f"need at least 5 training tasks to hold one out (have {len(tasks)})")
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    held_out = tasks.iloc[order[:n_eval]].reset_index(drop=True)
    return tasks.iloc[order[n_eval:]].reset_index(drop=True), held_out


def make_traces(tasks: pd.DataFrame, ws: WarmStart, seed: int) -> list[traces.Trace]:
    """`num_traces` traces, cycling through the tasks in a seeded order.

    Answer slips come from a generator of their own: a slip rate changes the answers only, never
    the tasks, candidates or verdicts, so warm starts that differ in it compare fairly.
    """
    rng = random.Random(seed)
    slip_rng = random.Random(f"{seed}-answer-slip")
    rows = list(zip(tasks["nums"], tasks["target"], strict=True))
    out = []
    for i in range(ws.num_traces):
        nums, target = rows[i % len(rows)]
        out.append(
            traces.make_trace(
                [int(n) for n in nums],
                int(target),
                rng,
                give_up_rate=ws.give_up_rate,
                max_wrong=ws.max_wrong_candidates,
                max_value=ws.max_value,
                slip=slip_rng.random() < ws.answer_slip_rate,
            )
        )
    return out


@dataclass(frozen=True)
class WarmStartData:
    """The warm start's inputs: traces, the tokenizer trained on them, their encoded examples,
    and the held-out tasks of the quick evaluation."""

    all_traces: list[traces.Trace]
    tokenizer: PreTrainedTokenizerFast
    examples: list[Example]
    eval_tasks: pd.DataFrame

    def completion_tokens_mean(self) -> float:
        return sum(len(e.ids) - e.prompt_len for e in self.examples) / len(self.examples)


def warm_start_data(spec: TinySpec, train_path: Path, seed: int) -> WarmStartData:
    """Held-out tasks apart, traces of the others, a tokenizer trained on them, the examples."""
    ws = spec.warm_start
    trace_tasks, eval_tasks = split_tasks(formats.read_split(train_path), ws.eval_tasks, seed)
    all_traces = make_traces(trace_tasks, ws, seed)
    boot = _bootstrap_tokenizer()
    prompt_texts = [prompts.render(boot, t.nums, t.target) for t in all_traces]
    tokenizer = train_tokenizer(
        (p + t.completion for p, t in zip(prompt_texts, all_traces, strict=True)), spec.vocab_size
    )
    examples = [
        encode(tokenizer, p, t.completion) for p, t in zip(prompt_texts, all_traces, strict=True)
    ]
    return WarmStartData(all_traces, tokenizer, examples, eval_tasks)


def _report(
    spec: TinySpec,
    train_path: Path,
    seed: int,
    data: WarmStartData,
    num_parameters: int,
    losses: Sequence[float],
    evaluation: dict[str, Any],
    wall_seconds: dict[str, float],
) -> dict[str, Any]:
    """warm_start.json: the recipe, the data, the losses, the time it took and the evaluation."""
    tail = losses[-max(1, min(20, len(losses) // 4)) :]
    return {
        "seed": seed,
        "spec": asdict(spec),
        "train_sha256": tiny_artifact.sha256_file(train_path),
        "num_parameters": num_parameters,
        "vocab_size": len(data.tokenizer),
        "prompt_tokens": data.examples[0].prompt_len,
        "completion_tokens_mean": data.completion_tokens_mean(),
        "traces": traces.summary(data.all_traces),
        "steps": len(losses),
        "final_loss": sum(tail) / len(tail),
        "losses": [round(x, 4) for x in losses],
        "wall_seconds": wall_seconds,
        "torch_threads": torch.get_num_threads(),
        "cpu": tiny_artifact.cpu_model(),
        "cpu_kind": tiny_artifact.cpu_kind(),
        "eval": evaluation,
    }


def build(spec: TinySpec, train_path: Path, seed: int, out_dir: Path) -> dict[str, Any]:
    """Tokenizer + model + warm start + quick sampled evaluation, all written to `out_dir`."""
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    data = warm_start_data(spec, train_path, seed)
    t_data = time.perf_counter()
    log.info(
        "%d traces, vocabulary %d, prompt %d tokens, completion mean %.1f tokens (%.1fs)",
        len(data.examples),
        len(data.tokenizer),
        data.examples[0].prompt_len,
        data.completion_tokens_mean(),
        t_data - t0,
    )
    model = build_model(spec, data.tokenizer, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("Qwen2ForCausalLM with %d parameters", n_params)
    losses = supervised(model, data.examples, spec.warm_start, seed, data.tokenizer.pad_token_id)
    t_train = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_tokenizer(data.tokenizer, out_dir)
    evaluation = sample_eval(model, data.tokenizer, data.eval_tasks, seed)
    t_eval = time.perf_counter()
    walls = {"data_and_tokenizer": t_data - t0, "train": t_train - t_data, "eval": t_eval - t_train}
    walls = {name: round(s, 1) for name, s in {**walls, "total": t_eval - t0}.items()}
    report = _report(spec, train_path, seed, data, n_params, losses, evaluation, walls)
    formats.write_atomic(out_dir / "warm_start.json", json.dumps(report, indent=2) + "\n")
    log.info(
        "warm start: %d steps, loss %.3f, %.0fs; eval format %.2f success %.2f",
        report["steps"],
        report["final_loss"],
        walls["total"],
        evaluation["format_rate"],
        evaluation["success_rate"],
    )
    return report


def install_prebuilt(prebuilt: Path, spec: TinySpec, seed: int, train: Path, out_dir: Path) -> None:
    """The model `prebuilt` holds, copied to `out_dir`, if it was built from this very recipe
    (tiny_artifact.ArtifactError if not)."""
    report = tiny_artifact.install(prebuilt, asdict(spec), seed, train, out_dir)
    log.info(
        "installed %s (built in %.0fs with %s threads; eval format %.2f success %.2f)",
        prebuilt,
        report.get("wall_seconds", {}).get("total", float("nan")),
        report.get("torch_threads"),
        report.get("eval", {}).get("format_rate", float("nan")),
        report.get("eval", {}).get("success_rate", float("nan")),
    )


def cli(argv: list[str], prog: str) -> None:
    p = parser(prog, __doc__)
    add_json(p, "--tiny", partial(section, TinySpec), help="the config's model.tiny section")
    p.add_argument("--train", required=True, type=Path, help="train split (parquet) to trace")
    p.add_argument("--seed", type=int, default=42, help="seed of traces, init and data order")
    p.add_argument("--out-dir", required=True, type=Path, help="model folder to write (HF format)")
    p.add_argument(
        "--prebuilt",
        type=Path,
        help="a model this stage built before (model.tiny.prebuilt): installed instead of "
        "rebuilt when its recorded recipe (spec, seed, train split) is this one",
    )
    args = p.parse_args(argv)
    setup_logging()
    if args.prebuilt is None:
        with failing_as(prog, DataSourceError):  # no such train split, or not one
            build(args.tiny, args.train, args.seed, args.out_dir)
        return
    with failing_as(f"{prog}: --prebuilt", tiny_artifact.ArtifactError):
        install_prebuilt(args.prebuilt, args.tiny, args.seed, args.train, args.out_dir)
