"""The seed's R1 prompt, rendered through the model's own chat template.

The assistant turn is prefilled with "Let me solve this step by step.\\n<think>" and rendered
with `continue_final_message=True`, so generation continues *inside* the thinking block. We hand
GRPOTrainer this plain string: TRL 1.x renders chat-format prompts with
`add_generation_prompt=True`, which would close the prefilled turn and open a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in the mind "
    "and then provides the user with the answer."
)
# Kept verbatim from the seed, including its line breaks and indentation: the Qwen runs are
# meant to see exactly the prompt the seed's results were reported on.
USER_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can\n"
    "             only be used once. Show your work in <think> </think> tags. And return the "
    "final equation and answer in <answer> </answer> tags, for example,\n"
    "             <answer> (1 + 2) / 3 = 1 </answer>.\n"
    "            "
)
PREFILL = "Let me solve this step by step.\n<think>"


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def messages(nums: Sequence[int], target: int) -> list[dict[str, str]]:
    """The three-turn conversation: system, user question, prefilled assistant turn."""
    numbers = "[" + ", ".join(str(int(n)) for n in nums) + "]"
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER_TEMPLATE.format(numbers=numbers, target=int(target))},
        {"role": "assistant", "content": PREFILL},
    ]


def render(tokenizer: ChatTokenizer, nums: Sequence[int], target: int) -> str:
    """The prompt string the policy continues; ends with the prefill's `<think>`."""
    text = tokenizer.apply_chat_template(
        messages(nums, target), tokenize=False, continue_final_message=True
    )
    if not isinstance(text, str) or not text.endswith(PREFILL):
        raise ValueError(
            "chat template did not end the prompt with the assistant prefill; "
            "does the tokenizer's template support continue_final_message?"
        )
    return text
