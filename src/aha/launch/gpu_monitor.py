"""GPU memory and utilisation of one job, sampled with `nvidia-smi` into a TSV for the report.

Snakemake's benchmark files measure wall time, CPU time and host memory, not GPUs. The train and
sample rules therefore set `AHA_GPU_LOG` (the job's benchmark path with `.gpu.tsv` for `.tsv`)
when the job asks for GPUs, and their CLIs sample the job's GPUs into it while they run
(`monitor`); the `compute` stage reads it back (`read_gpu_log`). Without `nvidia-smi` on PATH
(a CPU run), or without `AHA_GPU_LOG`, nothing is sampled and no file is written.

The sampler is a daemon thread that runs one `nvidia-smi --query-gpu` per interval, not one
`nvidia-smi -lms` subprocess: a child process inherits the training process's blocked SIGTERM
(aha.launch.stop_signals), so a long-lived one would ignore being told to stop, and a one-shot query
lets the thread keep only the job's own GPUs. Only one process per job samples: rank 0 (or the
only process).

The job's GPUs are found by UUID, the only id nvidia-smi and CUDA share for sure: nvidia-smi's
`index` is its own numbering, CUDA's integer ids count GPUs fastest first unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, and a scheduler may renumber the GPUs it exposes. Integer ids
are therefore read as positions in PCI bus order, which `monitor` makes the job's CUDA order
(`use_pci_device_order`, before CUDA starts); under another order they are reported, not
guessed. Sampling never fails the job: its errors are logged and sampling stops.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aha.launch.gpu_monitor")

ENV_LOG = "AHA_GPU_LOG"
# The GPUs the job owns, when CUDA_VISIBLE_DEVICES of the sampling process is fewer (the
# vLLM-server wrapper gives training all GPUs but the server's; see aha.launch.vllm_server).
ENV_DEVICES = "AHA_GPU_DEVICES"
# CUDA's device numbering: FASTEST_FIRST (CUDA's default) or PCI_BUS_ID, nvidia-smi's order.
ENV_ORDER = "CUDA_DEVICE_ORDER"
PCI_ORDER = "PCI_BUS_ID"
QUERY = (
    "timestamp",
    "index",
    "uuid",
    "pci.bus_id",
    "memory.used",
    "memory.total",
    "utilization.gpu",
)
# pci_bus_id last: files written before it had the other columns in this order
COLUMNS = (
    "elapsed_s",
    "timestamp",
    "index",
    "uuid",
    "memory_used_mib",
    "memory_total_mib",
    "utilization_pct",
    "pci_bus_id",
)
INTERVAL_S = 5.0
QUERY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment, as `nvidia-smi --query-gpu` reports it (MiB, percent)."""

    timestamp: str
    index: str
    uuid: str
    pci_bus_id: str
    memory_used_mib: float | None
    memory_total_mib: float | None
    utilization_pct: float | None


def is_rank_zero(env: Mapping[str, str] = os.environ) -> bool:
    """True for the one process of a job that samples: LOCAL_RANK and RANK unset or 0."""
    return all(env.get(name, "0").strip() in {"", "0"} for name in ("LOCAL_RANK", "RANK"))


def job_devices(env: Mapping[str, str] = os.environ) -> list[str] | None:
    """The job's GPU ids (integers or UUIDs): AHA_GPU_DEVICES, else CUDA_VISIBLE_DEVICES; None
    when neither is set (every GPU nvidia-smi lists is the job's)."""
    for name in (ENV_DEVICES, "CUDA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is not None:
            return [d.strip() for d in value.split(",") if d.strip()]
    return None


def use_pci_device_order(env: MutableMapping[str, str] = os.environ) -> bool:
    """Set CUDA_DEVICE_ORDER=PCI_BUS_ID where it is unset; whether CUDA's order is then PCI's.

    Integer CUDA ids name the GPUs nvidia-smi lists only in PCI bus order, and every process of
    a job (each rank, a vLLM server) must number GPUs alike. CUDA reads the variable once, when
    it starts: once it has started the variable is left alone, and the order is not PCI's.
    The workflow may call this for every job; `monitor` calls it in each job process.
    """
    order = env.get(ENV_ORDER, "").strip()
    if order:
        return order == PCI_ORDER
    if env is os.environ and _cuda_started():
        return False  # too late: this process counts fastest first, so must its children
    env[ENV_ORDER] = PCI_ORDER
    return True


def _cuda_started() -> bool:
    """Whether torch (if imported) has started CUDA in this process."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a half-imported or stub torch: assume not started
        return False


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
        stamp, index, uuid, bus, used, total, util = (cell.strip() for cell in row)
        samples.append(
            GpuSample(stamp, index, uuid, bus, _number(used), _number(total), _number(util))
        )
    return samples


def _pci_key(sample: GpuSample) -> tuple[int, tuple[int, ...]]:
    """Sort key of CUDA's PCI_BUS_ID order (domain, bus, device, function); nvidia-smi's index
    after every parseable bus id."""
    parts = re.fullmatch(
        r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)", sample.pci_bus_id
    )
    if parts:
        return 0, tuple(int(p, 16) for p in parts.groups())
    return 1, (int(sample.index) if sample.index.isdigit() else sys.maxsize,)


def select(
    samples: Sequence[GpuSample], devices: Sequence[str] | None, pci_order: bool = True
) -> tuple[list[GpuSample], list[str]]:
    """The job's GPUs among `samples` (in nvidia-smi's order), and why each device id that
    names none of them does not.

    `devices` are CUDA ids: UUIDs (`GPU-...`, or an unambiguous prefix, as CUDA accepts) or
    integers, positions in CUDA's order: PCI bus order when `pci_order`, else unknowable here.
    As in CUDA, an id that is no device hides the ids after it. MIG instances are not matched:
    `--query-gpu` reports whole GPUs, whose memory other instances share.
    """
    if devices is None:
        return list(samples), []
    if not devices:
        return [], ["the job lists no GPU (an empty CUDA_VISIBLE_DEVICES)"]
    by_pci = sorted(range(len(samples)), key=lambda i: _pci_key(samples[i]))
    chosen: set[int] = set()  # positions in `samples`
    problems = []
    for n, device in enumerate(devices):
        hits: list[int] = []
        if device.isdigit() and not pci_order:
            why = f"an integer id, but {ENV_ORDER} is not {PCI_ORDER}: which GPU is unknown"
        elif device.isdigit() and int(device) >= len(samples):
            why = f"nvidia-smi lists {len(samples)} GPU(s)"
        elif device.isdigit():
            hits, why = [by_pci[int(device)]], ""
        elif device.upper().startswith("GPU-"):
            hits = [i for i, s in enumerate(samples) if s.uuid.lower().startswith(device.lower())]
            why = "" if len(hits) == 1 else f"{len(hits) or 'no'} GPU(s) with this UUID"
            hits = hits if len(hits) == 1 else []
        elif device.upper().startswith("MIG-"):
            why = "a MIG instance, whose own memory nvidia-smi --query-gpu does not report"
        else:
            rest = devices[n + 1 :]
            why = "not a device id" + (f", so CUDA ignores {','.join(rest)} too" if rest else "")
            problems.append(f"CUDA device {device}: {why}; not sampled")
            break
        chosen.update(hits)
        if why:
            problems.append(f"CUDA device {device}: {why}; not sampled")
    return [s for i, s in enumerate(samples) if i in chosen], problems


class GpuMonitor:
    """Samples the job's GPUs into `path` every `interval` seconds between start() and stop().

    The file is (re)written from the first sample on, so a rerun's log replaces the failed
    attempt's and a job that got no sample (nvidia-smi failing) leaves none. Rows are flushed as
    they are written: a killed job keeps what it sampled. Which GPUs are the job's, and any id
    that matched none, is logged once.
    """

    def __init__(
        self,
        path: Path,
        interval: float = INTERVAL_S,
        executable: str = "nvidia-smi",
        devices: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        pci_order: bool = True,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.executable = executable
        self.devices = devices
        self.env = dict(env) if env is not None else None  # nvidia-smi's (None: this process's)
        self.pci_order = pci_order
        self.samples = 0  # queries that gave rows
        self.queries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._logged: set[str] = set()

    def _once(self, level: int, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.log(level, "%s", message)

    def query(self) -> list[GpuSample]:
        """One nvidia-smi query, the job's GPUs only; [] (logged) when it fails."""
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
        listed = parse_query(proc.stdout)
        rows, problems = select(listed, self.devices, self.pci_order)
        for problem in problems:
            self._once(logging.WARNING, f"GPU log {self.path}: {problem}")
        if rows:
            gpus = ", ".join(f"{s.index} ({s.uuid})" for s in rows)
            self._once(logging.INFO, f"GPU log {self.path}: sampling nvidia-smi GPU(s) {gpus}")
        elif listed:
            ids = ",".join(self.devices or []) or "none"
            self._once(
                logging.WARNING,
                f"GPU log {self.path}: none of the job's GPUs ({ids}) is among nvidia-smi's "
                f"{', '.join(s.uuid for s in listed)}; nothing is sampled",
            )
        return rows

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
                self.queries += 1
                if rows:
                    if out is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        out = self.path.open("w", encoding="utf-8")
                        out.write("\t".join(COLUMNS) + "\n")
                    for s in rows:
                        values = (s.memory_used_mib, s.memory_total_mib, s.utilization_pct)
                        cells = [str(elapsed), s.timestamp, s.index, s.uuid]
                        cells += ["NA" if v is None else f"{v:g}" for v in values]
                        out.write("\t".join([*cells, s.pci_bus_id]) + "\n")
                    out.flush()
                    self.samples += 1
                if self._stop.wait(self.interval):
                    return
        except Exception as err:  # a report input, never the job's failure
            log.warning("GPU log %s: %s; sampling stopped", self.path, err)
        finally:
            if out is not None:
                with contextlib.suppress(OSError):
                    out.close()


def _start(
    target: str | Path, interval: float, executable: str, env: Mapping[str, str], pci_order: bool
) -> GpuMonitor:
    devices = job_devices(env)
    if not pci_order:
        log.warning(
            "%s=%s, not %s: integer CUDA device ids cannot be matched to nvidia-smi's GPUs "
            "and are not sampled (give UUIDs, or leave the variable unset)",
            ENV_ORDER,
            env.get(ENV_ORDER) or "FASTEST_FIRST (unset when CUDA started)",
            PCI_ORDER,
        )
    sampler = GpuMonitor(Path(target), interval, executable, devices, env, pci_order)
    sampler.start()
    log.info("sampling GPU memory every %g s into %s", interval, target)
    return sampler


@contextlib.contextmanager
def monitor(
    path: str | Path | None = None,
    interval: float = INTERVAL_S,
    env: MutableMapping[str, str] = os.environ,
) -> Iterator[GpuMonitor | None]:
    """Sample this job's GPUs into `path` (default: $AHA_GPU_LOG) while the block runs.

    Call it before CUDA starts: it sets CUDA_DEVICE_ORDER=PCI_BUS_ID in `env` where unset (in
    every process, so all ranks number GPUs alike). Yields None and samples nothing when there
    is no path, no `nvidia-smi` on PATH, this is not rank 0, or sampling cannot start (logged).
    Stops and closes the log on exit, exceptions included; never raises one of its own.
    """
    sampler = None
    try:
        pci_order = use_pci_device_order(env)
        target = path if path is not None else env.get(ENV_LOG)
        executable = shutil.which("nvidia-smi", path=env.get("PATH"))
        if target and executable is not None and is_rank_zero(env):
            sampler = _start(target, interval, executable, env, pci_order)
    except Exception as err:  # no GPU log is no reason to fail the job
        log.warning("GPU sampling not started: %s", err)
    try:
        yield sampler
    finally:
        if sampler is not None:
            try:
                sampler.stop()
            except Exception as err:  # keep the job's own exception, if any
                log.warning("GPU sampling did not stop cleanly: %s", err)


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
