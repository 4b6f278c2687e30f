"""The seed's R1 prompt rendered through a chat template, ending inside the prefilled <think>."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from aha.task import prompts

# Qwen2.5's ChatML template, reduced to what the prompt uses (system/user/assistant turns,
# generation prompt, and continue_final_message handled by transformers itself).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = CHATML
    return fast


def test_messages_are_the_seeds_text() -> None:
    system, user, assistant = prompts.messages([19, 36, 55, 7], 65)
    assert system == {"role": "system", "content": prompts.SYSTEM}
    assert user["content"].startswith(
        "Using the numbers [19, 36, 55, 7], create an equation that equals 65. You can use basic"
    )
    assert "<answer> (1 + 2) / 3 = 1 </answer>" in user["content"]
    # the seed's triple-quoted string keeps its line breaks and 13-space indentation
    assert "each number can\n             only be used once." in user["content"]
    assert assistant == {"role": "assistant", "content": "Let me solve this step by step.\n<think>"}


def test_numbers_are_rendered_as_plain_ints() -> None:
    import numpy as np

    _, user, _ = prompts.messages(np.array([3, 5, 7], dtype=np.int64), np.int64(22))
    assert "Using the numbers [3, 5, 7], create an equation that equals 22." in user["content"]


def test_render_continues_the_prefilled_turn(tokenizer: PreTrainedTokenizerFast) -> None:
    text = prompts.render(tokenizer, [19, 36, 55, 7], 65)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert text.endswith("<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    assert text.count("<|im_start|>") == 3
    # the assistant turn is left open: no end-of-turn after the prefill, no new turn opened
    assert not text.endswith("<|im_end|>\n") and "assistant\n<|im_start|>" not in text


def test_a_template_that_does_not_keep_the_prefill_is_refused(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    closing = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    closing.chat_template = "{% for m in messages %}{{ m['content'] | upper }}<END>{% endfor %}"
    with pytest.raises(ValueError, match="continue_final_message"):
        prompts.render(closing, [1, 2, 3], 6)
