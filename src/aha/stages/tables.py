"""Stage `tables`: the report's HTML pages (summary table, example completions, environment).

Every piece of text is HTML-escaped. The summary and environment pages carry a Content
Security Policy that forbids scripts; each run's examples page (`aha.report.explorer`) runs exactly
one inline script, its filters, allowed by its sha256, and nothing else. Missing inputs are
said on the page; where each page goes is the rule's business (report.smk).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aha.cli import failing_as, parser, setup_logging
from aha.report.explorer import examples_page
from aha.report.inputs import (
    RunInfo,
    add_input_arguments,
    missing_scores,
    paths_by_run,
    read_summary,
    run_order,
    samples_by_run,
)
from aha.report.pages import esc, page, write

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Distributions whose versions decide the numbers (read from metadata: nothing is imported).
VERSIONED = (
    "torch", "transformers", "trl", "datasets", "accelerate", "peft", "tokenizers",
    "vllm", "deepspeed", "bitsandbytes", "snakemake", "pandas", "seaborn", "matplotlib",
    "aha-countdown",
)  # fmt: skip


def _pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{100 * float(value):.1f}%"


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{float(value):.{digits}f}"


def seed_cell(row: Any) -> str:
    """The seed column: the replicate's seed, or the shared step-0 baseline's label."""
    seed = row.get("seed")
    return "base (every seed)" if seed is None or seed != seed else str(int(seed))


def _values(r: Any) -> tuple[str, ...]:
    """The metric cells of one scored summary row, as the table writes them."""
    k = "–" if r.get("k") != r.get("k") else int(r["k"])
    return (
        f"{int(r['n_prompts'])} × {k}",
        f"{_pct(r['success_rate'])} [{_pct(r['success_lo'])}, {_pct(r['success_hi'])}]",
        _pct(r["pass_at_1"]),
        f"{_pct(r['pass_at_k'])} (k={k})",
        _pct(r["format_rate"]),
        _pct(r.get("numbers_ok_share")),
        f"{_num(r['tokens_mean'])} / {_num(r['tokens_median'], 0)}",
        _pct(r["truncated_share"]),
        _pct(r["verify_share"]),
        _pct(r["backtrack_share"]),
        _num(r["candidates_mean"], 2),
    )


def summary_table(summary: pd.DataFrame, runs: Mapping[str, RunInfo]) -> str:
    """HTML page: one row per (run, seed, step), and a marked row per configured step not
    scored. Step 0 is the untrained model, sampled once per run: every seed's step 0."""
    missing = missing_scores(summary, runs)
    head = (
        "run", "seed", "step", "prompts × k", "success [95% CI]", "pass@1", "pass@k", "format",
        "numbers ok", "tokens mean / median", "truncated", "verify", "backtrack", "candidates",
    )  # fmt: skip
    rows = []
    for run in run_order(summary, runs):
        part = summary[summary["run"] == run]
        scored = [(int(r["step"]), seed_cell(r), r) for _, r in part.iterrows()]
        lost = [
            (step, "–" if seed is None else str(seed), None) for step, seed in missing.get(run, [])
        ]
        for step, seed, r in sorted([*scored, *lost], key=lambda t: (t[0], t[1])):
            if r is None:
                cells = f'<td colspan="{len(head) - 3}">missing: not scored yet, or failed</td>'
                rows.append(
                    f'<tr class="missing"><td>{esc(run)}</td><td>{seed}</td><td>{step}</td>'
                    f"{cells}</tr>"
                )
                continue
            cells = "".join(f'<td class="num">{esc(v)}</td>' for v in _values(r))
            rows.append(f"<tr><td>{esc(run)}</td><td>{esc(seed)}</td><td>{step}</td>{cells}</tr>")
    if not rows:
        body = '<p class="warn">No scored checkpoint yet: results/summary.tsv is empty.</p>'
        return page("Summary per run and checkpoint", body)
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    intro = (
        '<p class="note">Success: the equation uses each number once and equals the target '
        "(Wilson 95% interval over completions). pass@k: unbiased estimate over prompts. One row "
        "per training seed; step 0, the untrained model, is sampled once per run and is every "
        "seed's step 0. Means over seeds: results/summary_across_seeds.tsv.</p>"
    )
    table = f"<table><thead><tr>{header}</tr></thead><tbody>\n" + "\n".join(rows)
    return page("Summary per run and checkpoint", intro + table + "\n</tbody></table>")


def git_revision(workflow_dir: Path | None) -> str:
    """`git describe` of the workflow checkout, '+ uncommitted changes' when dirty; '' if none."""
    import subprocess

    if workflow_dir is None:
        return ""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(workflow_dir),
                "describe",
                "--always",
                "--dirty=+ uncommitted changes",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def environment_page(workflow_dir: Path | None) -> str:
    """Versions of Python and the packages that decide the numbers, and the workflow revision."""
    import platform
    from importlib import metadata

    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in VERSIONED:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    revision = git_revision(workflow_dir)
    rows.append(("workflow revision", revision or "unknown (not a git checkout)"))
    body = (
        '<p class="note">The environment that ran the report rules. Every rule runs the same '
        "pinned environment (pyproject.toml for CPU, environment.yml for GPUs); GPU-only "
        "packages show as not installed on CPU.</p><table><tbody>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        + "</tbody></table>"
    )
    return page("Software versions", body)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, __doc__)
    add_input_arguments(p)
    p.add_argument(
        "--samples",
        nargs=4,
        action="append",
        metavar=("RUN", "SEED", "STEP", "PATH"),
        help="a checkpoint's samples file, read when present; once per run, seed and step "
        "(SEED `base` for step 0, sampled once per run)",
    )
    p.add_argument(
        "--workflow-dir", type=Path, help="workflow checkout whose git revision is reported"
    )
    outputs = p.add_argument_group("outputs (HTML pages)")
    outputs.add_argument(
        "--summary-page", type=Path, required=True, metavar="HTML", help="metrics per checkpoint"
    )
    outputs.add_argument(
        "--environment-page",
        type=Path,
        required=True,
        metavar="HTML",
        help="software versions, git revision",
    )
    outputs.add_argument(
        "--examples-page",
        nargs=2,
        action="append",
        metavar=("RUN", "PATH"),
        help="a run's example completions; once per run",
    )
    return p


def cli(argv: list[str], prog: str) -> None:
    p = _parser(prog)
    args = p.parse_args(argv)
    setup_logging()
    runs, options = args.runs, args.report
    try:
        samples = samples_by_run("--samples", args.samples, runs)
        examples = paths_by_run("--examples-page", args.examples_page, runs)
    except ValueError as err:
        p.error(str(err))
    summary = read_summary(args.summary)
    with failing_as(prog, OSError):  # an output that cannot be written: one line
        write(args.summary_page, summary_table(summary, runs))
        write(args.environment_page, environment_page(args.workflow_dir))
        for run, path in examples.items():
            text = examples_page(
                runs[run],
                samples.get(run, {}),
                options.examples_per_checkpoint,
                options.explorer_per_checkpoint,
            )
            write(path, text)
    log.info("wrote the summary and environment pages and %d examples pages", len(examples))
