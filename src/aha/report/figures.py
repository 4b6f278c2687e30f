"""The report's files in one table: every figure and page, where `snakemake --report` files it,
and what each figure of `plots` draws from.

workflow/rules/report.smk declares and flags its outputs from here (`Entry.flags` makes every
`report()` of them), and `aha.stages.plots` takes its output options and the long tables it reads
from here, so a figure is added, renamed or moved in one place. File names only: the folders
are the rules' (Python composes no workflow path). The standard library only, so building the DAG
imports no plotting code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

# The report's categories, in the order the report lists them.
SUCCESS = "1. Success"
COMPLETIONS = "2. Completions"
TRAINING = "3. Training"
TABLES = "4. Tables"
COMPUTE = "5. Compute"

# What a figure of `plots` draws from (`Entry.reads`): results/summary.tsv, the replicates'
# training logs, or one of `aggregate`'s long tables, each named as rule aggregate's output and
# passed to `plots` with the option given here.
SUMMARY = "summary"
TRAIN_LOGS = "train_logs"
TABLE_OPTIONS: dict[str, str] = {
    "by_pattern": "--by-pattern",
    "by_size": "--by-size",
    "pass_at_k": "--pass-at-k-table",
    "audit": "--audit-table",
    "reflection_words": "--reflection-table",
}


@dataclass(frozen=True)
class Entry:
    """One file of the report: its stage's output option, its file, how the report shows it."""

    name: str  # the stage's output option (--NAME) and the rule's output name
    file: str  # its file name in the rule's folder; `{run}` in it: one file per run
    category: str
    subcategory: str
    label: str  # what it shows, as the report's label and the option's help
    kind: str = "figure"  # the label's key in the report: figure or table
    caption: str = ""  # workflow/report/CAPTION.rst; default: the file's stem
    reads: tuple[str, ...] = ()  # a figure of `plots`: SUMMARY, TRAIN_LOGS, TABLE_OPTIONS keys

    def flags(self, captions: str, **labels: str) -> dict[str, Any]:
        """The keyword arguments of its `report()` flag; `captions` is the caption files'
        pattern (`{}` for the caption's name), `labels` replace its own (a page per run)."""
        return {
            "caption": captions.format(self.caption or PurePath(self.file).stem),
            "category": self.category,
            "subcategory": self.subcategory,
            "labels": labels or {self.kind: self.label},
        }


# The figures of `plots`, in the report's order (one output option and one file each).
FIGURES: tuple[Entry, ...] = (
    Entry(
        "success", "success.svg", SUCCESS, "Figures", "success rate and pass@k vs step",
        reads=(SUMMARY,),
    ),
    Entry(
        "patterns", "success_by_pattern.svg", SUCCESS, "Figures", "success by operator pattern",
        reads=("by_pattern",),
    ),
    Entry(
        "sizes", "success_by_size.svg", SUCCESS, "Figures", "success by task size",
        reads=("by_size",),
    ),
    Entry(
        "passk", "pass_at_k.svg", SUCCESS, "Figures", "pass@k curves, k = 1..K",
        reads=("pass_at_k",),
    ),
    Entry(
        "quality", "format_length.svg", COMPLETIONS, "Figures",
        "format, length, truncation vs step", reads=(SUMMARY,),
    ),
    Entry(
        "behaviours", "behaviours.svg", COMPLETIONS, "Figures", "aha behaviours vs step",
        reads=(SUMMARY,),
    ),
    Entry(
        "reflection", "reflection.svg", COMPLETIONS, "Figures", "reflection words vs step",
        reads=(SUMMARY, "reflection_words"),
    ),
    Entry(
        "audit", "audit.svg", COMPLETIONS, "Figures", "reward-hacking audit vs step",
        reads=("audit",),
    ),
    Entry(
        "training", "training.svg", TRAINING, "Figures", "training curves (TRL log)",
        reads=(TRAIN_LOGS,),
    ),
)  # fmt: skip
# The figure of `compute` (its --figure), beside its table.
COMPUTE_FIGURE = Entry(
    "figure", "compute.svg", COMPUTE, "Figures", "hours per stage, s/step, GPU memory"
)
# The pages of `tables`: --summary-page, --environment-page, and --examples-page RUN PATH once
# per run (labelled with its run: `flags(captions, run=RUN)`).
SUMMARY_PAGE = Entry(
    "summary", "summary.html", TABLES, "Summary", "metrics per run and checkpoint",
    kind="table", caption="summary_table",
)  # fmt: skip
ENVIRONMENT_PAGE = Entry(
    "environment", "environment.html", TABLES, "Summary", "software versions", kind="table"
)
EXAMPLES_PAGE = Entry(
    "examples", "examples-{run}.html", TABLES, "Example completions", "a run's completions",
    kind="table", caption="examples",
)  # fmt: skip


def tables_read() -> list[str]:
    """The long tables of `aggregate` that some figure reads, in TABLE_OPTIONS order."""
    read = {source for figure in FIGURES for source in figure.reads}
    return [name for name in TABLE_OPTIONS if name in read]
