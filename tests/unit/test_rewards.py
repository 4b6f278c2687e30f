"""aha.task.rewards: the seed's semantics on its own examples, our deliberate differences, and
hostile completions (all 0.0, fast, never raising)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from aha.task.rewards import (
    FORMAT_RE,
    MAX_COMPLETION_CHARS,
    check_equation,
    completion_text,
    equation_reward,
    evaluate,
    extract_answer,
    format_ok,
    format_reward,
    parse_expression,
    parse_tokens,
    uses_numbers,
)

NUMS = [19, 36, 55, 7]

# The seed notebook's five test completions (none starts with <think>: the prompt prefills it).
CORRECT_1 = """We need to find an equation using the numbers 19, 36, 55, and 7
exactly once, with basic arithmetic operations, that equals 65. One possible
combination is 55 + 36 - 19 + 7... </think>
<answer> 55 + 36 - 7 - 19 </answer>"""
CORRECT_2 = """ ... </think>
<answer> 55 + 36 - 7 - 19 </answer>"""
WRONG_FORMAT = """User: Using the numbers [19, 36, 55, 7], create an equation that equals 65."""
WRONG_FORMAT_2 = """To find the equation that equals 79 using the numbers 95, 78, 6, 88, I'll start by adding 88 and 95:
95 + 88 = 183
Now, let's subtract 104 from 183 to get 79:
183 - 104 = 79
<think> 183 - 104 = 79 </think><think> 183 - 104 = 79 </think><answer> 183 - 104 = 79 </answer>"""
WRONG_RESULT = """ ... </think>
<answer> 55 + 36 - 7 - 18 </answer>"""
SEED = [CORRECT_1, CORRECT_2, WRONG_FORMAT, WRONG_FORMAT_2, WRONG_RESULT]


def answer(text: str) -> str:
    return f" ... </think>\n<answer> {text} </answer>"


def eq(text: str, nums=NUMS, target=65) -> float:
    return equation_reward([answer(text)], target=[target], nums=[nums])[0]


# ----------------------------------------------------------------------------- the seed


def test_seed_examples_give_the_seed_rewards() -> None:
    # Called exactly as the notebook did, string targets and its odd nums argument included.
    assert format_reward(SEED, target=["65"] * 5, nums=[NUMS * 5]) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert equation_reward(SEED, target=["65"] * 5, nums=[NUMS] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_conversational_completions() -> None:
    msgs = [[{"role": "assistant", "content": c}] for c in SEED]
    assert format_reward(msgs) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert equation_reward(msgs, target=[65] * 5, nums=[NUMS] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": CORRECT_2}]}]
    assert completion_text(parts) == CORRECT_2
    assert completion_text(None) == completion_text([]) == completion_text({"content": 3}) == ""


def fuzz_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        "<think>", "</think>", "<answer>", "</answer>", "\n", "<", "think>", "answer>",
        "/", "a", " ", "</answer>\n", "\n<answer>", "</think>\n<answer>", " 1 + 2 ",
    ]  # fmt: skip
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(n)]


def test_format_check_equals_the_seed_regex() -> None:
    for text in fuzz_corpus(30_000, 1) + SEED:
        assert format_ok(text) == bool(FORMAT_RE.search("<think>" + text)), repr(text)


def test_answer_extraction_equals_the_seed_regex() -> None:
    for text in fuzz_corpus(30_000, 2) + SEED:
        m = re.search(r"<answer>(.*?)<\/answer>", "<think>" + text)
        assert extract_answer(text) == (m.group(1).strip() if m else None), repr(text)


# ----------------------------------------------------------------------------- equations


@pytest.mark.parametrize(
    ("text", "reward"),
    [
        ("55 + 36 - 7 - 19", 1.0),
        ("55 + 36 - 7 - 19 = 65", 1.0),  # the prompt's own example form
        ("(55 + 36) - (7 + 19)", 1.0),
        ("55+36-7-19", 1.0),
        ("55 + 36 - 7 - 19 = 66", 0.0),  # a wrong stated result
        ("55 + 36 - 7 - 19 = 065", 0.0),
        ("55 + 36 - 7 - 19 = 65 = 65", 0.0),
        ("55 + 36 - 7 - 19 = 60 + 5", 0.0),
        ("55 + 36 - 7 - 18", 0.0),  # wrong result
        ("55 + 36 - 26", 0.0),  # numbers missing
        ("55 + 36 - 7 - 19 + 19 - 19", 0.0),  # a number reused
        ("55 + 36 - 7 - 19 + 0", 0.0),  # an extra number
        ("-7 + 55 + 36 - 19", 0.0),  # unary minus: the seed's eval accepted it
        ("55 + 36 + -7 - 19 + 0", 0.0),
        ("55 + 36 - 07 - 19", 0.0),  # leading zero
        ("55.0 + 36 - 7 - 19", 0.0),
        ("55 + 36 - 7 - 19;", 0.0),
        ("55 + 36 - (7 + 19", 0.0),
        ("55 + 36 - 7 - 19)", 0.0),
        ("55 36 - 7 - 19", 0.0),
        ("55 + 36 ** 7 - 19", 0.0),
        ("55 + 36 // 7 - 19", 0.0),
        ("", 0.0),
    ],
)
def test_equation_cases(text: str, reward: float) -> None:
    assert eq(text) == reward


def test_exact_arithmetic() -> None:
    assert eq("(5 - 1 / 5) * 5", nums=[1, 5, 5, 5], target=24) == 1.0
    # 65 + 1/200000 is within the seed's 1e-5 tolerance; it is not 65.
    assert eq("65 + 1 / 200000", nums=[65, 1, 200000], target=65) == 0.0
    assert eq("7 / 2 * 4", nums=[7, 2, 4], target=14) == 1.0
    assert eq("7 / (2 * 4)", nums=[7, 2, 4], target=14) == 0.0


def test_targets_and_numbers_in_other_types() -> None:
    import numpy as np

    assert check_equation("55 + 36 - 7 - 19", np.array(NUMS), np.int64(65))
    assert check_equation("55 + 36 - 7 - 19", ["19", "36", "55", "7"], "65")
    assert check_equation("55 + 36 - 7 - 19", NUMS, 65.0)
    assert not check_equation("55 + 36 - 7 - 19", NUMS, "sixty-five")
    assert not check_equation("55 + 36 - 7 - 19", NUMS, 65.5)
    assert not check_equation("55 + 36 - 7 - 19", [], 65)
    assert not check_equation(None, NUMS, 65)


def test_uses_numbers_ignores_the_value_but_not_the_numbers() -> None:
    assert uses_numbers("55 + 36 - 7 - 19", NUMS)  # right
    assert uses_numbers("55 * 36 - 7 - 19", NUMS)  # wrong value, right numbers
    assert uses_numbers("(55 + 36) - (7 + 19) = 65", NUMS)
    assert not uses_numbers("91 - 26", NUMS)  # intermediate results: a sloppy answer
    assert not uses_numbers("55 + 36 - 7", NUMS)  # a number left out
    assert not uses_numbers("55 + 36 - 7 - 19 - 19", NUMS)  # one used twice
    for bad in (None, "", "55 + 36 - 7 - x19", "9" * 300, 42):
        assert not uses_numbers(bad, NUMS), bad
    assert not uses_numbers("1 + 2", [1, "two"])


def test_evaluate() -> None:
    assert evaluate("7 / 2 * 4") == 14
    assert evaluate("2 * (3 + 4) - 10 / 4") == Fraction(23, 2)
    assert evaluate("8 / 2 / 2") == 2  # left-associative
    assert evaluate("8 - 2 - 2") == 4
    assert evaluate("((1))") == 1
    for bad in ("1 / 0", "1 / (2 - 2)", "1 2", "()", "", "-1", "2 ** 3", "1e3", "0x10", "1_000"):
        assert evaluate(bad) is None, bad


def _tree_value(tree: object) -> Fraction | None:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree  # type: ignore[misc]
    a, b = _tree_value(left), _tree_value(right)
    if a is None or b is None:
        return None
    if op == "/":
        return a / b if b else None
    return a + b if op == "+" else a - b if op == "-" else a * b


def test_parse_expression_is_the_grammar_evaluate_uses() -> None:
    assert parse_expression("(12 - 7) * 3") == ("*", ("-", 12, 7), 3)
    assert parse_expression("12 + 5 * 3") == ("+", 12, ("*", 5, 3))
    assert parse_expression("20 - 14 - 1") == ("-", ("-", 20, 14), 1)
    assert parse_expression("42") == 42
    for bad in ("2 ** 3", "__import__('os')", "(1 + 2", "1 +", "1 2", "-1", "1 = 1", None):
        assert parse_expression(bad) is None, bad
    assert parse_expression("1 + " * 64 + "1") is None  # over MAX_LITERALS
    # Operands may be any token but + - * / ( ): aha.task.behaviours passes number strings.
    assert parse_tokens(["2.5", "*", "(", "4", ")"]) == ("*", "2.5", "4")
    assert parse_tokens(["(", "2.5", ")", ")"]) is None
    rng = random.Random(0)
    parsed = 0
    for _ in range(3000):
        text = "".join(rng.choice("1230 +-*/()") for _ in range(rng.randint(1, 12)))
        tree = parse_expression(text)
        parsed += tree is not None
        assert evaluate(text) == (None if tree is None else _tree_value(tree)), text
    assert parsed > 100


def test_length_mismatch_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 targets"):
        equation_reward([CORRECT_1, CORRECT_2], target=[65], nums=[NUMS, NUMS])


# ----------------------------------------------------------------------------- hostile

HOSTILE = {
    "power tower": answer("9**9**9**9**9**9**9**9**9"),
    "power of a number": answer("55 ** 36 - 7 - 19"),
    "huge integer": answer("9" * 5000 + " + 36 - 7 - 19"),
    "ten-digit literal": answer("5500000000 + 36 - 7 - 19"),
    "deep nesting": answer("(" * 5000 + "55 + 36 - 7 - 19" + ")" * 5000),
    "nesting over the cap": answer("(" * 40 + "55 + 36 - 7 - 19" + ")" * 40),
    "very long text": "blah " * 1_000_000 + "</think>\n<answer> 55 + 36 - 7 - 19 </answer>",
    "unclosed tags": "<answer>" * 4000 + "\n" + answer("55 + 36 - 7 - 19")[:-9],
    "many '<'": "<" * (MAX_COMPLETION_CHARS - 10),
    "arabic-indic digits": answer("٥٥ + ٣٦ - ٧ - ١٩"),
    "fullwidth digits": answer("５５ + 36 - 7 - 19"),
    "superscript digits": answer("55 + 36 - 7 - 1⁹"),
    "division by zero": answer("(55 + 36 - 7 - 19) * (19 / (7 - 7))"),
    "zero division only": answer("55 / (36 - 36)"),
    "unary minus chain": answer("- - - - 55 + 36 - 7 - 19"),
    "unary minus in parens": answer("55 + 36 - (-7) - 19"),
    "nan": answer("nan"),
    "inf": answer("inf - inf"),
    "float": answer("55.0 + 36 - 7 - 19"),
    "exponent literal": answer("5.5e1 + 36 - 7 - 19"),
    "python code": answer("__import__('os').system('true')"),
    "lambda": answer("(lambda: 65)()"),
    "null bytes": answer("55\x00 + 36 - 7 - 19"),
    "non-breaking space": answer("55\u00a0+ 36 - 7 - 19"),
    "answer too long": answer("55 +" + " " * 300 + "36 - 7 - 19"),  # correct but over the cap
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_scores_zero_fast(name: str) -> None:
    text = HOSTILE[name]
    start = time.perf_counter()
    eq_r = equation_reward([text], target=[65], nums=[NUMS])
    fmt_r = format_reward([text])
    elapsed = time.perf_counter() - start
    assert eq_r == [0.0]
    # Most are well-formed answers with bad content; these three are malformed or oversize.
    assert fmt_r == ([0.0] if name in {"very long text", "unclosed tags", "many '<'"} else [1.0])
    assert elapsed < 0.005, f"{name}: {elapsed * 1e3:.2f} ms (loose sanity bound; see bench/)"


def test_nesting_under_the_cap_is_fine() -> None:
    assert eq("(" * 30 + "55 + 36 - 7 - 19" + ")" * 30) == 1.0


def test_nothing_raises_on_odd_inputs() -> None:
    odd = [None, 5, 3.2, b"bytes", [], [{}], [{"role": "assistant"}], {"content": ["x", 1]}]
    assert format_reward(odd) == [0.0] * len(odd)
    assert equation_reward(odd, target=[65] * len(odd), nums=[NUMS] * len(odd)) == [0.0] * len(odd)
    assert equation_reward([CORRECT_2] * 3, target=[None, [1], 65], nums=[NUMS, NUMS, None]) == [
        0.0,
        0.0,
        0.0,
    ]


def test_no_torch_import() -> None:
    code = "import sys, aha.task.rewards, aha.task.countdown; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
