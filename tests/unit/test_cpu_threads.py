"""Torch threads of a CPU job beside other work (aha.launch.cpu_threads). On this host's real
/proc/stat, with a real spinning process: tests/integration/test_cpu_threads_host.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.launch import cpu_threads


@pytest.mark.parametrize(
    ("requested", "cores", "busy", "expected"),
    [
        (2, 2, 0.0, 2),  # idle: all asked
        (2, 2, 0.4, 2),  # a little background work rounds away
        (2, 2, 0.6, 1),  # more than half a core taken: one thread
        (2, 2, 1.0, 1),
        (2, 2, 2.0, 1),  # never fewer than one
        (4, 8, 5.0, 3),
        (1, 2, 0.0, 1),  # never more than asked
    ],
)
def test_fit_threads(requested: int, cores: int, busy: float, expected: int) -> None:
    assert cpu_threads.fit_threads(requested, cores, busy) == expected


def test_others_busy_cores_from_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Busy columns (user nice system irq softirq steal, not idle iowait) over the window."""
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal; the per-CPU lines are not read
    stat.write_text("cpu  100 0 100 5000 70 10 0 0\ncpu0 1 2 3 4\n")
    after = "cpu  150 10 160 5900 90 25 5 5\ncpu0 9 9 9 9\n"  # busy +50+10+60+15+5+5 = 145
    monkeypatch.setattr(cpu_threads.os, "sysconf", lambda name: 100)  # 100 jiffies a second
    monkeypatch.setattr(cpu_threads.time, "sleep", lambda s: stat.write_text(after))
    assert cpu_threads.others_busy_cores(1.0, stat) == pytest.approx(1.45, abs=0.01)
    assert cpu_threads.others_busy_cores(1.0, tmp_path / "absent") == 0.0
