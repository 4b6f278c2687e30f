"""The Snakemake report in a real browser: headless Chromium, driven over the DevTools protocol.

The report is a single HTML file whose JavaScript app draws every view; a figure exists only
once the app has rendered it. So the test loads the page, shows each figure and table as a user
would (through the app's own `setView`/`showResultInfo`), and checks that nothing logged an
error, every SVG decoded, every caption rendered, and screenshots are not blank.

Chromium is Debian's `chromium` package (`make test` runs scripts/install-chromium.sh). Without
it this test FAILS with a message naming the script: CI must run it, not skip it.

The DevTools client speaks over `--remote-debugging-pipe` (file descriptors 3 and 4, JSON
messages separated by NUL), so it needs nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, TINY_TEST_CONFIG
from tests.unit.test_compute import write_benchmarks
from tests.unit.test_report import SWEEP, write_results

pytestmark = pytest.mark.browser

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)
WIDTH, HEIGHT = 1400, 1000
FRONT_PAGE_TITLE = "Aha moment on Countdown with GRPO"
# Phrases of each caption (workflow/report/*.rst), keyed by the result's file name.
CAPTIONS = {
    "success.svg": "Success rate vs training step.",
    "success_by_pattern.svg": "Success by operator pattern.",
    "format_length.svg": "Format, answers and length of completions vs step.",
    "behaviours.svg": "behaviours vs step",
    "success_by_size.svg": "Success by task size.",
    "pass_at_k.svg": "curves at every checkpoint.",  # docutils writes @ as &#64;
    "reflection.svg": "Reflection words vs step.",
    "audit.svg": "Reward-hacking audit.",
    "training.svg": "Training curves",
    "compute.svg": "what each stage of the workflow cost",
    "summary.html": "Every metric per run and checkpoint",
    "environment.html": "Software versions",
    "examples-": "Example completions of one run",
}


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail(
        "Chromium not found: the report's browser test needs Debian's `chromium` package. "
        "Install it with scripts/install-chromium.sh (as root; `make test` runs it).",
        pytrace=False,
    )


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, binary: str, user_data_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the protocol's fds 3 and 4
            # Move both ends above 4 first: a pipe end may itself be fd 3 or 4, and dup2 onto
            # itself would neither copy it nor clear its close-on-exec flag.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        user_data_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = user_data_dir.parent / "chromium.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={user_data_dir}",
                f"--window-size={WIDTH},{HEIGHT}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            preexec_fn=wire_fds,  # the test process is single-threaded
            close_fds=False,  # keep 3 and 4; every other fd of ours is close-on-exec
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium over the DevTools pipe")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe; log: {self.log_tail()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page when there is one) and wait for its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll a JS expression until it is truthy (the app renders asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        errors = "\n".join(self.errors()) or "none"
        raise AssertionError(f"never true in the page: {expression}\npage errors: {errors}")

    def open_page(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout=60)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(
                    f"uncaught: {details.get('exception', {}).get('description', details)}"
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
                args = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                found.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(
                    f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
                )
        return found

    def log_tail(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._stderr.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(chromium_binary(), tmp_path / "chromium-profile")
    try:
        yield devtools
    finally:
        devtools.close()


def distinct_colours(png: Path) -> tuple[int, float]:
    """(number of distinct colours, share of pixels that are not near-white) of a screenshot."""
    from PIL import Image

    with Image.open(io.BytesIO(png.read_bytes())) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 24) or []
        pixels = rgb.width * rgb.height
    inked = sum(n for n, c in colours if min(c) < 235)
    return len(colours), inked / pixels


def check_report(browser: DevTools, report: Path, shots: Path) -> dict[str, Any]:
    """Open the report, show every result, and check errors, captions, decoding and pixels."""
    shots.mkdir(parents=True, exist_ok=True)
    browser.open_page(report.resolve().as_uri())
    browser.wait_for(
        "document.querySelector('#app') && document.querySelector('#app').innerText.length > 0"
    )
    front = browser.wait_for(
        f"document.body.innerText.includes({json.dumps(FRONT_PAGE_TITLE)}) && document.body.innerText"
    )
    assert "Configuration" in front
    colours, inked = distinct_colours(browser.screenshot(shots / "front.png"))
    assert colours > 20 and inked > 0.01, f"front page looks blank ({colours} colours)"

    results: dict[str, Any] = browser.evaluate("results")
    names = {Path(path).name: path for path in results}
    seen: dict[str, Any] = {"names": sorted(names)}
    for name, path in sorted(names.items()):
        entry = results[path]
        caption = next(v for k, v in CAPTIONS.items() if name.startswith(k))
        assert caption in entry["caption"], f"{name}: caption lacks {caption!r}"
        browser.evaluate(f"app.showResultInfo({json.dumps(path)})")
        browser.wait_for(f"document.body.innerText.includes({json.dumps(caption)})")
        kind = "img" if entry["mime_type"] == "image/svg+xml" else "html"
        view = {"content": kind, "contentPath": entry["data_uri"], "resultPath": path}
        browser.evaluate(f"app.setView({json.dumps(view)})")
        if kind == "img":
            size = browser.wait_for(
                "(() => { const uri = results[" + json.dumps(path) + "].data_uri;"
                " const i = [...document.images].find(img => img.src === uri);"
                " return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]; })()"
            )
            assert size[0] > 300 and size[1] > 200, f"{name}: SVG decoded to {size}"
        else:
            browser.wait_for(
                "[...document.querySelectorAll('iframe')].some(f => f.src === results["
                + json.dumps(path)
                + "].data_uri)"
            )
            time.sleep(0.5)  # the iframe's document paints after insertion
        shot = browser.screenshot(shots / f"{name}.png")
        colours, inked = distinct_colours(shot)
        assert colours > 30 and inked > 0.02, f"{name}: screenshot looks blank ({colours} colours)"
        seen[name] = {"colours": colours, "inked": round(inked, 3)}
    time.sleep(0.3)
    dialogs = [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert not dialogs, f"a script in a result opened a dialog: {dialogs}"  # hostile text ran
    errors = browser.errors()
    assert not errors, "the report logged errors:\n" + "\n".join(errors)
    return seen


# ----------------------------------------------------------------------------- a small report


def build_report_workflow(workdir: Path) -> Path:
    """This repository's report rules in a scratch workflow over synthetic results; the report.

    Two runs (a Qwen Hub run, so the seed's points are drawn, and a tiny one), hostile HTML in
    the completions. Fast (no training) and independent of the rest of the DAG: the report
    rules take their inputs' paths from the rules that write them (train, sample, aggregate),
    which are included but not allowed to run, so the synthetic files stand in for their outputs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "workflow").symlink_to(ROOT / "workflow")
    (workdir / "Snakefile").write_text(
        'configfile: "config.yaml"\n'
        'report: "workflow/report/workflow.rst"\n\n\n'
        'include: "workflow/rules/common.smk"\n'
        'include: "workflow/rules/train.smk"\n'
        'include: "workflow/rules/evaluate.smk"\n'
        'include: "workflow/rules/report.smk"\n\n\n'
        "rule all:\n"
        "    input:\n"
        "        report_files(RUNS),\n"
        "    default_target: True\n"
    )
    cfg = yaml.safe_load(TINY_TEST_CONFIG.read_text())
    tiny = cfg["runs"].pop(next(iter(cfg["runs"])))
    cfg["runs"] = {
        "qwen-a": {"mode": "zero3", "model": SWEEP["qwen-a"]["model"], "grpo": dict(tiny["grpo"])},
        "tiny-b": tiny,
    }
    for spec in cfg["runs"].values():
        spec["seeds"] = [42]  # the seed write_results trains its synthetic runs with
    cfg["report"]["seed_reference"] = True
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_results(workdir / "results", SWEEP)
    # rule compute's inputs: every job's benchmark (checkpoints [2, 4] as in SWEEP)
    write_benchmarks(workdir, {run: {**SWEEP[run], "seeds": [42]} for run in cfg["runs"]})
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "-d", str(workdir)]
    cmd += ["--allowed-rules", "plots", "tables", "compute", "all"]
    for extra in ([], ["--report", "results/report.html"]):
        proc = subprocess.run(
            [*cmd, *extra], cwd=workdir, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-6000:]
    return workdir / "results" / "report.html"


def test_report_rules_render_in_browser(tmp_path: Path, browser: DevTools) -> None:
    report = build_report_workflow(tmp_path / "wf")
    seen = check_report(browser, report, tmp_path / "shots")
    expected = {
        "success.svg", "success_by_pattern.svg", "format_length.svg", "behaviours.svg",
        "success_by_size.svg", "pass_at_k.svg", "reflection.svg", "audit.svg",
        "training.svg", "compute.svg", "summary.html", "environment.html",
        "examples-qwen-a.html", "examples-tiny-b.html",
    }  # fmt: skip
    assert set(seen["names"]) == expected


@pytest.mark.slow
def test_tiny_dag_report_in_browser(tiny_dag: Path, tmp_path: Path, browser: DevTools) -> None:
    """The report `make demo` writes: the real tiny DAG's results."""
    seen = check_report(browser, tiny_dag / "results" / "report.html", tmp_path / "shots")
    for name in ("success.svg", "behaviours.svg", "training.svg", "summary.html"):
        assert name in seen["names"]


def test_examples_explorer_filters(tmp_path: Path, browser: DevTools) -> None:
    """An examples page on its own: its one script runs under the page's CSP (no error logged,
    no dialog from the hostile completions), draws model text as text, and every menu changes
    what is listed and the count."""
    from tests.unit.test_tables import embedded, explorer_pages

    page = explorer_pages(tmp_path, [42, 43, 44])
    items = embedded(page.read_text(encoding="utf-8"))
    browser.open_page(page.resolve().as_uri())
    count = "document.getElementById('count').textContent"
    assert browser.wait_for(count) == f"showing {len(items)} of {len(items)}"
    assert browser.evaluate(
        "document.getElementById('static').hidden && !document.getElementById('explorer').hidden"
    )
    assert browser.evaluate("document.querySelectorAll('img, #list script').length") == 0
    text = browser.evaluate("document.getElementById('list').innerText")
    assert "<script>alert('pwned')</script><img src=x onerror=alert(1)>" in text

    chosen = {"f-step": "all", "f-seed": "all", "f-success": "all", "f-behaviour": "any"}

    def wanted(item: dict[str, Any]) -> bool:
        return (
            chosen["f-step"] in {"all", str(item["step"])}
            and chosen["f-seed"] in {"all", item["seed"]}
            and chosen["f-success"] in {"all", "successful" if item["ok"] else "failed"}
            and (chosen["f-behaviour"] == "any" or item["flags"][chosen["f-behaviour"]])
        )

    steps = [
        ("f-success", "successful"), ("f-seed", "43"), ("f-step", "4"), ("f-success", "all"),
        ("f-behaviour", "truncated"), ("f-seed", "base"), ("f-step", "all"),
        ("f-behaviour", "no_think_end"), ("f-behaviour", "any"), ("f-seed", "all"),
    ]  # fmt: skip
    counts = []
    for menu, value in steps:
        chosen[menu] = value
        browser.evaluate(
            f"(() => {{ const m = document.getElementById({json.dumps(menu)});"
            f" m.value = {json.dumps(value)}; m.dispatchEvent(new Event('change')); }})()"
        )
        expected = sum(map(wanted, items))
        assert browser.evaluate(count) == f"showing {expected} of {len(items)}", (menu, value)
        assert browser.evaluate("document.querySelectorAll('#list .card').length") == expected
        counts.append(expected)
    assert len(set(counts)) >= 5 and 0 in counts and counts[-1] == len(items)
    colours, inked = distinct_colours(browser.screenshot(tmp_path / "explorer.png"))
    assert colours > 30 and inked > 0.02, f"the explorer looks blank ({colours} colours)"
    dialogs = [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert not dialogs, f"a completion's script ran: {dialogs}"
    errors = browser.errors()
    assert not errors, "the page logged errors:\n" + "\n".join(errors)
