"""Stage prepare-data: its CLI on generated, local-file and (offline) Hub sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aha import countdown, data
from aha.rewards import check_equation

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
    data.cli(["--dataset", json.dumps(dataset), "--out-dir", str(out), *extra], prog="prepare-data")
    return out


def read(out: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(out / f"{s}.parquet") for s in data.SPLITS}


def test_generate_writes_splits_and_card(tmp_path: Path) -> None:
    out = prepare(tmp_path, TINY)
    splits = read(out)
    train, test, ev = splits["train"], splits["test"], splits["eval"]
    assert (len(train), len(test), len(ev)) == (540, 60, 20)
    for df in splits.values():
        assert list(df.columns) == list(data.COLUMNS)
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
def test_bad_config_fails_with_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        prepare(tmp_path, {**TINY, **change})


def test_help_documents_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        data.cli(["--help"], prog="python -m aha prepare-data")
    text = capsys.readouterr().out
    for arg in ("--dataset", "--out-dir", "--solve-budget-s", "balance_patterns"):
        assert arg in text
