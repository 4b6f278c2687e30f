"""Torch threads of a CPU training job that does not collapse beside other work.

Two OpenMP threads on two cores are 1.3x faster than one on an idle machine, but 2.3x slower
than one when another process keeps a core busy: the threads wait on each other while the
neighbour holds a core (docs/benchmarks.md, bench/threads_under_load.py). So a CPU job looks,
once as it starts, at how busy the other processes keep the machine, and keeps only the threads
the free cores can run. Chosen once, never changed mid-run, and logged: the thread count is part
of what makes a run reproducible on the same CPU (README, "What is deterministic").
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger("aha.launch.cpu_threads")

WINDOW_SECONDS = 1.0
# /proc/stat "cpu" columns counted busy: user nice system (idle iowait) irq softirq steal
BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def _busy_jiffies(stat: Path) -> int:
    fields = stat.read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in BUSY_COLUMNS if i < len(fields))


def others_busy_cores(window: float = WINDOW_SECONDS, stat: Path = Path("/proc/stat")) -> float:
    """Cores kept busy by other processes over `window` seconds (this process sleeps through
    it, so what is counted is theirs); 0.0 where /proc/stat cannot be read."""
    try:
        before, own = _busy_jiffies(stat), time.process_time()
        time.sleep(window)
        after, own = _busy_jiffies(stat), time.process_time() - own
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return max(0.0, (after - before) / ticks / window - own / window)


def fit_threads(requested: int, cores: int, busy: float) -> int:
    """Threads for a job asking `requested` on `cores` cores while others keep `busy` busy:
    as many as the free cores (rounded to the nearest whole core), at least one."""
    free = max(0.0, cores - busy)
    return max(1, min(requested, math.floor(free + 0.5)))


def fit_torch_threads(cores: int | None = None) -> int:
    """Set torch's intra-op threads to what the free cores can run; the number chosen."""
    import torch

    requested = torch.get_num_threads()
    cores = cores or len(os.sched_getaffinity(0))
    if requested <= 1:
        return requested
    busy = others_busy_cores()
    chosen = fit_threads(requested, cores, busy)
    if chosen != requested:
        torch.set_num_threads(chosen)
    log.info(
        "torch threads %d (asked %d; %d cores, others keep %.2f busy)", chosen, requested, cores,
        busy,
    )  # fmt: skip
    return chosen
