"""Detectors of "aha" behaviour in a completion's thinking: verification, backtracking, search.

The seed only eyeballed these; here they are counted, so a checkpoint's curve can show the
behaviour rise or fall. Every phrase is in one table (`BEHAVIOURS`), documented in
docs/behaviours.md. The detectors read model output, which is hostile input: only the first
`MAX_SCAN_CHARS` characters of the thinking are scanned, every regex is a plain alternation
without nested quantifiers, and nothing is evaluated: an equation's left side is parsed by
the reward's grammar (`aha.task.rewards.parse_tokens`), never computed.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aha.task import metrics, rewards

MAX_SCAN_CHARS = 16_000  # ~4k tokens: longer than any configured completion
THINK_END = "</think>"


@dataclass(frozen=True)
class Behaviour:
    """One flag behaviour: present when any of its patterns matches the thinking."""

    name: str
    description: str
    patterns: tuple[re.Pattern[str], ...]

    def found(self, thinking: str) -> bool:
        return any(p.search(thinking) for p in self.patterns)


def _rx(*alternatives: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(a, re.IGNORECASE) for a in alternatives)


_NUM = r"-?\d+(?:\.\d+)?"

# The one table. A completion may show both behaviours: "12 + 7 = 19, not 27" is a check that
# failed and a candidate dropped; each flag is counted on its own.
BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b
    for b in (
        Behaviour(
            "verify",
            "checks a result against the goal: 'let me check', 'verify', 'check:', "
            "'= 27?', 'equals the target', 'that works', 'is correct', 'yes'",
            _rx(
                r"\blet(?:'s|\s+me|\s+us)\s+(?:double[- ]?)?(?:check|verify|confirm|make\s+sure)\b",
                r"\blet(?:'s|\s+me|\s+us)\s+see\s+if\b",
                r"\b(?:double[- ]?)?check(?:s|ed|ing)?\b",
                r"\bverif(?:y|ies|ied|ying|ication)\b",
                r"\bconfirm(?:s|ed|ing)?\b",
                rf"=\s*{_NUM}\s*\?",
                r"\b(?:equals?|matches)\s+(?:the|our)\s+target\b",
                r"\b(?:does|did|would|will)\s+(?:that|this|it)\s+(?:equal|give|make|work)\b",
                r"\b(?:that|this|it|which)\s+works\b",
                r"\b(?:is|that's|that\s+is|this\s+is|it's|it\s+is|which\s+is)\s+"
                r"(?:not\s+)?(?:in)?correct\b",
                r"\bcorrect\s*[!.]",
                r"\byes\b",
                r"[\u2713\u2714]",  # check marks
            ),
        ),
        Behaviour(
            "backtrack",
            "abandons a candidate: 'wait', 'try again', 'doesn't work', 'instead', "
            "'too big/small', 'not 27', 'no,', 'wrong', 'alternatively'",
            _rx(
                r"\bwait\b",
                r"\btry(?:ing)?\s+(?:again|another|something\s+else|a\s+different)\b",
                r"\b(?:does\s+not|doesn't|did\s+not|didn't|will\s+not|won't|cannot|can't)\s+"
                r"(?:work|equal|give|reach)\b",
                r"\binstead\b",
                r"\btoo\s+(?:big|small|large|high|low|much|little)\b",
                rf"\bnot\s+(?:{_NUM}\b|equal\b|right\b|quite\b|the\s+target\b)",
                r"\bno\s*[,.!;]",
                r"\b(?:wrong|incorrect)\b",
                r"\balternative(?:ly)?\b",
                r"\banother\s+(?:approach|way|combination|option|attempt|idea)\b",
                r"\bstart(?:ing)?\s+over\b",
            ),
        ),
    )
}

CANDIDATES_DESCRIPTION = (
    "distinct candidate equations in the thinking: chains of 'EXPR = NUMBER' computations, "
    "EXPR holding at least one operator; a computation that uses the previous one's result "
    "and none of the numbers its chain already used continues the same candidate"
)

# Tokens of arithmetic; anything else ("OTHER") ends an expression.
_TOKEN = re.compile(r"(?P<num>\d+(?:\.\d+)?)|(?P<op>[-+*/])|(?P<paren>[()])|(?P<eq>=)|(?P<ws>\s+)")
_OTHER = re.compile(r"[^\d\-+*/()=\s]+")
_LATEX = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("−", "-"))
_TIMES_X = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")
_ARITH = ("num", "op", "paren")
MAX_EXPR_TOKENS = 41  # longest left-hand side read back from an "=" (20 operands)


def thinking(text: str) -> str:
    """The completion's reasoning: text before the first `</think>`, or all of it; capped."""
    end = text.find(THINK_END, 0, MAX_SCAN_CHARS + len(THINK_END))
    return text[: end if end >= 0 else MAX_SCAN_CHARS][:MAX_SCAN_CHARS]


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'")
    for src, dst in _LATEX:
        text = text.replace(src, dst)
    return _TIMES_X.sub("*", text)


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) arithmetic tokens; every other run of characters is one ("other", run)."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos) or _OTHER.match(text, pos)
        if m is None:  # a lone character none of the two patterns takes; cannot happen
            out.append(("other", text[pos]))
            pos += 1
            continue
        kind = m.lastgroup or "other"
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _valid_expression(tokens: list[tuple[str, str]]) -> bool:
    """An expression by the reward's grammar (`aha.task.rewards.parse_tokens`), with an operator.

    Operands are number strings here (decimals too: a model writes '2.5 * 4 = 10'); nothing
    is evaluated.
    """
    return isinstance(rewards.parse_tokens([value for _, value in tokens]), tuple)


def _equations(text: str) -> list[tuple[str, list[str], str]]:
    """(left side without spaces, its numbers, result) for each 'EXPR = NUMBER' in order."""
    toks = _tokens(text)
    found: list[tuple[str, set[str], str]] = []
    for i, (kind, _) in enumerate(toks):
        if kind != "eq":
            continue
        j = i + 1
        sign = ""
        if j < len(toks) and toks[j] == ("op", "-"):
            sign, j = "-", j + 1
        if j >= len(toks) or toks[j][0] != "num":
            continue
        start = i
        while start > 0 and i - start < MAX_EXPR_TOKENS and toks[start - 1][0] in _ARITH:
            start -= 1
        lhs = toks[start:i]
        for s in range(len(lhs)):  # the longest well-formed suffix
            if _valid_expression(lhs[s:]):
                expr = lhs[s:]
                numbers = [v for k, v in expr if k == "num"]
                found.append(("".join(v for _, v in expr), numbers, sign + toks[j][1]))
                break
    return found


def count_candidates(text: str) -> int:
    """Distinct candidate equations (see CANDIDATES_DESCRIPTION) in a completion's thinking."""
    return _count_candidates(_normalise(thinking(text)))


def _count_candidates(think: str) -> int:
    chains: list[tuple[str, ...]] = []
    consumed: set[str] = set()  # operands the current chain used, besides its own results
    previous_result: str | None = None
    for lhs, numbers, result in _equations(think):
        rest = list(numbers)
        if previous_result in rest:
            rest.remove(previous_result)
        # A step continues the chain when it uses the last result and no number the chain
        # already used: "55 + 36 = 91, 91 - 19 = 72" is one attempt, but "1 * 19 - 18 = 1;
        # 1 - 18 * 19 = -341" is two, although its 1 equals the last result.
        if chains and len(rest) < len(numbers) and consumed.isdisjoint(rest):
            chains[-1] = (*chains[-1], lhs)
            consumed.update(rest)
        else:
            chains.append((lhs,))
            consumed = set(numbers)
        previous_result = result
    return len(set(chains))


def detect(text: str) -> dict[str, Any]:
    """Behaviours of one completion (the text after the prompt's '<think>')."""
    think = _normalise(thinking(text))
    return {
        "verify": BEHAVIOURS["verify"].found(think),
        "backtrack": BEHAVIOURS["backtrack"].found(think),
        "candidates": _count_candidates(think),
    }


def summarize(texts: Iterable[str]) -> dict[str, float | None]:
    """Shares of completions that verify / backtrack, and mean candidates; None when empty."""
    found = [detect(t) for t in texts]
    if not found:
        return {"verify_share": None, "backtrack_share": None, "candidates_mean": None}
    return {
        "verify_share": sum(f["verify"] for f in found) / len(found),
        "backtrack_share": sum(f["backtrack"] for f in found) / len(found),
        "candidates_mean": statistics.fmean(f["candidates"] for f in found),
    }


# DeepSeek-R1's reflection words, counted as the R1-Zero replications do.
REFLECTION_WORDS: tuple[str, ...] = (
    "wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check",
)  # fmt: skip
_REFLECTION_RE = re.compile(r"\b(?:" + "|".join(REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_words(text: str) -> dict[str, int]:
    """Occurrences of each of REFLECTION_WORDS in the completion's thinking.

    The thinking is `thinking(text)`: before the first `</think>` (the prompt opens the tag),
    or the whole completion when it never closes it, capped at MAX_SCAN_CHARS, so the answer's
    words are not counted. Whole words, any case, exact forms only: 'checked', 'errors' and
    'butter' do not count, so the tally stays comparable with the published word lists; a
    hyphen or apostrophe ends a word ('double-check' counts 'check').
    """
    counts = dict.fromkeys(REFLECTION_WORDS, 0)
    for m in _REFLECTION_RE.finditer(thinking(text)):
        counts[m.group().lower()] += 1
    return counts


def reflection_summary(samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Reflection words per completion, and success with and without any of them.

    R1-Zero's "aha" is reflection that pays off: a rise in words_per_completion alone may be
    filler, so success is split by whether a completion reflects (None for an empty side).
    per_word is each word's mean count per completion; every value is None with no samples.
    """
    rows = [(reflection_words(s["text"]), metrics.is_success(s)) for s in samples]
    with_any = [ok for counts, ok in rows if any(counts.values())]
    without = [ok for counts, ok in rows if not any(counts.values())]

    def rate(flags: list[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    n = len(rows)
    return {
        "words_per_completion": sum(sum(c.values()) for c, _ in rows) / n if n else None,
        "share_with_any": len(with_any) / n if n else None,
        "success_with": rate(with_any),
        "success_without": rate(without),
        "per_word": {w: sum(c[w] for c, _ in rows) / n if n else None for w in REFLECTION_WORDS},
    }
