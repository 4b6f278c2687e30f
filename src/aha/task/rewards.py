"""Format and equation rewards for GRPO on Countdown, with TRL's reward-function signature.

Semantics follow the seed notebook: a synthetic "<think>" is prepended (the prompt prefills it),
the format regex is the seed's, and the answer is the first `<answer>(.*?)</answer>` (one line).
Where this module differs, and why:

- The answer is parsed by a small tokenizer and an operator-precedence parser over exact
  rationals, never `eval`: the seed's whitelist let `9**9**9**9` through (it hangs) and its
  `{"__builti'ns__": None}` typo left builtins on.
- Only ASCII integer literals without leading zeros, binary + - * /, parentheses and ASCII
  blanks. No unary signs ("-7 + 55 + 36 - 19" scores 0; the seed's eval took it), no `**`,
  `//`, decimals, or non-ASCII digits (`\\d` would match them).
- A trailing `= N` is accepted when N is the target, because the prompt's own example answer
  has that form (`<answer> (1 + 2) / 3 = 1 </answer>`); the seed scored it 0.
- The result must equal the target exactly (the seed allowed 1e-5 of float error).
- Hostile input is bounded, not just caught: completions over MAX_COMPLETION_CHARS and
  answers over MAX_ANSWER_CHARS score 0 unread, literals are capped at MAX_LITERAL_DIGITS,
  nesting at MAX_DEPTH, the parser is iterative, and the number multiset is checked before any
  arithmetic. A catch-all still turns any surprise into 0.0: a reward must never raise.

This is the project's one expression parser (`parse_expression`, `parse_tokens`): the operator
pattern of a solution (aha.task.countdown) and the candidate equations of a thinking (aha.task.behaviours)
are read by the same grammar that scores an answer.

Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any, TypeVar

MAX_COMPLETION_CHARS = 32_768  # ~8k tokens; the seed's completions are at most 1,024 tokens
MAX_ANSWER_CHARS = 256  # a 6-number answer with parentheses needs ~40
MAX_LITERAL_DIGITS = 9
MAX_DEPTH = 32  # parentheses nesting
MAX_LITERALS = 64  # for `evaluate` on its own; equation checks compare with the task's numbers

# The seed's format regex, applied to "<think>" + completion. `format_ok` decides the same with
# str.find (tests compare them on a fuzzed corpus); the regex stays as the reference.
FORMAT_RE = re.compile(
    r"^<think>([^<]*(?:<(?!/?think>)[^<]*)*)<\/think>\n<answer>([\s\S]*?)<\/answer>$", re.DOTALL
)
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_BLANKS = frozenset(" \t\r\f\v")
_OPERATORS = {"+": 1, "-": 1, "*": 2, "/": 2}
_SYMBOLS = frozenset("+-*/()")
_INT_RE = re.compile(rf"-?[0-9]{{1,{MAX_LITERAL_DIGITS}}}")

T = TypeVar("T")
# An expression tree: an operand leaf, or (op, left, right); aha.task.countdown.Tree with int leaves.
Node = Any


# ----------------------------------------------------------------------------- helpers


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form (last message).

    Anything else (None, numbers, malformed messages) is the empty string, never an error.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion)
    if isinstance(completion, list | tuple) and completion:
        last = completion[-1]
        if isinstance(last, str):
            return last
        if isinstance(last, dict):
            return _content(last)
    return ""


def _content(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        parts = [
            p if isinstance(p, str) else p.get("text", "") if isinstance(p, dict) else ""
            for p in content
        ]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def extract_answer(completion: Any) -> str | None:
    """The seed's `re.search(r"<answer>(.*?)</answer>", ...)` group, stripped; None if absent.

    Done with str.find, line by line, so a flood of unclosed `<answer>` tags costs linear time
    (the regex would rescan the line after each one). Same result: `.` stops at a newline.
    """
    text = completion_text(completion)
    if len(text) > MAX_COMPLETION_CHARS:
        return None
    pos = 0
    while True:
        start = text.find(_ANSWER_OPEN, pos)
        if start < 0:
            return None
        start += len(_ANSWER_OPEN)
        line_end = text.find("\n", start)
        if line_end < 0:
            line_end = len(text)
        end = text.find(_ANSWER_CLOSE, start, line_end)
        if end >= 0:
            return text[start:end].strip()
        # No close on this line: no later `<answer>` on it has one either.
        pos = line_end + 1


def _as_int(x: Any) -> int | None:
    """An integer from an int, integral float or ASCII digit string; None otherwise."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, str):
        s = x.strip()
        return int(s) if _INT_RE.fullmatch(s) else None
    if isinstance(x, float):
        return int(x) if x.is_integer() else None
    try:  # numpy integers and friends
        return int(x.__index__())
    except Exception:
        return None


def _tokenize(expr: str) -> list[int | str] | None:
    """Integers and the characters + - * / ( ); None on anything else or an oversize literal."""
    tokens: list[int | str] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if "0" <= ch <= "9":
            j = i + 1
            while j < n and "0" <= expr[j] <= "9":
                j += 1
            if j - i > MAX_LITERAL_DIGITS or (ch == "0" and j - i > 1):
                return None  # too long, or a leading zero (Python's eval refuses "07" too)
            tokens.append(int(expr[i:j]))
            i = j
        elif ch in _OPERATORS or ch == "(" or ch == ")":
            tokens.append(ch)
            i += 1
        elif ch in _BLANKS:
            i += 1
        else:
            return None
    return tokens


def _rational(op: str, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    """`a op b` over (numerator, denominator > 0) pairs; None on division by zero."""
    (an, ad), (bn, bd) = a, b
    if op == "+":
        return an * bd + bn * ad, ad * bd
    if op == "-":
        return an * bd - bn * ad, ad * bd
    if op == "*":
        return an * bn, ad * bd
    if bn == 0:
        return None
    n, d = an * bd, ad * bn
    return (-n, -d) if d < 0 else (n, d)


def _node(op: str, a: Node, b: Node) -> Node:
    return op, a, b


def _reduce(
    values: list[T], ops: list[str], combine: Callable[[str, T, T], T | None], prec: int = 1
) -> bool:
    """Apply the operators on top of `ops` that bind at least as tightly as `prec`, down to the
    nearest "(" (prec 1: all of them); False as soon as `combine` gives None."""
    while ops and ops[-1] != "(" and _OPERATORS[ops[-1]] >= prec:
        b, a = values.pop(), values.pop()
        result = combine(ops.pop(), a, b)
        if result is None:
            return False
        values.append(result)
    return True


def _fold(
    tokens: Sequence[Any],
    leaf: Callable[[Any], T],
    combine: Callable[[str, T, T], T | None],
) -> T | None:
    """`combine` folded over infix tokens in precedence order, or None; the one grammar.

    Iterative operator-precedence parse (left-associative, * / over + -) that also checks the
    grammar: operands and binary operators alternate, parentheses balance within MAX_DEPTH.
    An operand is any token other than + - * / ( ); `combine` returning None (division by
    zero) ends the parse with None.
    """
    values: list[T] = []
    ops: list[str] = []
    want_operand, depth = True, 0
    for tok in tokens:
        symbol = tok if type(tok) is str and tok in _SYMBOLS else None
        if want_operand:
            if symbol is None:
                values.append(leaf(tok))
                want_operand = False
            elif symbol == "(":
                depth += 1
                if depth > MAX_DEPTH:
                    return None
                ops.append(symbol)
            else:
                return None  # an operator where an operand belongs: unary sign, **, //, ")"
        elif symbol == ")":
            if depth == 0 or not _reduce(values, ops, combine):
                return None
            ops.pop()
            depth -= 1
        elif symbol in _OPERATORS:
            if not _reduce(values, ops, combine, _OPERATORS[symbol]):
                return None
            ops.append(symbol)
            want_operand = True
        else:
            return None  # an operand or "(" right after an operand
    if want_operand or depth or not _reduce(values, ops, combine):
        return None
    return values[0]


def _evaluate(tokens: Sequence[int | str]) -> tuple[int, int] | None:
    """Exact value of infix tokens, as (numerator, denominator > 0), or None."""
    return _fold(tokens, lambda n: (n, 1), _rational)


def parse_tokens(tokens: Sequence[Any]) -> Node | None:
    """The expression tree of infix tokens, or None when they break the grammar of `_fold`.

    Operands stay as given (ints here, number strings for `aha.task.behaviours`); the tree is
    (op, left, right) with equal precedence associating left, as the text reads.
    """
    return _fold(tokens, lambda t: t, _node)


def _bounded_tokens(expr: Any) -> list[int | str] | None:
    """`expr`'s tokens within MAX_ANSWER_CHARS and MAX_LITERALS, else None."""
    if not isinstance(expr, str) or len(expr) > MAX_ANSWER_CHARS:
        return None
    tokens = _tokenize(expr)
    if tokens is None or sum(type(t) is int for t in tokens) > MAX_LITERALS:
        return None
    return tokens


def parse_expression(expr: str) -> Node | None:
    """Tree of an arithmetic expression (integers, + - * /, parentheses), or None; never raises.

    Bounded like `evaluate`: the same tokenizer, grammar and caps. A trailing '= N' is not
    part of the grammar: callers that accept one cut it off first.
    """
    try:
        tokens = _bounded_tokens(expr)
        return None if tokens is None else parse_tokens(tokens)
    except Exception:
        return None


def evaluate(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression (integers, + - * /, parentheses), or None."""
    try:
        tokens = _bounded_tokens(expr)
        value = None if tokens is None else _evaluate(tokens)
        return None if value is None else Fraction(*value)
    except Exception:
        return None


def _tokens_using(expr: str, nums: Iterable[Any]) -> list[int | str] | None:
    """`expr`'s tokens when it uses each of `nums` exactly once (a multiset), else None.

    The numbers are compared before any arithmetic, so evaluation only sees the task's own."""
    wanted = [_as_int(n) for n in nums]
    if not wanted or None in wanted:
        return None
    tokens = _tokenize(expr)
    if tokens is None or sorted(t for t in tokens if type(t) is int) != sorted(wanted):  # type: ignore[type-var]
        return None
    return tokens


def uses_numbers(answer: str | None, nums: Iterable[Any]) -> bool:
    """True when `answer` is made of arithmetic tokens only and uses each of `nums` exactly once,
    whatever its value: the half of the equation check that a sloppy answer ('13 + 1', written
    with an intermediate result) fails. A trailing '= N' is ignored here."""
    try:
        if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
            return False
        return _tokens_using(answer.partition("=")[0], nums) is not None
    except Exception:
        return False


def check_equation(answer: str | None, nums: Iterable[Any], target: Any) -> bool:
    """True when `answer` uses each of `nums` exactly once and equals `target` exactly.

    `answer` may end in `= N` with N the target. Numbers are compared as a multiset (as the
    seed did), before any arithmetic, so evaluation only ever sees the task's own numbers.
    """
    try:
        if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
            return False
        goal = _as_int(target)
        if goal is None:
            return False
        expr, eq, rhs = answer.partition("=")
        if eq:
            stated = rhs.strip(" \t\r\f\v")
            if not _INT_RE.fullmatch(stated) or (stated.lstrip("-")[:1] == "0" and stated != "0"):
                return False
            if int(stated) != goal:
                return False
        tokens = _tokens_using(expr, nums)
        if tokens is None:
            return False
        value = _evaluate(tokens)
        return value is not None and value[0] == goal * value[1]
    except Exception:
        return False


# ----------------------------------------------------------------------------- rewards


def format_ok(text: str) -> bool:
    """Whether `FORMAT_RE.search("<think>" + text)` matches, decided with str.find in O(n).

    The regex says: thinking without "<think>" or "</think>" in it, the first "</think>",
    then "\n<answer>", then anything, and the text ends in "</answer>" (or "</answer>\n",
    where `$` also matches). With many "<" the regex costs ~45 ns a character; this ~1.
    """
    close = text.find("</think>")
    if close < 0 or "<think>" in text[:close]:
        return False
    rest = close + len("</think>")
    if not text.startswith("\n<answer>", rest):
        return False
    body = text[rest + len("\n<answer>") :]
    return body.endswith("</answer>") or body.endswith("</answer>\n")


def _format_ok(completion: Any) -> float:
    try:
        text = completion_text(completion)
        if len(text) > MAX_COMPLETION_CHARS:
            return 0.0
        return 1.0 if format_ok(text) else 0.0
    except Exception:
        return 0.0


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when "<think>" + completion is `<think>...</think>\\n<answer>...</answer>`, else 0.0."""
    return [_format_ok(c) for c in completions]


def equation_reward(
    completions: Sequence[Any], target: Sequence[Any], nums: Sequence[Any], **kwargs: Any
) -> list[float]:
    """1.0 when the first <answer> uses every number once and equals the target, else 0.0."""
    if not len(completions) == len(target) == len(nums):
        raise ValueError(
            f"equation_reward: {len(completions)} completions but {len(target)} targets and "
            f"{len(nums)} number lists"
        )
    out = []
    for completion, goal, numbers in zip(completions, target, nums, strict=True):
        try:
            ok = check_equation(extract_answer(completion), numbers, goal)
        except Exception:
            ok = False
        out.append(1.0 if ok else 0.0)
    return out
