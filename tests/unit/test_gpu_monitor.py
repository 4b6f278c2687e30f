"""aha.launch.gpu_monitor: a job's GPU samples, against a fake `nvidia-smi` on PATH (no GPU needed)."""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from aha.launch import gpu_monitor

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=timestamp,index,uuid,pci.bus_id,memory.used,memory.total,utilization.gpu*) ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;; esac
[ -n "$FAKE_SMI_FAIL" ] && { echo "No devices were found" >&2; exit 6; }
[ -n "$FAKE_SMI_ROWS" ] && { printf '%s\\n' "$FAKE_SMI_ROWS"; exit 0; }
echo "2026/01/01 12:00:00.000, 0, GPU-aaaa-0000, 00000000:18:00.0, 1000, 81559, 10"
echo "2026/01/01 12:00:00.000, 1, GPU-bbbb-1111, 00000000:3B:00.0, 2000, 81559, [N/A]"
"""
# A mixed machine as nvidia-smi lists it, in PCI bus order: a slow GPU first, then a fast one
# that CUDA's default order (FASTEST_FIRST) calls device 0. The second list has nvidia-smi
# numbering unlike the bus order, which is what CUDA_DEVICE_ORDER=PCI_BUS_ID follows.
STAMP = "2026/01/01 12:00:00.000"
SLOW = f"{STAMP}, 0, GPU-5555-slow, 00000000:18:00.0, 300, 15360, 1"
FAST = f"{STAMP}, 1, GPU-ffff-fast, 00000000:3B:00.0, 7000, 81559, 99"
LATE = f"{STAMP}, 0, GPU-cccc-late, 00000000:AF:00.0, 500, 81559, 5"
EARLY = f"{STAMP}, 1, GPU-dddd-early, 00000000:1A:00.0, 600, 81559, 6"


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


# ------------------------------------------------ which GPUs are the job's: UUIDs and PCI order


def expected_row(line: str) -> dict[str, str]:
    """The log row (less elapsed_s) of one line of the fake nvidia-smi."""
    stamp, index, uuid, bus, used, total, util = line.split(", ")
    return {
        "timestamp": stamp,
        "index": index,
        "uuid": uuid,
        "memory_used_mib": used,
        "memory_total_mib": total,
        "utilization_pct": "NA" if util.startswith("[") else util,
        "pci_bus_id": bus,
    }


def sample_once(tmp_path: Path, env: dict[str, str], smi: list[str]) -> list[dict[str, str]]:
    """What monitor() logs for a job with `env` on a machine whose nvidia-smi lists `smi`: its
    rows less elapsed_s, in sampling order ([] when no file). Waits for the first query only."""
    log = tmp_path / f"gpu-{len(list(tmp_path.iterdir()))}.tsv"
    env["FAKE_SMI_ROWS"] = "\n".join(smi)
    with gpu_monitor.monitor(log, 0.05, env) as sampler:
        assert sampler is not None
        assert wait_for(lambda: sampler.queries >= 1)
    if not log.exists():
        return []
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in gpu_rows(log)]


def assert_samples_of(rows: list[dict[str, str]], lines: list[str]) -> None:
    """`rows` are whole samples, each exactly the GPUs of `lines` in that order."""
    expected = [expected_row(line) for line in lines]
    assert rows and len(rows) % len(expected) == 0
    assert rows == expected * (len(rows) // len(expected))


def test_integer_ids_are_pci_order_which_the_monitor_sets(
    tmp_path: Path, fake_smi: dict[str, str]
) -> None:
    # CUDA's default order would call FAST device 0; under PCI_BUS_ID, which the monitor sets
    # before CUDA starts, device 0 is the slow GPU the job then really uses
    for visible, lines in (("0", [SLOW]), ("1", [FAST]), ("1,0", [SLOW, FAST])):
        env = {**fake_smi, "CUDA_VISIBLE_DEVICES": visible}
        assert_samples_of(sample_once(tmp_path, env, [SLOW, FAST]), lines)
        assert env[gpu_monitor.ENV_ORDER] == "PCI_BUS_ID"
    # nvidia-smi's own numbering is not what counts: the bus order is (EARLY is index 1)
    for visible, lines in (("0", [EARLY]), ("1", [LATE])):
        env = {**fake_smi, "CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        assert_samples_of(sample_once(tmp_path, env, [LATE, EARLY]), lines)


def test_uuids_are_matched_whatever_the_order(tmp_path: Path, fake_smi: dict[str, str]) -> None:
    for order in ("PCI_BUS_ID", "FASTEST_FIRST"):
        for visible, lines in (
            ("GPU-ffff-fast", [FAST]),
            ("GPU-ffff", [FAST]),  # an abbreviated UUID, as CUDA accepts
            ("GPU-ffff-fast,GPU-5555", [SLOW, FAST]),
        ):
            env = {**fake_smi, "CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": order}
            assert_samples_of(sample_once(tmp_path, env, [SLOW, FAST]), lines)
            assert env[gpu_monitor.ENV_ORDER] == order  # an explicit order is left alone


def test_fastest_first_integer_ids_are_reported_not_guessed(
    tmp_path: Path, fake_smi: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aha.launch.gpu_monitor")
    env = {**fake_smi, "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    assert sample_once(tmp_path, env, [SLOW, FAST]) == []  # neither SLOW's row nor FAST's
    assert env[gpu_monitor.ENV_ORDER] == "FASTEST_FIRST"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("CUDA_DEVICE_ORDER=FASTEST_FIRST, not PCI_BUS_ID" in w for w in warnings) == 1
    assert any("CUDA device 0: an integer id" in w for w in warnings)
    assert any("nothing is sampled" in w for w in warnings)
    # a UUID beside it is still the job's
    env = {**env, "CUDA_VISIBLE_DEVICES": "0,GPU-ffff-fast"}
    assert_samples_of(sample_once(tmp_path, env, [SLOW, FAST]), [FAST])


def test_slurm_renumbered_gpus(tmp_path: Path, fake_smi: dict[str, str]) -> None:
    # cgroups: nvidia-smi sees only the job's GPU, as index 0, and CUDA calls it 0 too
    only = LATE
    env = {**fake_smi, "CUDA_VISIBLE_DEVICES": "0"}
    assert_samples_of(sample_once(tmp_path, env, [only]), [only])
    # nvidia-smi sees every GPU and the job is given its GPU by UUID
    third = f"{STAMP}, 2, GPU-cccc-late, 00000000:AF:00.0, 500, 81559, 5"
    env = {**fake_smi, "CUDA_VISIBLE_DEVICES": "GPU-cccc-late"}
    assert_samples_of(sample_once(tmp_path, env, [SLOW, FAST, third]), [third])


def test_ids_that_name_no_gpu_are_each_explained() -> None:
    listed = gpu_monitor.parse_query(f"{SLOW}\n{FAST}\n")
    assert [s.uuid for s in listed] == ["GPU-5555-slow", "GPU-ffff-fast"]
    cases = {
        "5": "CUDA device 5: nvidia-smi lists 2 GPU(s); not sampled",
        "GPU-9999": "CUDA device GPU-9999: no GPU(s) with this UUID; not sampled",
        "GPU-": "CUDA device GPU-: 2 GPU(s) with this UUID; not sampled",
        "MIG-1234": "CUDA device MIG-1234: a MIG instance, whose own memory nvidia-smi "
        "--query-gpu does not report; not sampled",
    }
    for device, problem in cases.items():
        assert gpu_monitor.select(listed, [device]) == ([], [problem])
    # as in CUDA, an id that is no device hides the rest (-1: no GPU at all)
    assert gpu_monitor.select(listed, ["1", "-1", "0"]) == (
        [listed[1]],
        ["CUDA device -1: not a device id, so CUDA ignores 0 too; not sampled"],
    )
    assert gpu_monitor.select(listed, []) == (
        [],
        ["the job lists no GPU (an empty CUDA_VISIBLE_DEVICES)"],
    )
    assert gpu_monitor.select(listed, None) == (listed, [])


def test_unmatched_device_is_logged_once(
    tmp_path: Path, fake_smi: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aha.launch.gpu_monitor")
    log = tmp_path / "gpu.tsv"
    env = {**fake_smi, "CUDA_VISIBLE_DEVICES": "GPU-9999"}
    with gpu_monitor.monitor(log, 0.01, env) as sampler:
        assert sampler is not None
        assert wait_for(lambda: caplog.text.count("nothing is sampled") >= 1)
        time.sleep(0.1)  # several more queries
    assert not log.exists()
    assert caplog.text.count("CUDA device GPU-9999: no GPU(s) with this UUID") == 1
    assert caplog.text.count("nothing is sampled") == 1


def test_use_pci_device_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for before, after, pci in (
        (None, "PCI_BUS_ID", True),
        ("", "PCI_BUS_ID", True),
        ("PCI_BUS_ID", "PCI_BUS_ID", True),
        ("FASTEST_FIRST", "FASTEST_FIRST", False),
    ):
        env = {} if before is None else {"CUDA_DEVICE_ORDER": before}
        assert gpu_monitor.use_pci_device_order(env) is pci
        assert env == {"CUDA_DEVICE_ORDER": after}
    # every rank sets it, not only the one that samples
    env = {"LOCAL_RANK": "1", "RANK": "1", gpu_monitor.ENV_LOG: "gpu.tsv"}
    with gpu_monitor.monitor(None, 0.01, env) as sampler:
        assert sampler is None
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # once this process has started CUDA, setting it would split it from its children
    started = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", started)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert gpu_monitor.use_pci_device_order() is False
    assert "CUDA_DEVICE_ORDER" not in os.environ


def test_monitoring_failures_never_reach_the_job(
    tmp_path: Path,
    fake_smi: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="aha.launch.gpu_monitor")
    folder = tmp_path / "a-folder"  # the log path is a folder: it cannot be replaced
    folder.mkdir()
    ran = False
    with gpu_monitor.monitor(folder, 0.01, dict(fake_smi)) as sampler:
        ran = True
    assert ran and sampler is None and "GPU sampling not started" in caplog.text

    def broken(text: str) -> list[gpu_monitor.GpuSample]:
        raise ValueError("unexpected nvidia-smi output")

    monkeypatch.setattr(gpu_monitor, "parse_query", broken)
    with gpu_monitor.monitor(tmp_path / "gpu.tsv", 0.01, dict(fake_smi)) as sampler:
        assert sampler is not None
        assert wait_for(lambda: "sampling stopped" in caplog.text)
    assert "unexpected nvidia-smi output; sampling stopped" in caplog.text
    assert not (tmp_path / "gpu.tsv").exists()
