"""The `compute` stage: known benchmark files -> known hours per stage, GPU logs -> GPU-hours and
peak memory, training logs -> s/step; whatever is missing is a note on the figure."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aha.launch import gpu_monitor
from aha.stages import compute, train
from tests.unit.test_plots import svg_text
from tests.unit.test_report import train_log, write_jsonl

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
RUNS = {"tiny-a": {"steps": [0, 2], "model": {"source": "tiny"}}}


def write_benchmark(path: Path, seconds: float, cpu: float | str, rss: float | str) -> Path:
    """A benchmark file as Snakemake writes it (NA: nothing sampled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hms = time.strftime("%H:%M:%S", time.gmtime(seconds))
    path.write_text(f"{HEADER}\n{seconds}\t{hms}\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    return path


def write_gpu_log(benchmark: Path, used_mib: dict[str, list[float]], total: float = 81559) -> Path:
    """A GPU log beside `benchmark`: per GPU index, its memory.used samples."""
    path = gpu_monitor.gpu_log_path(benchmark)
    lines = ["\t".join(gpu_monitor.COLUMNS)]
    for index, values in used_mib.items():
        for i, used in enumerate(values):
            lines.append(
                f"{i * 5.0}\t2026/01/01 00:00:0{i}.000\t{index}\tGPU-{index}\t{used}\t{total}\t90"
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_benchmarks(workdir: Path, runs: dict[str, dict[str, Any]]) -> None:
    """Benchmark files for every job rule compute expects (report.smk's JOB_BENCHMARKS) of
    `runs` ({run: {"steps", "model", "seeds"}}): synthetic results for a report workflow."""
    bench = workdir / "benchmarks"
    write_benchmark(bench / "prepare_data" / "prepare_data.tsv", 2.5, 2.0, 110)
    if any(spec["model"]["source"] == "tiny" for spec in runs.values()):
        write_benchmark(bench / "build_tiny_model" / "build_tiny_model.tsv", 600, 1100, 700)
    for run, spec in runs.items():
        write_benchmark(bench / "sample" / f"{run}-base-0.tsv", 40, 38, 900)
        for seed in spec.get("seeds", [42]):
            write_benchmark(bench / "train" / f"{run}-seed{seed}.tsv", 1800, 3400, 1500)
            for step in spec["steps"]:
                if step:
                    write_benchmark(bench / "sample" / f"{run}-seed{seed}-{step}.tsv", 60, 55, 950)


def run_compute(tmp: Path, benchmarks: list[tuple[str, Path]], logs=(), runs=RUNS) -> Path:
    """The stage as rule compute runs it; returns the folder of compute.tsv and compute.svg."""
    out = tmp / "out"
    argv = [a for stage, path in benchmarks for a in ("--benchmark", stage, str(path))]
    argv += [a for run, seed, path in logs for a in ("--train-log", run, str(seed), str(path))]
    argv += ["--runs", json.dumps(runs), "--table", str(out / "compute.tsv")]
    compute.cli([*argv, "--figure", str(out / "compute.svg")], prog="compute")
    return out


def read_table(path: Path) -> dict[str, dict[str, str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    return {row[0]: dict(zip(lines[0], row, strict=True)) for row in lines[1:]}


# ----------------------------------------------------------------------------- reading, summing


def test_read_benchmark_and_na_cells(tmp_path: Path) -> None:
    job = compute.read_benchmark(write_benchmark(tmp_path / "a.tsv", 90.5, 181.0, 2048), "train")
    assert job is not None
    assert (job.stage, job.seconds, job.cpu_seconds, job.max_rss_mib) == ("train", 90.5, 181, 2048)
    assert job.gpu is None and job.gpu_hours is None
    quick = compute.read_benchmark(write_benchmark(tmp_path / "b.tsv", 0.4, "NA", "NA"))
    assert quick is not None and quick.cpu_seconds is None and quick.max_rss_mib is None
    assert compute.read_benchmark(tmp_path / "missing.tsv") is None
    (tmp_path / "empty.tsv").write_text(HEADER + "\n")
    assert compute.read_benchmark(tmp_path / "empty.tsv") is None


def test_hours_per_stage_from_known_benchmarks(tmp_path: Path) -> None:
    b = tmp_path / "benchmarks"
    benchmarks = [
        ("prepare_data", write_benchmark(b / "prepare_data.tsv", 36, 18, 100)),
        ("train", write_benchmark(b / "train" / "r-seed1.tsv", 3600, 7200, 3072)),
        ("train", write_benchmark(b / "train" / "r-seed2.tsv", 1800, 3600, 4096)),
        ("train", b / "train" / "r-seed3.tsv"),  # not run yet
        ("sample", write_benchmark(b / "sample" / "r-base-0.tsv", 720, "NA", "NA")),
    ]
    jobs, missing = compute.read_jobs(benchmarks)
    assert missing == [("train", b / "train" / "r-seed3.tsv")]
    rows = {r["stage"]: r for r in compute.summarise(jobs, missing, [s for s, _ in benchmarks])}
    assert list(rows) == ["prepare_data", "train", "sample"]
    train_row = rows["train"]
    assert (train_row["jobs"], train_row["missing_jobs"]) == (2, 1)
    assert train_row["wall_hours"] == pytest.approx(1.5)
    assert train_row["cpu_hours"] == pytest.approx(3.0)
    assert train_row["max_rss_gib"] == pytest.approx(4.0)
    assert train_row["gpu_jobs"] == 0 and train_row["gpu_hours"] is None
    assert rows["prepare_data"]["wall_hours"] == pytest.approx(0.01)
    assert rows["sample"]["wall_hours"] == pytest.approx(0.2)
    assert rows["sample"]["cpu_hours"] is None and rows["sample"]["max_rss_gib"] is None


def test_gpu_hours_and_peak_memory_from_gpu_logs(tmp_path: Path) -> None:
    two = write_benchmark(tmp_path / "train" / "r-seed1.tsv", 1800, 2000, 1024)
    write_gpu_log(two, {"0": [1024, 40960], "1": [2048, 30720]})  # 2 GPUs, peak 40 GiB
    one = write_benchmark(tmp_path / "train" / "q-seed1.tsv", 3600, 2000, 1024)
    write_gpu_log(one, {"0": [10240]})
    cpu = write_benchmark(tmp_path / "sample" / "r-base-0.tsv", 60, 50, 512)
    jobs, missing = compute.read_jobs([("train", two), ("train", one), ("sample", cpu)])
    assert jobs[0].gpu is not None and jobs[0].gpu.gpus == 2 and jobs[0].gpu_hours == 1.0
    rows = {r["stage"]: r for r in compute.summarise(jobs, missing)}
    assert rows["train"]["gpu_jobs"] == 2
    assert rows["train"]["gpu_hours"] == pytest.approx(2.0)  # 0.5 h x 2 GPUs + 1 h x 1 GPU
    assert rows["train"]["peak_gpu_memory_gib"] == pytest.approx(40.0)
    assert rows["sample"]["gpu_hours"] is None and rows["sample"]["peak_gpu_memory_gib"] is None


def test_step_times_with_and_without_the_split(tmp_path: Path) -> None:
    rows = train_log(3, kl=False)
    for i, row in enumerate(rows[:3]):
        row["step_time"] = 10.0 + i
    rows[1].update({compute.GENERATION_KEY: 7.0, compute.OPTIMISATION_KEY: 4.0})
    write_jsonl(tmp_path / "log.jsonl", rows)
    steps = compute.step_times(tmp_path / "log.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3]  # the final summary entry is not a step
    assert [s["step_time"] for s in steps] == [10.0, 11.0, 12.0]
    assert steps[1][compute.GENERATION_KEY] == 7.0 and compute.GENERATION_KEY not in steps[0]
    assert compute.step_times(tmp_path / "missing.jsonl") == []


# ----------------------------------------------------------------------------- the stage


def test_stage_writes_table_and_figure_with_notes_for_what_is_missing(tmp_path: Path) -> None:
    b = tmp_path / "benchmarks"
    benchmarks = [
        ("prepare_data", write_benchmark(b / "prepare_data.tsv", 36, 18, 100)),
        ("train", write_benchmark(b / "train" / "tiny-a-seed42.tsv", 3600, 7000, 2048)),
        ("train", b / "train" / "tiny-a-seed43.tsv"),
        ("sample", b / "sample" / "tiny-a-base-0.tsv"),
    ]
    rows = train_log(4, kl=False)
    for row in rows[:4]:
        row["step_time"] = 12.0
    write_jsonl(tmp_path / "log42.jsonl", rows)
    logs = [("tiny-a", 42, tmp_path / "log42.jsonl"), ("tiny-a", 43, tmp_path / "log43.jsonl")]
    out = run_compute(tmp_path, benchmarks, logs)
    table = read_table(out / "compute.tsv")
    assert list(table) == ["prepare_data", "train", "sample"]
    assert table["train"]["wall_hours"] == "1.0000" and table["train"]["missing_jobs"] == "1"
    assert table["train"]["max_rss_gib"] == "2.0000" and table["train"]["gpu_hours"] == "NA"
    assert table["sample"]["jobs"] == "0" and table["sample"]["wall_hours"] == "NA"
    text = svg_text(out / "compute.svg")
    assert "no GPU (CPU run)" in text
    assert (
        "No benchmark yet (not run, or failed): train: tiny-a-seed43; sample: tiny-a-base-0" in text
    )
    assert "No training log with step_time yet: tiny-a seed 43" in text
    assert "No generation/optimisation split in the training log of: tiny-a seed 42" in text
    assert "Hours per stage" in text and "train (1 job)" in text


def test_stage_with_nothing_at_all_still_draws(tmp_path: Path) -> None:
    out = run_compute(tmp_path, [("train", tmp_path / "nope.tsv")])
    text = svg_text(out / "compute.svg")
    assert "no benchmark file yet" in text and "no training log with step_time yet" in text
    assert read_table(out / "compute.tsv")["train"]["missing_jobs"] == "1"


def test_stage_draws_gpu_memory_and_the_split(tmp_path: Path) -> None:
    bench = write_benchmark(tmp_path / "train" / "tiny-a-seed42.tsv", 1800, 2000, 1024)
    write_gpu_log(bench, {"0": [20480, 30720]})
    rows = train_log(2, kl=False)
    for row in rows[:2]:
        row.update({"step_time": 10.0, compute.GENERATION_KEY: 6.0, compute.OPTIMISATION_KEY: 4.0})
    write_jsonl(tmp_path / "log.jsonl", rows)
    out = run_compute(tmp_path, [("train", bench)], [("tiny-a", 42, tmp_path / "log.jsonl")])
    text = svg_text(out / "compute.svg")
    assert "Peak GPU memory per job" in text and "no GPU" not in text
    assert "generation" in text and "optimisation" in text and "No generation" not in text
    assert "0.50 GPU-hours" in text
    table = read_table(out / "compute.tsv")["train"]
    assert table["gpu_hours"] == "0.5000" and table["peak_gpu_memory_gib"] == "30.0000"


def test_svg_is_stable(tmp_path: Path) -> None:
    bench = write_benchmark(tmp_path / "train" / "tiny-a-seed42.tsv", 1800, 2000, 1024)
    first = run_compute(tmp_path / "1", [("train", bench)]) / "compute.svg"
    second = run_compute(tmp_path / "2", [("train", bench)]) / "compute.svg"
    assert first.read_bytes() == second.read_bytes()


def test_the_stage_reads_the_keys_training_logs() -> None:
    assert (compute.GENERATION_KEY, compute.OPTIMISATION_KEY) == (
        train.GENERATION_KEY,
        train.OPTIMISATION_KEY,
    )
