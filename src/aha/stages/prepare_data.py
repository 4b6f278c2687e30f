"""Stage `prepare-data`: Countdown tasks from the Hub, a local file or the offline generator,
split reproducibly into train/test/eval parquet files plus a data card.

    python -m aha prepare-data --dataset '{"source": "generate", ...}' --out-dir results/data

`--dataset` is the config's `dataset` section as JSON (workflow/schemas/config.schema.yaml;
missing keys take the schema's defaults). Every row gets a stable `id` (its index in the
loaded or generated task list), its task `pattern` and one `solution` (null where unknown:
unsolvable, or beyond the solver's time budget for Hub/path data). Same inputs, same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aha import formats
from aha.cli import add_json, failing_as, parser, setup_logging
from aha.formats import DataSourceError
from aha.sections import DatasetConfig, section
from aha.task import countdown, generator

log = logging.getLogger("aha.stages.prepare_data")

SPLITS = ("train", "test", "eval")
COLUMNS = ("id", "nums", "target", "pattern", "solution")
DEFAULT_SOLVE_BUDGET_S = 300.0


# ----------------------------------------------------------------------------- sources

HUB_HINT = (
    "set `dataset.source: generate` (offline generator) or `dataset.source: path` "
    "(a local parquet/jsonl with columns target, nums)"
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_hub(name: str, split: str = "train") -> list[countdown.Task]:
    """Tasks of a Hub dataset (columns target, nums) via `datasets.load_dataset`.

    Offline or unreachable, this raises DataSourceError with one line naming the fix.
    """
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as err:  # offline, unreachable, unknown name/split: all end here
        raise DataSourceError(
            f"cannot load {name!r} (split {split!r}) from the Hugging Face Hub "
            f"({_first_line(err)}); offline? {HUB_HINT}"
        ) from err
    missing = {"target", "nums"} - set(ds.column_names)
    if missing:
        raise DataSourceError(f"{name}: missing column(s) {', '.join(sorted(missing))}")
    return _tasks(ds["nums"], ds["target"], source=name)


def load_path(path: str | Path) -> list[countdown.Task]:
    """Tasks from a local .parquet or .jsonl file with columns `target` and `nums`."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"dataset.path: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = set(table.column_names)
        rows = {c: table.column(c).to_pylist() for c in ("nums", "target") if c in columns}
    elif suffix in {".jsonl", ".json"}:
        rows = {"nums": [], "target": []}
        columns = {"nums", "target"}
        try:
            for _, record in formats.records(path):
                columns &= set(record)
                if columns != {"nums", "target"}:
                    break
                rows["nums"].append(record["nums"])
                rows["target"].append(record["target"])
        except ValueError as err:
            raise DataSourceError(str(err)) from None
    else:
        raise DataSourceError(f"dataset.path: {path}: expected a .parquet or .jsonl file")
    missing = {"nums", "target"} - columns
    if missing:
        raise DataSourceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return _tasks(rows["nums"], rows["target"], source=str(path))


def _as_int(x: Any) -> int:
    if isinstance(x, bool):
        raise TypeError("bool")
    if isinstance(x, float):
        if not x.is_integer():
            raise ValueError(x)
        return int(x)
    return int(x) if not isinstance(x, str) else int(x.strip())


def _tasks(nums_col: Sequence[Any], target_col: Sequence[Any], source: str) -> list[countdown.Task]:
    out = []
    for i, (nums, target) in enumerate(zip(nums_col, target_col, strict=True)):
        try:
            ns = tuple(_as_int(n) for n in nums)
            t = _as_int(target)
        except (TypeError, ValueError):
            raise DataSourceError(
                f"{source}: row {i}: nums must be a list of integers and target an integer "
                f"(got nums={nums!r}, target={target!r})"
            ) from None
        if not ns:
            raise DataSourceError(f"{source}: row {i}: empty nums")
        out.append(countdown.Task(ns, t))
    return out


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Row indices (into the loaded task list) of each split; eval is a prefix of test."""

    train: list[int]
    test: list[int]
    eval: list[int]


def split_indices(
    n_tasks: int,
    shuffle_seed: int,
    num_samples: int,
    test_size: float,
    split_seed: int,
    eval_size: int,
) -> Split:
    """Reproducible shuffle, subsample, train/test split and fixed eval subset.

    Same indices as the seed notebook's `ds.shuffle(seed=shuffle_seed).select(range(n))`
    followed by `train_test_split(test_size, seed=split_seed)` (the notebook passed no seed;
    here it is fixed): both draw `numpy.random.default_rng(seed).permutation`. The eval set is
    the first `eval_size` rows of the (already random) test split.
    """
    import numpy as np

    if num_samples > n_tasks:
        raise ValueError(
            f"dataset.num_samples ({num_samples}) exceeds the {n_tasks} tasks available: lower "
            "it (or generate more with dataset.generate.num_tasks)"
        )
    if not 0 < test_size < 1:
        raise ValueError(f"dataset.test_size must lie in (0, 1), got {test_size}")
    keep = np.random.default_rng(shuffle_seed).permutation(n_tasks)[:num_samples]
    n_test = math.ceil(test_size * num_samples)
    n_train = num_samples - n_test
    if n_train < 1:
        raise ValueError(f"dataset.test_size {test_size} leaves no training tasks")
    order = np.random.default_rng(split_seed).permutation(num_samples)
    test = [int(keep[i]) for i in order[:n_test]]
    train = [int(keep[i]) for i in order[n_test:]]
    if eval_size > len(test):
        raise ValueError(
            f"dataset.eval_size ({eval_size}) exceeds the test split ({len(test)} tasks): lower "
            "it or raise dataset.num_samples / dataset.test_size"
        )
    return Split(train=train, test=test, eval=test[:eval_size])


def _iter_chunks(xs: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(xs), size):
        yield xs[i : i + size]


def label(
    tasks: Sequence[countdown.Task],
    order: Sequence[int],
    budget_s: float,
    progress: bool = False,
    clock: Callable[[], float] | None = None,
) -> dict[int, tuple[str, str] | None]:
    """Solve tasks in `order` until `budget_s` runs out: {index: (pattern, solution) | None}.

    Indices not reached are absent (unknown), so a huge Hub set costs bounded time.
    """
    clock = clock or time.perf_counter
    start = clock()
    out: dict[int, tuple[str, str] | None] = {}
    bar = generator.progress_bar(len(order), "solve tasks", progress)
    for chunk in _iter_chunks(order, 256):
        if clock() - start > budget_s:
            log.warning(
                "solver budget %.0f s spent: %d of %d tasks labelled",
                budget_s,
                len(out),
                len(order),
            )
            break
        for i in chunk:
            t = tasks[i]
            if len(t.nums) <= countdown.MAX_SOLVER_NUMBERS:  # larger tasks stay unknown
                out[i] = countdown.simplest(t.nums, t.target)
        bar.update(len(chunk))
    bar.close()
    return out


# ----------------------------------------------------------------------------- stages


def load_tasks(
    cfg: DatasetConfig,
) -> tuple[list[countdown.Task], dict[int, tuple[str, str] | None]]:
    """(tasks, labels): generated tasks come labelled; Hub/path tasks get labels later."""
    if cfg.source == "hub":
        log.info("loading %s (split %s) from the Hugging Face Hub", cfg.name, cfg.split)
        return load_hub(cfg.name, cfg.split), {}
    if cfg.source == "path":
        log.info("loading tasks from %s", cfg.path)
        return load_path(cfg.path), {}  # type: ignore[arg-type]
    settings = asdict(cfg.generate)  # the generator's own arguments, num_tasks apart
    n = settings.pop("num_tasks") or cfg.num_samples
    log.info("generating %d tasks (seed %d): %s", n, cfg.shuffle_seed, settings)
    solved = generator.generate(n, seed=cfg.shuffle_seed, progress=True, **settings)
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


def _pattern_counts(labels: Mapping[int, tuple[str, str] | None], rows: Sequence[int]) -> dict:
    names = [
        "unchecked" if i not in labels else "unsolvable" if labels[i] is None else labels[i][0]
        for i in rows
    ]
    counts = Counter(names)
    return {k: counts[k] for k in sorted(counts, key=countdown.pattern_key)}


def _size_shares(tasks: Sequence[countdown.Task], rows: Sequence[int]) -> dict[str, float]:
    counts = Counter(len(tasks[i].nums) for i in rows)
    return {str(k): round(counts[k] / len(rows), 4) for k in sorted(counts)}


def _sum_share(tasks: Sequence[countdown.Task], rows: Sequence[int]) -> float:
    return round(sum(sum(tasks[i].nums) == tasks[i].target for i in rows) / len(rows), 4)


def _source(cfg: DatasetConfig) -> dict[str, Any]:
    """Where the tasks came from: the source and its own settings."""
    if cfg.source == "hub":
        return {"source": cfg.source, "name": cfg.name, "split": cfg.split}
    if cfg.source == "path":
        return {"source": cfg.source, "path": cfg.path}
    return {"source": cfg.source, "generate": asdict(cfg.generate)}


def _solvable(
    cfg: DatasetConfig,
    labels: Mapping[int, tuple[str, str] | None],
    kept: Sequence[int],
    solve_budget_s: float | None,
) -> dict[str, Any]:
    """How many of the kept tasks were checked, how many of those are solvable, and how."""
    checked = [i for i in kept if i in labels]
    solvable = sum(labels[i] is not None for i in checked)
    return {
        "checked": len(checked),
        "solvable": solvable,
        "share": round(solvable / len(checked), 6) if checked else None,
        "complete": len(checked) == len(kept),
        "how": "verified while generating"
        if cfg.source == "generate"
        else f"exact solver, eval then test then train, budget {solve_budget_s:g} s",
    }


def data_card(
    cfg: DatasetConfig,
    tasks: Sequence[countdown.Task],
    labels: Mapping[int, tuple[str, str] | None],
    split: Split,
    solve_budget_s: float | None,
) -> dict[str, Any]:
    """What the splits hold: counts, seeds, solvable share, histograms, pattern counts."""
    parts = {"train": split.train, "test": split.test, "eval": split.eval}
    kept = split.train + split.test
    seeds = {"shuffle_seed": cfg.shuffle_seed, "split_seed": cfg.split_seed}
    if cfg.source == "generate":
        seeds["generate_seed"] = cfg.shuffle_seed
    return {
        **_source(cfg),
        "tasks_loaded": len(tasks),
        "seeds": seeds,
        "num_samples": cfg.num_samples,
        "test_size": cfg.test_size,
        "eval_size": cfg.eval_size,
        "counts": {name: len(rows) for name, rows in parts.items()},
        "solvable": _solvable(cfg, labels, kept, solve_budget_s),
        "num_count_shares": {name: _size_shares(tasks, rows) for name, rows in parts.items()},
        "target_equals_sum_share": {name: _sum_share(tasks, rows) for name, rows in parts.items()},
        "patterns": {name: _pattern_counts(labels, rows) for name, rows in parts.items()},
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
    split = split_indices(
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
        labels = label(tasks, order, budget, progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", split.train), ("test", split.test), ("eval", split.eval)):
        path = out_dir / f"{name}.parquet"
        pq.write_table(_table(tasks, labels, rows), path)
        log.info("wrote %s (%d rows)", path, len(rows))
    card = data_card(cfg, tasks, labels, split, budget)
    formats.write_atomic(out_dir / "card.json", json.dumps(card, indent=2) + "\n")
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
    p = parser(prog, __doc__)
    add_json(
        p,
        "--dataset",
        partial(section, DatasetConfig),
        help="the config's dataset section (keys: source, name, split, path, "
        "generate{num_tasks, num_counts, number_range, target_range, balance_patterns}, "
        "shuffle_seed, num_samples, test_size, split_seed, eval_size; missing keys: defaults)",
    )
    p.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        help="directory for train.parquet, test.parquet, eval.parquet and card.json",
    )
    p.add_argument(
        "--solve-budget-s",
        type=float,
        default=DEFAULT_SOLVE_BUDGET_S,
        help="seconds the exact solver may spend labelling Hub/path tasks (pattern, solution, "
        "solvable share); tasks beyond it keep null labels (default: %(default)s)",
    )
    args = p.parse_args(argv)
    setup_logging()
    with failing_as(prog, DataSourceError, ValueError):  # the data or its settings: one line
        prepare(args.dataset, args.out_dir, args.solve_budget_s)
