"""GPU memory and utilisation of one job, sampled with `nvidia-smi` into a TSV for the report.

Snakemake's benchmark files measure wall time, CPU time and host memory, not GPUs. The train and
sample rules therefore set `AHA_GPU_LOG` (the job's benchmark path with `.gpu.tsv` for `.tsv`)
when the job asks for GPUs, and their CLIs sample the job's GPUs into it while they run
(`monitor`); the `compute` stage reads it back (`read_gpu_log`). Without `nvidia-smi` on PATH
(a CPU run), or without `AHA_GPU_LOG`, nothing is sampled and no file is written.

The sampler is a daemon thread that runs one `nvidia-smi --query-gpu` per interval, not one
`nvidia-smi -lms` subprocess: a child process inherits the training process's blocked SIGTERM
(aha.stop_signals), so a long-lived one would ignore being told to stop, and a one-shot query
lets the thread keep only the job's own GPUs. Only one process per job samples: rank 0 (or the
only process).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aha.gpu_monitor")

ENV_LOG = "AHA_GPU_LOG"
# The GPUs the job owns, when CUDA_VISIBLE_DEVICES of the sampling process is fewer (the
# vLLM-server wrapper gives training all GPUs but the server's; see aha.vllm_server).
ENV_DEVICES = "AHA_GPU_DEVICES"
QUERY = ("timestamp", "index", "uuid", "memory.used", "memory.total", "utilization.gpu")
COLUMNS = (
    "elapsed_s",
    "timestamp",
    "index",
    "uuid",
    "memory_used_mib",
    "memory_total_mib",
    "utilization_pct",
)
INTERVAL_S = 5.0
QUERY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment, as `nvidia-smi --query-gpu` reports it (MiB, percent)."""

    timestamp: str
    index: str
    uuid: str
    memory_used_mib: float | None
    memory_total_mib: float | None
    utilization_pct: float | None


def is_rank_zero(env: Mapping[str, str] = os.environ) -> bool:
    """True for the one process of a job that samples: LOCAL_RANK and RANK unset or 0."""
    return all(env.get(name, "0").strip() in {"", "0"} for name in ("LOCAL_RANK", "RANK"))


def job_devices(env: Mapping[str, str] = os.environ) -> list[str] | None:
    """The job's GPU ids (indices or UUIDs): AHA_GPU_DEVICES, else CUDA_VISIBLE_DEVICES; None
    when neither is set (every GPU nvidia-smi lists is the job's)."""
    for name in (ENV_DEVICES, "CUDA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is not None:
            return [d.strip() for d in value.split(",") if d.strip()]
    return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]" (utilisation of a MIG slice)
        return None


def parse_query(text: str) -> list[GpuSample]:
    """`nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits` output; bad lines skipped."""
    samples = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if len(row) != len(QUERY):
            continue
        stamp, index, uuid, used, total, util = (cell.strip() for cell in row)
        samples.append(GpuSample(stamp, index, uuid, _number(used), _number(total), _number(util)))
    return samples


def owned(sample: GpuSample, devices: Sequence[str] | None) -> bool:
    """Whether `sample` is one of the job's GPUs. CUDA ids are indices, UUIDs or UUID prefixes;
    an id that is neither (a MIG instance) cannot be matched here, so then every GPU counts."""
    if devices is None or any(not (d.isdigit() or d.startswith("GPU-")) for d in devices):
        return True
    return any(sample.index == d if d.isdigit() else sample.uuid.startswith(d) for d in devices)


class GpuMonitor:
    """Samples the job's GPUs into `path` every `interval` seconds between start() and stop().

    The file is (re)written from the first sample on, so a rerun's log replaces the failed
    attempt's and a job that got no sample (nvidia-smi failing) leaves none. Rows are flushed as
    they are written: a killed job keeps what it sampled.
    """

    def __init__(
        self,
        path: Path,
        interval: float = INTERVAL_S,
        executable: str = "nvidia-smi",
        devices: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.executable = executable
        self.devices = devices
        self.env = dict(env) if env is not None else None  # nvidia-smi's (None: this process's)
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def query(self) -> list[GpuSample]:
        """One nvidia-smi query; [] (logged) when it fails."""
        cmd = [
            self.executable,
            f"--query-gpu={','.join(QUERY)}",
            "--format=csv,noheader,nounits",
        ]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=QUERY_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("nvidia-smi failed: %s", err)
            return []
        if proc.returncode != 0:
            log.warning("nvidia-smi exited with %d: %s", proc.returncode, proc.stderr.strip()[:200])
            return []
        return [s for s in parse_query(proc.stdout) if owned(s, self.devices)]

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a previous attempt's samples are not this job's
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread (it finishes the query under way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=QUERY_TIMEOUT_S + 5)
            self._thread = None

    def _run(self) -> None:
        out = None
        try:
            while True:
                elapsed = round(time.monotonic() - self._started, 3)
                rows = self.query()
                if rows:
                    if out is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        out = self.path.open("w", encoding="utf-8")
                        out.write("\t".join(COLUMNS) + "\n")
                    for s in rows:
                        values = (s.memory_used_mib, s.memory_total_mib, s.utilization_pct)
                        cells = [str(elapsed), s.timestamp, s.index, s.uuid]
                        cells += ["NA" if v is None else f"{v:g}" for v in values]
                        out.write("\t".join(cells) + "\n")
                    out.flush()
                    self.samples += 1
                if self._stop.wait(self.interval):
                    return
        except OSError as err:  # the log is a report input: never the job's failure
            log.warning("GPU log %s: %s; sampling stopped", self.path, err)
        finally:
            if out is not None:
                out.close()


@contextlib.contextmanager
def monitor(
    path: str | Path | None = None,
    interval: float = INTERVAL_S,
    env: Mapping[str, str] = os.environ,
) -> Iterator[GpuMonitor | None]:
    """Sample this job's GPUs into `path` (default: $AHA_GPU_LOG) while the block runs.

    Yields None and does nothing when there is no path, no `nvidia-smi` on PATH, or this is not
    rank 0. Stops and closes the log on exit, exceptions included.
    """
    target = path if path is not None else env.get(ENV_LOG)
    executable = shutil.which("nvidia-smi", path=env.get("PATH"))
    if not target or executable is None or not is_rank_zero(env):
        yield None
        return
    sampler = GpuMonitor(Path(target), interval, executable, job_devices(env), env)
    sampler.start()
    log.info("sampling GPU memory every %g s into %s", interval, target)
    try:
        yield sampler
    finally:
        sampler.stop()


# ----------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class GpuUsage:
    """What a job's GPU log says: how many GPUs it saw and their peak memory in use."""

    gpus: int
    peak_memory_mib: float | None
    memory_total_mib: float | None  # the largest GPU's capacity
    samples: int


def gpu_log_path(benchmark: str | Path) -> Path:
    """Where a job's GPU samples go: beside its benchmark file, `NAME.tsv` -> `NAME.gpu.tsv`."""
    path = Path(benchmark)
    return path.with_name(path.name.removesuffix(".tsv") + ".gpu.tsv")


def read_gpu_log(path: str | Path) -> GpuUsage | None:
    """The GPUs and peak memory of a GPU log; None when it is missing, empty or unreadable."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    gpus = {row.get("uuid") or row.get("index") for row in rows} - {None, ""}
    if not rows or not gpus:
        return None
    used = [v for row in rows if (v := _number(row.get("memory_used_mib") or "")) is not None]
    total = [v for row in rows if (v := _number(row.get("memory_total_mib") or "")) is not None]
    times = {row.get("elapsed_s") for row in rows}
    return GpuUsage(
        len(gpus), max(used) if used else None, max(total) if total else None, len(times)
    )
