"""The examples page of one run: completions of every seed and step, filtered in the browser.

A bounded, seeded random selection per (seed, step) is embedded as JSON and drawn by one inline
script that filters by step, seed, success and behaviour. Completions are model output, i.e.
hostile input, so the JSON escapes `<`, `>` and `&` (a completion cannot close its `<script>`),
the script writes model text only through textContent, and the page's Content Security Policy
lets exactly that script run (by its sha256) and nothing else: no other script, no network.
Without JavaScript the page still shows the first seed's examples as static, escaped tables.

An example's answer is the one the equation reward scored (`rewards.extract_answer`) and its
success the one every number counts (`metrics.is_success`), so the page never shows a
different answer than the one judged. Missing inputs are said on the page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.report.inputs import RunInfo, SamplesKey, read_samples, seed_label
from aha.report.pages import esc, page
from aha.task import behaviours, metrics, rewards

MAX_TEXT_CHARS = 6000  # per completion shown; longer text is cut with a note
DATA_ID = "examples-data"
# Behaviour filter: the flag's key in the JSON -> its label in the menu.
BEHAVIOUR_FILTERS = {
    "verify": "verifies",
    "backtrack": "backtracks",
    "reflects": "reflects (R1 reflection words)",
    "truncated": "truncated",
    "no_think_end": "no </think>",
}

EXPLORER_CSS = """
.card { border: 1px solid #d0d7de; padding: 6px 8px; margin: 8px 0; }
.card.ok { border-top: 4px solid #1a7f37; } .card.fail { border-top: 4px solid #cf222e; }
.controls { position: sticky; top: 0; background: #fff; padding: 6px 0;
            border-bottom: 1px solid #d0d7de; }
.controls label { margin-right: 1.2em; } .count { font-weight: 600; }
"""

# The one script the page may run (its sha256 is in the CSP): it reads the JSON, fills the
# list with createElement/textContent only, and re-filters on every change of a menu.
SCRIPT = """
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("examples-data").textContent);
  const byId = (id) => document.getElementById(id);
  const menus = ["f-step", "f-seed", "f-success", "f-behaviour"].map(byId);
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function matches(item) {
    const [step, seed, success, behaviour] = menus.map((m) => m.value);
    if (step !== "all" && String(item.step) !== step) return false;
    if (seed !== "all" && item.seed !== seed) return false;
    if (success !== "all" && item.ok !== (success === "successful")) return false;
    return behaviour === "any" || item.flags[behaviour] === true;
  }
  function card(item) {
    const box = el("div", "card " + (item.ok ? "ok" : "fail"));
    const where = item.step === 0 ? "step 0 (base model)" : "seed " + item.seed + " · step " + item.step;
    box.appendChild(el("div", null, (item.ok ? "successful" : "failed") + " · " + where));
    box.appendChild(el("div", null, item.task));
    const think = el("div");
    think.appendChild(el("b", null, "<think>"));
    if (item.after === null) think.appendChild(el("span", "warn", " (no <\\/think>)"));
    box.appendChild(think);
    box.appendChild(el("pre", null, item.think));
    if (item.after !== null) {
      const label = el("div");
      label.appendChild(el("b", null, "after <\\/think>"));
      box.appendChild(label);
      box.appendChild(el("pre", null, item.after));
    }
    const answer = el("div", null, "answer: ");
    answer.appendChild(item.answer === null ? el("span", "warn", item.no_answer) : el("span", "answer", item.answer));
    box.appendChild(answer);
    box.appendChild(el("div", null, item.rewards));
    const tags = el("div");
    for (const tag of item.tags) tags.appendChild(el("span", "tag", tag));
    box.appendChild(tags);
    return box;
  }
  function render() {
    const list = byId("list");
    while (list.firstChild) list.removeChild(list.firstChild);
    let shown = 0;
    for (const item of data.items) {
      if (!matches(item)) continue;
      list.appendChild(card(item));
      shown += 1;
    }
    byId("count").textContent = "showing " + shown + " of " + data.items.length;
  }
  for (const menu of menus) menu.addEventListener("change", render);
  byId("static").hidden = true;
  byId("explorer").hidden = false;
  render();
})();
"""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
# Styles inline, the one script above, nothing else: no other script, image, font or request.
CSP = f"default-src 'none'; style-src 'unsafe-inline'; script-src '{SCRIPT_HASH}'"


@dataclass
class Checkpoint:
    """One (seed, step) samples file as the page shows it: counts, drawn examples, problems."""

    seed: int | None  # None: the shared step 0, or a step no seed's file was given for
    step: int
    path: Path | None
    exists: bool = False
    total: int = 0
    successes: int = 0
    skipped: int = 0
    good: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The seed as the menu and tables write it: `base` for step 0."""
        return seed_label(None) if self.step == 0 else "–" if self.seed is None else str(self.seed)

    def notes(self) -> list[str]:
        """What is wrong with this file, in plain text (escaped where shown)."""
        if self.path is None:
            return ["missing: no samples file given for this step"]
        if not self.exists:
            return [f"missing: no samples file {self.path} (not run yet, or failed)"]
        notes = []
        if self.skipped:
            notes.append(
                f"{self.skipped} unreadable line(s) skipped (not JSON, or no text and rewards)"
            )
        if not self.total:
            notes.append(f"no completions in {self.path} (empty samples file)")
        return notes


def pick_examples(
    samples: Sequence[dict[str, Any]], n: int, seed: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Up to `n` successes and `n` failures, from distinct prompts where possible.

    Random but reproducible (seeded by run, seed and step), so the page does not cherry-pick;
    a smaller `n` draws a prefix of a larger one's picks.
    """
    rng = random.Random(seed)
    picked = []
    for wanted in (True, False):
        pool = [s for s in samples if metrics.is_success(s) == wanted]
        rng.shuffle(pool)
        seen: set[Any] = set()
        first, rest = [], []
        for s in pool:
            (rest if s.get("prompt_id") in seen else first).append(s)
            seen.add(s.get("prompt_id"))
        picked.append((first + rest)[:n])
    return picked[0], picked[1]


def read_checkpoint(run: str, seed: int | None, step: int, path: Path | None, n: int) -> Checkpoint:
    """Counts and up to `n` drawn successes and failures of one file; the rest is not kept."""
    cp = Checkpoint(seed, step, path)
    if path is None or not path.exists():
        return cp
    samples, cp.skipped = read_samples(path)
    cp.exists, cp.total = True, len(samples)
    cp.successes = sum(metrics.is_success(s) for s in samples)
    cp.good, cp.bad = pick_examples(samples, n, f"{run}/{cp.label}/{step}")
    return cp


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n… ({len(text) - MAX_TEXT_CHARS} more characters)"


def no_answer_reason(text: str) -> str:
    """Why the equation reward read no answer from `text`."""
    if len(text) > rewards.MAX_COMPLETION_CHARS:
        return (
            f"none read: over {rewards.MAX_COMPLETION_CHARS} characters, the reward scores 0 unread"
        )
    return "no <answer>…</answer> on one line"


def example(sample: Mapping[str, Any], label: str, step: int) -> dict[str, Any]:
    """One completion as the explorer draws it: display strings (every field of the file is
    formatted here, so no value of it reaches the script but as text) and filter flags."""
    text = str(sample.get("text", ""))
    end = text.find(behaviours.THINK_END)
    found = behaviours.detect(text)
    words = {w: c for w, c in behaviours.reflection_words(text).items() if c}
    answer = rewards.extract_answer(text)
    flags = {
        "verify": bool(found["verify"]),
        "backtrack": bool(found["backtrack"]),
        "reflects": bool(words),
        "truncated": bool(sample.get("truncated")),
        "no_think_end": end < 0,
    }
    tags = [name for name in ("verify", "backtrack") if flags[name]]
    if words:
        tags.append("reflects: " + ", ".join(f"{w} ×{c}" for w, c in words.items()))
    tags.append(f"{found['candidates']} candidates")
    truncated = " · truncated" if flags["truncated"] else ""
    return {
        "seed": label,
        "step": step,
        "ok": metrics.is_success(sample),
        "task": f"{_task(sample)} · prompt {sample.get('prompt_id')} / sample "
        f"{sample.get('sample_index')}",
        "think": _clip(text if end < 0 else text[:end]),
        "after": None if end < 0 else _clip(text[end + len(behaviours.THINK_END) :]),
        "answer": answer,
        "no_answer": None if answer is not None else no_answer_reason(text),
        "rewards": f"format reward {sample.get('format_reward')} · equation reward "
        f"{sample.get('equation_reward')} · {sample.get('num_tokens')} tokens{truncated}",
        "flags": flags,
        "tags": tags,
    }


def _task(sample: Mapping[str, Any]) -> str:
    nums = sample.get("nums")
    nums = ", ".join(map(str, nums)) if isinstance(nums, list) else nums
    return f"numbers [{nums}] → target {sample.get('target')} · pattern {sample.get('pattern')}"


def script_json(data: Any) -> str:
    """JSON for a `<script type="application/json">`: `<`, `>` and `&` as \\u escapes, so no
    string in it can end the element (`</script>`) or open a comment; JSON.parse reads it back."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# ----------------------------------------------------------------------------- static HTML


def answer_html(text: str) -> str:
    """The answer the equation reward scored, or why it scored none."""
    answer = rewards.extract_answer(text)
    if answer is not None:
        return f'<span class="answer">{esc(answer)}</span>'
    return f'<span class="warn">{esc(no_answer_reason(text))}</span>'


def completion_cell(sample: Mapping[str, Any] | None, kind: str, row: int, shown: int) -> str:
    """One completion: task, thinking, answer, rewards and detected behaviours; all escaped.

    An empty cell (row `row`, `shown` examples of this kind) says why it is empty, once.
    """
    if sample is None:
        if row == 0:
            return f'<td class="note">no {kind} completion at this step</td>'
        if row == shown:
            return f'<td class="note">no other {kind} completion at this step</td>'
        return "<td></td>"
    item = example(sample, "", 0)
    tags = "".join(f'<span class="tag">{esc(t)}</span>' for t in item["tags"])
    closing = ' <span class="warn">(no &lt;/think&gt;)</span>' if item["after"] is None else ""
    after_html = (
        ""
        if item["after"] is None
        else f"<div><b>after &lt;/think&gt;</b></div><pre>{esc(item['after'])}</pre>"
    )
    return (
        f'<td class="{"ok" if kind == "successful" else "fail"}">'
        f"<div>{esc(item['task'])}</div>"
        f"<div><b>&lt;think&gt;</b>{closing}</div><pre>{esc(item['think'])}</pre>"
        f"{after_html}"
        f"<div>answer: {answer_html(str(sample.get('text', '')))}</div>"
        f"<div>{esc(item['rewards'])}</div>"
        f"<div>{tags}</div></td>"
    )


def static_section(run: str, cp: Checkpoint, n: int) -> str:
    """One checkpoint without JavaScript: its notes, then `n` pairs side by side."""
    where = " (base model)" if cp.step == 0 else "" if cp.seed is None else f" · seed {cp.seed}"
    title = f"<h2>{esc(run)} · step {cp.step}{esc(where)}</h2>"
    notes = "".join(f'<p class="warn">{esc(note)}</p>' for note in cp.notes())
    if not cp.total:
        return title + notes
    good, bad = cp.good[:n], cp.bad[:n]
    stats = (
        f'<p class="note">{cp.successes} of {cp.total} completions successful; '
        f"showing up to {n} of each, drawn at random (fixed seed).</p>"
    )
    rows = [
        "<tr>"
        + completion_cell(good[i] if i < len(good) else None, "successful", i, len(good))
        + completion_cell(bad[i] if i < len(bad) else None, "failed", i, len(bad))
        + "</tr>"
        for i in range(max(len(good), len(bad), 1))
    ]
    table = (
        '<table class="examples"><thead><tr><th>successful</th><th>failed</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    return title + notes + stats + table


def inputs_table(checkpoints: Sequence[Checkpoint], per_checkpoint: int) -> str:
    """What each (seed, step) file holds and how much of it the explorer carries."""
    rows = []
    for cp in checkpoints:
        embedded = min(len(cp.good), per_checkpoint) + min(len(cp.bad), per_checkpoint)
        cells = (cp.label, cp.step, cp.total, cp.successes, embedded, "; ".join(cp.notes()))
        cls = ' class="missing"' if not cp.total else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    head = ("seed", "step", "completions", "successful", "in the explorer", "note")
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _menu(menu_id: str, name: str, options: Sequence[tuple[str, str]]) -> str:
    choices = "".join(f'<option value="{esc(v)}">{esc(label)}</option>' for v, label in options)
    return f'<label>{esc(name)} <select id="{menu_id}">{choices}</select></label>'


def explorer_html(run: RunInfo, seeds: Sequence[str], per_checkpoint: int) -> str:
    """The menus, the count and the (empty) list the script fills; hidden until it runs."""
    steps = [(str(s), f"{s} (base model)" if s == 0 else str(s)) for s in run.steps]
    menus = (
        _menu("f-step", "step", [("all", "all"), *steps]),
        _menu("f-seed", "seed", [("all", "all"), *((s, s) for s in seeds)]),
        _menu("f-success", "success", [(v, v) for v in ("all", "successful", "failed")]),
        _menu("f-behaviour", "behaviour", [("any", "any"), *BEHAVIOUR_FILTERS.items()]),
    )
    return (
        '<div id="explorer" hidden><h2>Explorer</h2>'
        f'<p class="note">Up to {per_checkpoint} successful and {per_checkpoint} failed '
        "completions per seed and step, drawn at random (fixed seed), distinct prompts first. "
        "Step 0, the untrained model, is sampled once per run: its seed is <i>base</i>. "
        "Behaviours: aha.task.behaviours (verify, backtrack; reflects: any of DeepSeek-R1's "
        "reflection words in the thinking).</p>"
        f'<div class="controls">{"".join(menus)}<span id="count" class="count"></span></div>'
        '<div id="list"></div></div>'
    )


def examples_page(
    run: RunInfo, samples: Mapping[SamplesKey, Path], n: int, per_checkpoint: int
) -> str:
    """One run's page from its samples files (`samples`: (seed, step) -> path, seed None for
    the shared step 0): `per_checkpoint` successes and failures per (seed, step) in the
    explorer, `n` of each from the first seed in the static tables."""
    seeds = list(dict.fromkeys(seed for seed, _ in samples if seed is not None))
    draw = max(n, per_checkpoint)
    checkpoints: dict[SamplesKey, Checkpoint] = {}
    for step in run.steps:
        for seed in [None] if step == 0 or not seeds else seeds:
            path = samples.get((seed, step))
            checkpoints[(seed, step)] = read_checkpoint(run.name, seed, step, path, draw)
    items = [
        example(s, cp.label, cp.step)
        for cp in checkpoints.values()
        for s in [*cp.good[:per_checkpoint], *cp.bad[:per_checkpoint]]
    ]
    first = seeds[0] if seeds else None
    static = [
        static_section(run.name, checkpoints[(None if step == 0 else first, step)], n)
        for step in run.steps
    ]
    labels = [seed_label(None), *map(str, seeds)] if 0 in run.steps else list(map(str, seeds))
    first_label = "the first seed's" if first is None else f"seed {first}'s"
    body = (
        f'<p class="note">Model: {esc(run.model_label)}. The prompt ends with the prefilled '
        "&lt;think&gt;; the completion continues inside it. Model output is shown verbatim "
        "(escaped). The answer is the one the equation reward scored.</p>"
        '<noscript><p class="warn">JavaScript is off: the filters need it. Shown instead: the '
        "first seed's examples as static tables.</p></noscript>"
        "<h2>Samples files</h2>"
        + inputs_table(list(checkpoints.values()), per_checkpoint)
        + explorer_html(run, labels, per_checkpoint)
        + f'<div id="static"><p class="note">Without JavaScript: {esc(first_label)} examples, '
        f"up to {n} of each kind per step.</p>"
        + "\n".join(static)
        + "</div>"
        + f'<script type="application/json" id="{DATA_ID}">{script_json({"items": items})}'
        + f"</script><script>{SCRIPT}</script>"
    )
    return page(f"Example completions: {run.name}", body, csp=CSP, css=EXPLORER_CSS)
