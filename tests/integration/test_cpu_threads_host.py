"""aha.launch.cpu_threads on this host's real /proc/stat: it starts a process that spins, so it is
no unit test (tests/unit/test_cpu_threads.py has the arithmetic on a fake /proc/stat)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from aha.launch import cpu_threads


def test_a_spinning_neighbour_is_seen() -> None:
    """On this machine's real /proc/stat: a process spinning on a core counts as ~1 core."""
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = cpu_threads.others_busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.7
