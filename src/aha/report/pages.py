"""The report's HTML pages, their common part: one style sheet, one security policy, escaping.

Every piece of text on a page goes through `esc`. A page forbids scripts unless it passes a
policy of its own (`page(..., csp=...)`, a constant of its module, never data): the summary and
environment pages (`aha.stages.tables`) run none, an examples page (`aha.report.explorer`) runs
exactly its one inline script.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em;
       color: #1f2328; font-size: 14px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.missing td { color: #9a6700; background: #fff8c5; }
.note { color: #57606a; } .warn { color: #9a6700; }
table.examples { table-layout: fixed; width: 100%; }
table.examples td { width: 50%; }
.ok { border-top: 4px solid #1a7f37; } .fail { border-top: 4px solid #cf222e; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: 6px;
      margin: 4px 0; font-size: 12.5px; max-height: 28em; overflow: auto; }
.tag { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 8px;
       background: #ddf4ff; font-size: 12px; }
.answer { font-family: ui-monospace, monospace; background: #fff8c5; padding: 1px 4px; }
"""
# No scripts, no remote content: even a completion that escaped escaping could not run.
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, csp: str = CSP, css: str = "") -> str:
    """A whole page; `csp` (a constant of ours, never data) is its only security policy."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{esc(title)}</title><style>{CSS}{css}</style></head>\n"
        f"<body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def write(path: Path, text: str) -> None:
    """A page to its file (the rule's output path), its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
