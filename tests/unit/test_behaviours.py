"""Aha-behaviour detectors on hand-written completions, positive and negative."""

from __future__ import annotations

import operator
import random
import time
from pathlib import Path

import pytest

from aha.task.behaviours import (
    BEHAVIOURS,
    MAX_SCAN_CHARS,
    REFLECTION_WORDS,
    count_candidates,
    detect,
    reflection_summary,
    reflection_words,
    summarize,
    thinking,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "behaviours.md"

TINY_SEARCH = (
    "Using 3, 7, 12 to make 27: 12 + 7 + 3 = 22, not 27; 12 * 3 - 7 = 29, not 27; "
    "(12 - 7) * 3 = 15... yes.</think>\n<answer>(12 - 7) * 3</answer>"
)
TINY_DIRECT = "Using 4, 5, 9 to make 29: 4 * 5 + 9 = 29, yes.</think>\n<answer>4 * 5 + 9</answer>"
TINY_GIVE_UP = "Using 2, 6, 11 to make 40: 11 * 2 + 6 = 28</think>\n<answer>11 * 2 + 6</answer>"
QWEN_SEARCH = (
    " We need 79 from 55, 36, 19, 7. Let me try 55 + 36 = 91, that's too big. Wait, what about "
    "55 - 36 = 19, 19 + 7 = 26? No, that doesn't work. Let's see if (55 - 19) + 36 + 7 = 79. "
    "Yes! </think>\n<answer>55 - 19 + 36 + 7</answer>"
)
PLAIN = " 55 + 36 - 7 - 19 = 65 </think>\n<answer>55 + 36 - 7 - 19</answer>"


@pytest.mark.parametrize(
    ("text", "verify", "backtrack", "candidates"),
    [
        (TINY_SEARCH, True, True, 3),
        (TINY_DIRECT, True, False, 1),
        (TINY_GIVE_UP, False, False, 1),
        # 55+36 | 55-36 continued by 19+7 | (55-19)+36+7
        (QWEN_SEARCH, True, True, 3),
        (PLAIN, False, False, 1),
        ("", False, False, 0),
        ("I am not sure how to start.", False, False, 0),
    ],
)
def test_detect_on_whole_completions(
    text: str, verify: bool, backtrack: bool, candidates: int
) -> None:
    assert detect(text) == {"verify": verify, "backtrack": backtrack, "candidates": candidates}


@pytest.mark.parametrize(
    "text",
    [
        "Let me check: 4 * 5 = 20.",
        "let's verify this",
        "Let us double-check the sum",
        "Check: 12 + 3 = 15",
        "Verification: it holds",
        "so 8 * 9 = 72?",
        "which equals the target",
        "does that equal 72",
        "That works!",
        "This is correct.",
        "that's incorrect",
        "Correct!",
        "12 + 3 = 15 ✓",
        "LET ME CHECK",
        "Let me confirm",
        "it’s correct",  # curly apostrophe
    ],
)
def test_verify_positive(text: str) -> None:
    assert detect(text)["verify"], text


@pytest.mark.parametrize(
    "text",
    [
        "We play checkers here",
        "a checkpoint",
        "So the correct equation is 55 + 36 - 19 + 7 = 79.",
        "the answer is 72",
        "I will use all numbers",
        "yesterday I tried",
        "create an equation that equals 79",
        "8 * 9 = 72 </think> let me check yes",  # after </think>: not thinking
    ],
)
def test_verify_negative(text: str) -> None:
    assert not detect(text)["verify"], text


@pytest.mark.parametrize(
    "text",
    [
        "Wait, that is wrong",
        "let me try again",
        "Let's try a different combination",
        "that doesn't work",
        "That does not work",
        "it doesn’t equal 27",
        "use 7 instead",
        "91 is too big",
        "too small",
        "= 22, not 27",
        "No, that's 91",
        "that is not equal to 27",
        "Alternatively, 5 * 4",
        "another combination",
        "starting over",
        "WAIT",
    ],
)
def test_backtrack_positive(text: str) -> None:
    assert detect(text)["backtrack"], text


@pytest.mark.parametrize(
    "text",
    [
        "I waited for the answer",  # 'waited' is not 'wait'
        "the notation is fine",
        "there is nothing to undo",
        "Let me try 55 + 36 = 91",
        "this works out to 12",
        "no numbers left over",
        "a big number times a small one",
        "5 * 4 = 20 </think> wait, instead",
    ],
)
def test_backtrack_negative(text: str) -> None:
    assert not detect(text)["backtrack"], text


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("4 * 5 + 9 = 29", 1),
        ("4*5+9=29", 1),
        ("4 * 5 + 9 = 29. Again 4 * 5 + 9 = 29.", 1),  # repeats are one candidate
        ("55 + 36 = 91, 91 - 19 = 72, 72 + 7 = 79", 1),  # a chain is one candidate
        ("55 + 36 = 91 - 19 = 72", 1),
        ("12 + 7 + 3 = 22; 12 * 3 - 7 = 29", 2),
        ("(12 - 7) * 3 = 15 and ((12 - 7)) * 3 = 15", 2),
        ("7 = 7 and 27 = 27", 0),  # no operator
        ("4 + 5 = ? and 4 + 5 =", 0),  # no result
        ("\\( 6 \\times 7 = 42 \\) and 6 x 8 = 48 and 6 ÷ 3 = 2", 3),
        ("2.5 * 4 = 10 and 10 / 0.5 = 20", 1),  # decimals are operands; a chain
        ("target 27 12 + 3 = 15", 1),  # the longest well-formed left side: 12 + 3
        ("12) + 3 = 15", 0),  # no well-formed suffix holds an operator
        ("4 + 5 = -1, -1 + 2 = 1", 2),  # a negative result is not matched to an operand
        # the last result reappears, but with numbers the chain used: a new attempt
        ("1 * 19 - 18 = 1, not 2; 1 - 18 * 19 = -341, not 2", 2),
        ("1 * 5 + 9 = 14; 1 - 5 + 9 = 5; (9 - 5) - 1 = 3", 3),
        ("55 + 36 = 91, 91 - 19 = 72, 72 + 55 = 127", 2),
        ("there are 3 numbers", 0),
    ],
)
def test_count_candidates(text: str, n: int) -> None:
    assert count_candidates(text) == n


def test_thinking_stops_at_close_tag_and_cap() -> None:
    assert thinking("a b </think> c </think>") == "a b "
    assert thinking("x" * (MAX_SCAN_CHARS + 100)) == "x" * MAX_SCAN_CHARS
    assert not detect("x" * MAX_SCAN_CHARS + " wait")["backtrack"]
    assert detect("x" * (MAX_SCAN_CHARS - 10) + " wait")["backtrack"]


@pytest.mark.parametrize(
    "text",
    [
        "1+" * 100_000 + "=1",
        "(" * 100_000 + "1)=1",
        "1+1=2 " * 50_000,
        "=1" * 100_000,
        ("let " + " " * 5000) * 40,
        "no " * 100_000,
    ],
)
def test_hostile_text_is_bounded(text: str) -> None:
    start = time.perf_counter()
    detect(text)
    # generous: the scan is capped at MAX_SCAN_CHARS, a typical run takes ~0.03 s
    assert time.perf_counter() - start < 2.0


def test_summarize_reports_a_fall_as_well_as_a_rise() -> None:
    before = [TINY_SEARCH, TINY_DIRECT, TINY_GIVE_UP, PLAIN]
    after = [TINY_GIVE_UP, PLAIN, PLAIN, TINY_DIRECT]
    assert summarize(before) == {
        "verify_share": 0.5,
        "backtrack_share": 0.25,
        "candidates_mean": 1.5,
    }
    assert summarize(after) == {
        "verify_share": 0.25,
        "backtrack_share": 0.0,
        "candidates_mean": 1.0,
    }
    assert summarize([]) == {"verify_share": None, "backtrack_share": None, "candidates_mean": None}


def test_table_is_documented() -> None:
    doc = DOCS.read_text()
    for name, behaviour in BEHAVIOURS.items():
        assert behaviour.description and behaviour.patterns
        assert f"`{name}`" in doc
    assert "`candidates`" in doc
    assert str(MAX_SCAN_CHARS) in doc.replace(",", "").replace("_", "")


def _tiny_trace(rng: random.Random) -> tuple[str, tuple[bool, bool, int]]:
    """A trace in the tiny warm-start format and the detector values it must give."""
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}

    def candidate(nums: list[int]) -> tuple[str, int]:
        a, b, c = rng.sample(nums, 3)
        o1, o2 = rng.choice("+-*"), rng.choice("+-*")
        if rng.random() < 0.5:
            return f"({a} {o1} {b}) {o2} {c}", ops[o2](ops[o1](a, b), c)
        return f"{a} {o1} ({b} {o2} {c})", ops[o1](a, ops[o2](b, c))

    nums = [rng.randint(1, 20) for _ in range(3)]
    answer, target = candidate(nums)
    wrong = dict(c for c in (candidate(nums) for _ in range(rng.randint(0, 2))) if c[1] != target)
    give_up = bool(wrong) and rng.random() < 0.7
    lines = [f"\nNumbers {', '.join(map(str, nums))}; target {target}."]
    for i, (text, value) in enumerate(wrong.items()):
        end = "give up." if give_up and i == len(wrong) - 1 else "try again."
        lines.append(f"{text} = {value}, not {target}; {end}")
    if not give_up:
        lines.append(f"{answer} = {target}, yes.")
    text = "\n".join(lines) + "\n</think>\n<answer> x </answer>"
    return text, (not give_up, bool(wrong), len(wrong) + (not give_up))


def test_detect_on_simulated_tiny_traces() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text, (verify, backtrack, candidates) = _tiny_trace(rng)
        assert detect(text) == {
            "verify": verify,
            "backtrack": backtrack,
            "candidates": candidates,
        }, text


REFLECTIVE = (
    "Wait, but 3 + 7 = 10. WAIT... but_x butter; However I must check: checked, checking, "
    "double-check, errors, error.</think>\n<answer>but wait check</answer>"
)
UNCLOSED = "hmm, wrong. Let me Verify and evaluate; retry after the mistake"


def _words(**nonzero: int) -> dict[str, int]:
    return {w: nonzero.get(w, 0) for w in REFLECTION_WORDS}


def test_reflection_words_whole_words_in_thinking_only() -> None:
    # exact forms only: checked/checking/errors/butter/but_x do not count; the answer is ignored
    assert reflection_words(REFLECTIVE) == _words(wait=2, but=1, however=1, check=2, error=1)
    assert list(reflection_words(REFLECTIVE)) == list(REFLECTION_WORDS)
    # no </think>: the whole completion is the thinking
    assert reflection_words(UNCLOSED) == _words(wrong=1, verify=1, evaluate=1, retry=1, mistake=1)
    assert reflection_words(" 4 * 5 = 20 </think> wait but") == _words()
    assert reflection_words("") == _words()
    assert reflection_words("rebut, waiting, mistaken, verifying, wrongly, re-check") == _words(
        check=1
    )
    assert reflection_words("x" * MAX_SCAN_CHARS + " wait") == _words()  # past the scan cap


def test_reflection_summary_by_hand() -> None:
    def row(text: str, eq: float) -> dict:
        return {"text": text, "equation_reward": eq}

    samples = [
        row(REFLECTIVE, 1.0),  # 7 words
        row(UNCLOSED, 0.0),  # 5 words
        row(" 4 * 5 = 20 </think> wait but", 1.0),
        row("", 1.0),
    ]
    got = reflection_summary(samples)
    assert got == {
        "words_per_completion": 3.0,
        "share_with_any": 0.5,
        "success_with": 0.5,
        "success_without": 1.0,
        "per_word": {w: 0.5 if w in ("wait", "check") else 0.25 for w in REFLECTION_WORDS},
    }
    assert reflection_summary(samples[2:])["success_with"] is None
    assert reflection_summary(samples[:2])["success_without"] is None
    assert reflection_summary([]) == {
        "words_per_completion": None,
        "share_with_any": None,
        "success_with": None,
        "success_without": None,
        "per_word": dict.fromkeys(REFLECTION_WORDS),
    }
