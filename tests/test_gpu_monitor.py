"""aha.gpu_monitor: a job's GPU samples, against a fake `nvidia-smi` on PATH (no GPU needed)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from aha import gpu_monitor

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in *--query-gpu=timestamp,index,uuid,memory.used,memory.total,utilization.gpu*) ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;; esac
[ -n "$FAKE_SMI_FAIL" ] && { echo "No devices were found" >&2; exit 6; }
echo "2026/01/01 12:00:00.000, 0, GPU-aaaa-0000, 1000, 81559, 10"
echo "2026/01/01 12:00:00.000, 1, GPU-bbbb-1111, 2000, 81559, [N/A]"
"""


@pytest.fixture
def fake_smi(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has only a fake nvidia-smi (two GPUs)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin"}


def gpu_rows(path: Path) -> list[dict[str, str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert tuple(lines[0]) == gpu_monitor.COLUMNS
    return [dict(zip(lines[0], row, strict=True)) for row in lines[1:]]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_monitor_samples_the_gpus_and_stops(tmp_path: Path, fake_smi: dict[str, str]) -> None:
    log = tmp_path / "bench" / "train.gpu.tsv"
    with gpu_monitor.monitor(log, interval=0.05, env=fake_smi) as sampler:
        assert sampler is not None
        assert wait_for(lambda: sampler.samples >= 3)
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())
    rows = gpu_rows(log)
    assert len(rows) >= 6 and len(rows) % 2 == 0
    assert {r["index"] for r in rows} == {"0", "1"}
    assert rows[1]["utilization_pct"] == "NA" and rows[1]["memory_used_mib"] == "2000"
    size = log.stat().st_size
    time.sleep(0.2)
    assert log.stat().st_size == size  # stopped: no more samples
    usage = gpu_monitor.read_gpu_log(log)
    assert usage is not None and usage.gpus == 2 and usage.peak_memory_mib == 2000
    assert usage.memory_total_mib == 81559


def test_monitor_stops_on_an_exception_and_keeps_its_samples(
    tmp_path: Path, fake_smi: dict[str, str]
) -> None:
    log = tmp_path / "gpu.tsv"
    log.write_text("a stale log of a failed attempt\n")
    with pytest.raises(RuntimeError), gpu_monitor.monitor(log, 0.05, fake_smi) as sampler:
        assert sampler is not None and wait_for(lambda: sampler.samples >= 1)
        raise RuntimeError("training failed")
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())
    assert "stale" not in log.read_text() and gpu_rows(log)


def test_monitor_keeps_only_the_jobs_gpus(tmp_path: Path, fake_smi: dict[str, str]) -> None:
    for visible, expected in (("1", {"1"}), ("GPU-aaaa", {"0"}), ("", set())):
        log = tmp_path / f"gpu-{visible}.tsv"
        env = {**fake_smi, "CUDA_VISIBLE_DEVICES": visible}
        with gpu_monitor.monitor(log, 0.05, env) as sampler:
            assert sampler is not None
            time.sleep(0.15)
        assert ({r["index"] for r in gpu_rows(log)} if log.exists() else set()) == expected
    # the vLLM-server wrapper's AHA_GPU_DEVICES (the server's GPU too) beats CUDA_VISIBLE_DEVICES
    env = {**fake_smi, "CUDA_VISIBLE_DEVICES": "0", gpu_monitor.ENV_DEVICES: "0,1"}
    assert gpu_monitor.job_devices(env) == ["0", "1"]


def test_no_nvidia_smi_no_path_or_not_rank_zero_samples_nothing(
    tmp_path: Path, fake_smi: dict[str, str]
) -> None:
    log = tmp_path / "gpu.tsv"
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    cases = [
        (log, {"PATH": str(empty)}),  # a CPU machine
        (None, fake_smi),  # no AHA_GPU_LOG: the rule gave the job no GPU
        (log, {**fake_smi, "LOCAL_RANK": "1", "RANK": "1"}),
        (log, {**fake_smi, "LOCAL_RANK": "0", "RANK": "4"}),  # rank 0 of another node
    ]
    for path, env in cases:
        with gpu_monitor.monitor(path, 0.01, env) as sampler:
            assert sampler is None
        assert not log.exists()
    with gpu_monitor.monitor(None, 0.01, {**fake_smi, gpu_monitor.ENV_LOG: str(log)}) as s:
        assert s is not None  # the path from the environment, as the rules set it


def test_failing_nvidia_smi_writes_no_log(tmp_path: Path, fake_smi: dict[str, str]) -> None:
    log = tmp_path / "gpu.tsv"
    with gpu_monitor.monitor(log, 0.02, {**fake_smi, "FAKE_SMI_FAIL": "1"}) as sampler:
        assert sampler is not None
        time.sleep(0.1)
    assert not log.exists() and sampler.samples == 0
    assert gpu_monitor.read_gpu_log(log) is None


def test_gpu_log_path_is_beside_the_benchmark() -> None:
    path = gpu_monitor.gpu_log_path("benchmarks/train/qwen-zero3-seed42.tsv")
    assert path == Path("benchmarks/train/qwen-zero3-seed42.gpu.tsv")
