"""Reading JSON Lines written by the stages (and by users, for `dataset.source: path`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; a bad line raises ValueError naming it."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON ({err})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            yield lineno, record


def salvage(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(objects, number of lines that are not one) of a file that may be partial or damaged.

    For readers that show what is there rather than refuse the file (the report: a run killed
    mid-write still gets its figures and pages); a missing file reads as no objects. Stages that
    compute numbers use `records`, which refuses a bad line.
    """
    objects: list[dict[str, Any]] = []
    bad = 0
    if not Path(path).exists():
        return objects, bad
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                objects.append(record)
            else:
                bad += 1
    return objects, bad
