"""Stage prepare-data: its CLI on generated, local-file and (offline) Hub sources; its loaders,
splits and the split reader the later stages use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aha import formats
from aha.formats import DataSourceError
from aha.stages import prepare_data
from aha.task import countdown
from aha.task.countdown import Task
from aha.task.rewards import check_equation

TINY = {
    "source": "generate",
    "generate": {
        "num_counts": [3],
        "number_range": [1, 20],
        "target_range": [1, 99],
        "balance_patterns": True,
    },
    "shuffle_seed": 111,
    "num_samples": 600,
    "test_size": 0.1,
    "split_seed": 111,
    "eval_size": 20,
}


def prepare(tmp_path: Path, dataset: dict, name: str = "out", *extra: str) -> Path:
    out = tmp_path / name
    prepare_data.cli(
        ["--dataset", json.dumps(dataset), "--out-dir", str(out), *extra], prog="prepare-data"
    )
    return out


def read(out: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(out / f"{s}.parquet") for s in prepare_data.SPLITS}


def test_generate_writes_splits_and_card(tmp_path: Path) -> None:
    out = prepare(tmp_path, TINY)
    splits = read(out)
    train, test, ev = splits["train"], splits["test"], splits["eval"]
    assert (len(train), len(test), len(ev)) == (540, 60, 20)
    for df in splits.values():
        assert list(df.columns) == list(prepare_data.COLUMNS)
        assert df["id"].is_unique
    assert set(ev["id"]) <= set(test["id"])
    assert list(ev["id"]) == list(test["id"][:20])
    assert not set(train["id"]) & set(test["id"])
    for row in pd.concat([train, test]).itertuples():
        assert len(row.nums) == 3 and all(1 <= n <= 20 for n in row.nums)
        assert check_equation(row.solution, list(row.nums), row.target)
        assert countdown.operator_pattern(row.solution) == row.pattern
    card = json.loads((out / "card.json").read_text())
    assert card["counts"] == {"train": 540, "test": 60, "eval": 20}
    assert card["seeds"] == {"shuffle_seed": 111, "split_seed": 111, "generate_seed": 111}
    assert card["solvable"]["share"] == 1.0 and card["solvable"]["checked"] == 600
    assert card["num_count_shares"]["train"] == {"3": 1.0}
    assert sum(card["numbers_histogram"].values()) == 3 * 600
    assert sum(card["targets_histogram"].values()) == 600
    for name, df in splits.items():
        assert card["patterns"][name] == df["pattern"].value_counts().to_dict()
    # Balanced: 8 patterns of 75 tasks each (every pattern has at least 75 tasks here).
    assert set(pd.concat([train, test])["pattern"].value_counts()) == {75}


def test_same_seeds_same_bytes(tmp_path: Path) -> None:
    a, b = prepare(tmp_path, TINY, "a"), prepare(tmp_path, TINY, "b")
    for name in ("train.parquet", "test.parquet", "eval.parquet", "card.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_split_seed_changes_the_split_not_the_tasks(tmp_path: Path) -> None:
    a = read(prepare(tmp_path, TINY, "a"))
    b = read(prepare(tmp_path, {**TINY, "split_seed": 112}, "b"))
    assert set(a["test"]["id"]) != set(b["test"]["id"])
    everything = {
        s: pd.concat([x["train"], x["test"]]).set_index("id") for s, x in (("a", a), ("b", b))
    }
    assert everything["a"].sort_index()["target"].equals(everything["b"].sort_index()["target"])


def test_path_source_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [{"target": int(t), "nums": [int(a), int(b), int(c)]} for a, b, c, t in _tasks(60)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    cfg = {"source": "path", "num_samples": 50, "test_size": 0.2, "eval_size": 5, "split_seed": 3}
    outs = [
        prepare(tmp_path, {**cfg, "path": str(tmp_path / f)}, f.replace(".", "_"))
        for f in ("t.jsonl", "t.parquet")
    ]
    for out in outs:
        splits = read(out)
        assert (len(splits["train"]), len(splits["test"]), len(splits["eval"])) == (40, 10, 5)
        kept = pd.concat([splits["train"], splits["test"]])
        solvable = [countdown.is_solvable(list(r.nums), r.target) for r in kept.itertuples()]
        for r, ok in zip(kept.itertuples(), solvable, strict=True):
            assert (rows[r.id]["target"], rows[r.id]["nums"]) == (r.target, list(r.nums))
            assert pd.notna(r.pattern) == ok and pd.notna(r.solution) == ok
        card = json.loads((out / "card.json").read_text())
        assert card["source"] == "path"
        assert card["solvable"]["checked"] == 50 and card["solvable"]["complete"]
        assert card["solvable"]["solvable"] == sum(solvable)
        assert 0 < sum(solvable) < 50
    assert read(outs[0])["train"].equals(read(outs[1])["train"])


def _tasks(n: int) -> list[tuple[int, int, int, int]]:
    """Deterministic mix of solvable and unsolvable 3-number tasks."""
    return [(i % 7 + 1, i % 5 + 2, i % 11 + 1, (i * 37) % 60 + 1) for i in range(n)]


def test_path_missing_column_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"target": 3, "numbers": [1, 2]}\n')
    with pytest.raises(SystemExit, match=r"missing column.*nums"):
        prepare(tmp_path, {"source": "path", "path": str(tmp_path / "t.jsonl")})


def test_hub_offline_names_the_fix(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache: nothing to fall back on
    }
    dataset = json.dumps({"source": "hub", "num_samples": 100, "eval_size": 5})
    cmd = [sys.executable, "-m", "aha", "prepare-data", "--dataset", dataset]
    proc = subprocess.run(
        [*cmd, "--out-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "dataset.source: generate" in last and "Jiayi-Pan/Countdown-Tasks-3to4" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizes": 3}, r"dataset\.sizes: unknown key"),
        ({"generate": {"ranges": [1, 2]}}, r"dataset\.generate\.ranges: unknown key"),
        ({"source": "web"}, r"dataset\.source"),
        ({"source": "path"}, r"dataset\.path: required"),
        ({"num_samples": 20000}, r"only 16206 distinct .* dataset\.num_samples"),
        ({"eval_size": 100}, r"dataset\.eval_size: 100 exceeds the test split \(60 tasks\)"),
        ({"generate": {"number_range": [9, 1]}}, r"dataset\.generate\.number_range"),
    ],
)
def test_bad_config_fails_with_the_key(
    tmp_path: Path, change: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare(tmp_path, {**TINY, **change})
    # a section the schema refuses is argparse's usage error on --dataset (status 2); a
    # combination found while preparing is one line `prog: message`
    code = exit_info.value.code
    said = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, said), said


def test_dataset_that_is_not_json_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.cli(["--dataset", "{source:", "--out-dir", str(tmp_path)], prog="prep")
    assert exit_info.value.code == 2
    assert "prep: error: argument --dataset: not JSON" in capsys.readouterr().err


def test_help_documents_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        prepare_data.cli(["--help"], prog="python -m aha prepare-data")
    text = capsys.readouterr().out
    for arg in ("--dataset", "--out-dir", "--solve-budget-s", "balance_patterns"):
        assert arg in text


# ----------------------------------------------------------------------------- sources


def test_load_path_parquet_and_jsonl(tmp_path) -> None:
    rows = [{"target": 65, "nums": [19, 36, 55, 7]}, {"target": 24, "nums": [1, 5, 5, 5]}]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = [Task((19, 36, 55, 7), 65), Task((1, 5, 5, 5), 24)]
    assert prepare_data.load_path(tmp_path / "t.parquet") == want
    assert prepare_data.load_path(tmp_path / "t.jsonl") == want


def test_load_path_errors(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"target": 3}\n')
    with pytest.raises(DataSourceError, match=r"missing column.*nums"):
        prepare_data.load_path(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"target": 3, "nums": ["x", 2]}\n')
    with pytest.raises(DataSourceError, match="row 0"):
        prepare_data.load_path(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("target,nums\n")
    with pytest.raises(DataSourceError, match=r"parquet or \.jsonl"):
        prepare_data.load_path(tmp_path / "c.csv")
    with pytest.raises(DataSourceError, match="does not exist"):
        prepare_data.load_path(tmp_path / "nope.parquet")


def test_load_hub_unreachable_names_the_fix(monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as err:
        prepare_data.load_hub("Jiayi-Pan/Countdown-Tasks-3to4", "train")
    message = str(err.value)
    assert "\n" not in message
    assert "dataset.source: generate" in message and "dataset.source: path" in message
    assert "ConnectionError: Couldn't reach the Hub" in message


def test_read_split_is_the_one_reader_of_the_split_files(tmp_path: Path) -> None:
    out = prepare(tmp_path, TINY)
    train = formats.read_split(out / "train.parquet")
    assert list(train.columns) == list(prepare_data.COLUMNS) and list(train.index) == list(
        range(540)
    )
    with pytest.raises(DataSourceError, match="no such split; run the prepare_data rule"):
        formats.read_split(out / "nope.parquet")
    pd.DataFrame({"nums": [[1, 2]]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataSourceError, match=r"missing column\(s\) target"):
        formats.read_split(tmp_path / "bad.parquet")


# ----------------------------------------------------------------------------- splits


def test_split_matches_datasets_with_a_seed() -> None:
    """Same rows as the seed's shuffle(seed).select(n) + train_test_split(test_size, seed)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"i": list(range(300))})
    sub = ds.shuffle(seed=111).select(range(200))
    ref = sub.train_test_split(test_size=0.1, seed=7)
    split = prepare_data.split_indices(300, 111, 200, 0.1, 7, 5)
    assert split.train == ref["train"]["i"]
    assert split.test == ref["test"]["i"]
    assert split.eval == split.test[:5]


def test_split_reproducible_and_disjoint() -> None:
    a = prepare_data.split_indices(1000, 1, 600, 0.1, 2, 20)
    assert a == prepare_data.split_indices(1000, 1, 600, 0.1, 2, 20)
    assert len(a.train) + len(a.test) == 600 and len(a.test) == 60
    assert not set(a.train) & set(a.test)
    b = prepare_data.split_indices(1000, 1, 600, 0.1, 3, 20)
    assert set(a.test) != set(b.test) and set(a.train + a.test) == set(b.train + b.test)


def test_split_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.num_samples"):
        prepare_data.split_indices(10, 1, 20, 0.1, 1, 1)
    with pytest.raises(ValueError, match=r"dataset\.eval_size"):
        prepare_data.split_indices(100, 1, 100, 0.1, 1, 50)


def test_label_respects_its_budget() -> None:
    tasks = [Task((1, 2, 3), 6), Task((1, 1, 1), 99), Task((2, 2), 4)]
    done = prepare_data.label(tasks, [1, 0, 2], budget_s=60)
    assert done == {1: None, 0: countdown.simplest((1, 2, 3), 6), 2: ("+", "2 + 2")}
    assert done[0][0] == "++"
    ticks = iter([0.0, 0.0, 100.0])
    assert prepare_data.label(tasks * 200, list(range(600)), 1.0, clock=lambda: next(ticks)) == {
        i: countdown.simplest(t.nums, t.target) for i, t in enumerate((tasks * 200)[:256])
    }
