"""Stage `prepare-data`: Countdown tasks from the Hub, a local file or the offline generator,
split reproducibly into train/test/eval parquet files plus a data card.

    python -m aha prepare-data --dataset '{"source": "generate", ...}' --out-dir results/data

`--dataset` is the config's `dataset` section as JSON (workflow/schemas/config.schema.yaml;
missing keys take the schema's defaults). Every row gets a stable `id` (its index in the
loaded or generated task list), its task `pattern` and one `solution` (null where unknown:
unsolvable, or beyond the solver's time budget for Hub/path data). Same inputs, same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aha import countdown
from aha.sections import DatasetConfig, section

log = logging.getLogger("aha.data")

SPLITS = ("train", "test", "eval")
COLUMNS = ("id", "nums", "target", "pattern", "solution")
DEFAULT_SOLVE_BUDGET_S = 300.0


# ----------------------------------------------------------------------------- stages


def load_tasks(
    cfg: DatasetConfig,
) -> tuple[list[countdown.Task], dict[int, tuple[str, str] | None]]:
    """(tasks, labels): generated tasks come labelled; Hub/path tasks get labels later."""
    if cfg.source == "hub":
        log.info("loading %s (split %s) from the Hugging Face Hub", cfg.name, cfg.split)
        return countdown.load_hub(cfg.name, cfg.split), {}
    if cfg.source == "path":
        log.info("loading tasks from %s", cfg.path)
        return countdown.load_path(cfg.path), {}  # type: ignore[arg-type]
    g = cfg.generate
    n = g.num_tasks or cfg.num_samples
    log.info(
        "generating %d tasks (numbers %s, targets %s, sizes %s, balanced patterns: %s, seed %d)",
        n,
        list(g.number_range),
        list(g.target_range),
        list(g.num_counts),
        g.balance_patterns,
        cfg.shuffle_seed,
    )
    solved = countdown.generate(
        n,
        seed=cfg.shuffle_seed,
        num_counts=g.num_counts,
        number_range=g.number_range,
        target_range=g.target_range,
        balance_patterns=g.balance_patterns,
        progress=True,
    )
    return [s.task for s in solved], {i: (s.pattern, s.solution) for i, s in enumerate(solved)}


def _table(
    tasks: Sequence[countdown.Task],
    labels: Mapping[int, tuple[str, str] | None],
    rows: Sequence[int],
) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("nums", pa.list_(pa.int64())),
            ("target", pa.int64()),
            ("pattern", pa.string()),
            ("solution", pa.string()),
        ]
    )
    label = [labels.get(i) for i in rows]
    return pa.table(
        {
            "id": list(rows),
            "nums": [list(tasks[i].nums) for i in rows],
            "target": [tasks[i].target for i in rows],
            "pattern": [x[0] if x else None for x in label],
            "solution": [x[1] if x else None for x in label],
        },
        schema=schema,
    )


def _histogram(values: Sequence[int]) -> dict[str, int]:
    counts = Counter(values)
    return {str(k): counts[k] for k in sorted(counts)}


def data_card(
    cfg: DatasetConfig,
    tasks: Sequence[countdown.Task],
    labels: Mapping[int, tuple[str, str] | None],
    split: countdown.Split,
    solve_budget_s: float | None,
) -> dict[str, Any]:
    """What the splits hold: counts, seeds, solvable share, histograms, pattern counts."""
    parts = {"train": split.train, "test": split.test, "eval": split.eval}
    kept = split.train + split.test
    checked = [i for i in kept if i in labels]
    solvable = sum(labels[i] is not None for i in checked)

    def pattern_counts(rows: Sequence[int]) -> dict[str, int]:
        names = [
            "unchecked" if i not in labels else "unsolvable" if labels[i] is None else labels[i][0]
            for i in rows
        ]
        counts = Counter(names)
        return {k: counts[k] for k in sorted(counts, key=countdown.pattern_key)}

    def size_shares(rows: Sequence[int]) -> dict[str, float]:
        counts = Counter(len(tasks[i].nums) for i in rows)
        return {str(k): round(counts[k] / len(rows), 4) for k in sorted(counts)}

    def sum_share(rows: Sequence[int]) -> float:
        return round(sum(sum(tasks[i].nums) == tasks[i].target for i in rows) / len(rows), 4)

    source: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "hub":
        source.update(name=cfg.name, split=cfg.split)
    elif cfg.source == "path":
        source.update(path=cfg.path)
    else:
        source.update(generate={k: v for k, v in asdict(cfg.generate).items()})
    return {
        **source,
        "tasks_loaded": len(tasks),
        "seeds": {
            "shuffle_seed": cfg.shuffle_seed,
            "split_seed": cfg.split_seed,
            **({"generate_seed": cfg.shuffle_seed} if cfg.source == "generate" else {}),
        },
        "num_samples": cfg.num_samples,
        "test_size": cfg.test_size,
        "eval_size": cfg.eval_size,
        "counts": {name: len(rows) for name, rows in parts.items()},
        "solvable": {
            "checked": len(checked),
            "solvable": solvable,
            "share": round(solvable / len(checked), 6) if checked else None,
            "complete": len(checked) == len(kept),
            "how": "verified while generating"
            if cfg.source == "generate"
            else f"exact solver, eval then test then train, budget {solve_budget_s:g} s",
        },
        "num_count_shares": {name: size_shares(rows) for name, rows in parts.items()},
        "target_equals_sum_share": {name: sum_share(rows) for name, rows in parts.items()},
        "patterns": {name: pattern_counts(rows) for name, rows in parts.items()},
        "numbers_histogram": _histogram([n for i in kept for n in tasks[i].nums]),
        "targets_histogram": _histogram([tasks[i].target for i in kept]),
    }


def prepare(
    cfg: DatasetConfig, out_dir: Path, solve_budget_s: float = DEFAULT_SOLVE_BUDGET_S
) -> dict[str, Any]:
    """Load or generate, split, label, write {train,test,eval}.parquet and card.json."""
    import pyarrow.parquet as pq

    start = time.perf_counter()
    tasks, labels = load_tasks(cfg)
    log.info("%d tasks loaded", len(tasks))
    split = countdown.split_indices(
        len(tasks), cfg.shuffle_seed, cfg.num_samples, cfg.test_size, cfg.split_seed, cfg.eval_size
    )
    log.info(
        "split (shuffle_seed %d, split_seed %d): train %d, test %d, eval %d",
        cfg.shuffle_seed,
        cfg.split_seed,
        len(split.train),
        len(split.test),
        len(split.eval),
    )
    budget = None
    if cfg.source != "generate":
        budget = solve_budget_s
        order = split.test + split.train  # eval is the head of test: labelled first
        log.info(
            "solving %d tasks (budget %.0f s) for pattern, solution, solvable share",
            len(order),
            budget,
        )
        labels = countdown.label(tasks, order, budget, progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", split.train), ("test", split.test), ("eval", split.eval)):
        path = out_dir / f"{name}.parquet"
        pq.write_table(_table(tasks, labels, rows), path)
        log.info("wrote %s (%d rows)", path, len(rows))
    card = data_card(cfg, tasks, labels, split, budget)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info(
        "wrote %s: solvable %s of %d checked; eval patterns %s (%.1f s)",
        out_dir / "card.json",
        card["solvable"]["share"],
        card["solvable"]["checked"],
        card["patterns"]["eval"],
        time.perf_counter() - start,
    )
    return card


def cli(argv: list[str], prog: str) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        required=True,
        help="the config's dataset section as one JSON string (keys: source, name, split, path, "
        "generate{num_tasks, num_counts, number_range, target_range, balance_patterns}, "
        "shuffle_seed, num_samples, test_size, split_seed, eval_size; missing keys: defaults)",
    )
    parser.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        help="directory for train.parquet, test.parquet, eval.parquet and card.json",
    )
    parser.add_argument(
        "--solve-budget-s",
        type=float,
        default=DEFAULT_SOLVE_BUDGET_S,
        help="seconds the exact solver may spend labelling Hub/path tasks (pattern, solution, "
        "solvable share); tasks beyond it keep null labels (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = section(DatasetConfig, json.loads(args.dataset))
        prepare(cfg, args.out_dir, args.solve_budget_s)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{prog}: --dataset is not JSON: {err}") from None
    except (countdown.DataSourceError, ValueError) as err:  # config errors: one line
        raise SystemExit(f"{prog}: {err}") from None
