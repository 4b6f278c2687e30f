"""The workflow through a real SLURM (slurmctld + slurmd on localhost) and the slurm profile.

tests/slurm/local-slurm.sh installs and starts the cluster (root: apt-get when missing); the
tests run profiles/slurm/config.yaml with only what a single small node needs changed:
partition, no account, GPUs scaled to the node's fake ones, CPUs and memory scaled down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, snakemake

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "tests" / "slurm" / "local-slurm.sh"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
PREEMPT = ROOT / "tests" / "slurm" / "preempt"
PARTITION = "aha-test"
GPU_TYPE = "testgpu"
GPU_RULES = ("train", "sample", "sample_base")  # on stand-in GPUs here
CPUS = os.cpu_count() or 1
LOCAL_CORES = 2  # the tiny_dag fixture's --cores: jobs here get the same threads where they fit
THREADS = min(LOCAL_CORES, CPUS)
FAKE_GPUS = min(2, CPUS)  # one CPU per GPU must fit on the node
# Status checks suited to a toy cluster without accounting (squeue needs MinJobAge >= 3 x 2 s).
FAST_STATUS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2")


def _skip_reason() -> str | None:
    daemons = ("slurmctld", "slurmd", "munged")
    if os.geteuid() != 0 and not all(shutil.which(d) for d in daemons):
        return "needs root (to install slurm-wlm and munge) or SLURM daemons on PATH"
    return None


@contextlib.contextmanager
def running_cluster(prefix: str, settings: dict[str, str], label: str) -> Iterator[Path]:
    """tests/slurm/local-slurm.sh's cluster with `settings` (AHA_SLURM_*), SLURM_CONF and its
    bin/ first on PATH while inside; its directory. Stopped afterwards, also on failure."""
    # Directly under /tmp: munged, running as the munge user, must reach its socket and key.
    cluster = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, **settings}
    with pytest.MonkeyPatch.context() as mp:
        try:
            started = subprocess.run(
                [str(SCRIPT), "start", str(cluster)],
                env=env,
                text=True,
                capture_output=True,
                timeout=900,
            )
            assert started.returncode == 0, f"{label} did not start:\n{started.stderr[-4000:]}"
            mp.setenv("SLURM_CONF", str(cluster / "slurm.conf"))
            mp.setenv("PATH", f"{cluster / 'bin'}{os.pathsep}{os.environ['PATH']}")
            yield cluster
        finally:
            stopped = subprocess.run(
                [str(SCRIPT), "stop", str(cluster)],
                env=env,
                text=True,
                capture_output=True,
                timeout=120,
            )
            shutil.rmtree(cluster, ignore_errors=True)
            assert stopped.returncode == 0, f"{label} did not stop:\n{stopped.stderr}"


@pytest.fixture(scope="module")
def local_slurm() -> Iterator[Path]:
    """A running single-node cluster; its directory. Stopped afterwards, also on failure."""
    if reason := _skip_reason():
        pytest.skip(reason)
    settings = {
        "AHA_SLURM_PARTITION": PARTITION,
        "AHA_SLURM_GPUS": str(FAKE_GPUS),
        "AHA_SLURM_GPU_TYPE": GPU_TYPE,
    }
    with running_cluster("aha-slurm-", settings, "local SLURM") as cluster:
        yield cluster


def test_profile(dest: Path, **train: Any) -> Path:
    """The slurm profile, fitted to the local node; `train` overrides that rule's resources."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["slurm-no-account"] = True
    profile["cores"] = THREADS
    profile["set-threads"] = dict.fromkeys(profile["set-threads"], THREADS)
    defaults = profile["default-resources"]
    defaults.pop("slurm_account")
    defaults.update(slurm_partition=PARTITION, mem_mb=500)
    for rule, resources in profile["set-resources"].items():
        resources["slurm_partition"] = PARTITION
        resources["mem_mb_per_cpu" if "mem_mb_per_cpu" in resources else "mem_mb"] = 500
        if rule in GPU_RULES:  # train's GPUs come from the rule: none in cpu mode
            gpus = min(resources.get("gpu", FAKE_GPUS), FAKE_GPUS)
            resources.update(gpu=gpus, gpu_model=GPU_TYPE, cpus_per_gpu=1)
        if rule == "train":
            resources.update(train)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


test_profile.__test__ = False  # a helper, not a test


def slurm_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still remembers (MinJobAge), by id: `scontrol show job -o` fields."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o"], text=True, capture_output=True, check=True
    ).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def slurm_logs(logdir: Path) -> dict[str, Path]:
    """The plugin's per-job logs ({logdir}/rule_{rule}/[wildcards/]{jobid}.log), by job id."""
    return {p.stem: p for p in logdir.rglob("*.log")}


def job_stats(output: str) -> Counter[str]:
    """Snakemake's own "Job stats" table: jobs per rule, without the local `all`."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    stats = Counter({m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)})
    stats.pop("all", None)
    return stats


TORCH_THREADS = re.compile(r"torch threads (\d+) \(asked")


def torch_threads(workdir: Path) -> dict[str, list[str]]:
    """The torch threads each training kept as it started: fewer beside a busy neighbour
    (aha.launch.cpu_threads), such as another test, and fewer threads give other numbers."""
    logs = sorted((workdir / "logs" / "train").glob("*.log"))
    return {log.name: TORCH_THREADS.findall(log.read_text()) for log in logs}


def files_under(root: Path) -> set[str]:
    """Every file under `root`, relative; a TensorBoard event file by its folder, since its name
    carries the writer's start time, host and pid."""
    return {
        str(p.parent.relative_to(root) / EVENTS)
        if p.name.startswith(EVENTS)
        else str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
    }


EVENTS = "events.out.tfevents."


@pytest.mark.slow
def test_dag_runs_through_sbatch_and_matches_local_run(
    local_slurm: Path, tiny_dag: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "slurm-run"
    workdir.mkdir()
    profile = test_profile(tmp_path / "profile")
    proc = snakemake(
        workdir, "--workflow-profile", str(profile), *FAST_STATUS, "--jobs", "3", timeout=540
    )

    # Every job of the DAG went through sbatch: one SLURM log per job, each a job slurmctld ran
    # to completion, with the rule (the plugin's --comment) and the profile's GPUs.
    stats = job_stats(proc.stdout + proc.stderr)
    assert stats, proc.stderr[-2000:]
    logs = slurm_logs(workdir / "logs" / "slurm")
    assert sum(stats.values()) == len(logs), (stats, sorted(logs))
    jobs = slurm_jobs()
    assert set(logs) <= set(jobs)
    ran = Counter(jobs[j]["Comment"].split("_wildcards_")[0].removeprefix("rule_") for j in logs)
    assert ran == stats
    assert {jobs[j]["JobState"] for j in logs} == {"COMPLETED"}
    for j in logs:
        rule = jobs[j]["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        if rule in GPU_RULES:
            assert jobs[j]["TresPerJob"].startswith(f"gres:gpu:{GPU_TYPE}:"), jobs[j]

    # Same outputs as the local run of the same config.
    local, remote = tiny_dag / "results", workdir / "results"
    assert files_under(remote) == files_under(local) - {"report.html"}
    for name in ("train.parquet", "test.parquet", "eval.parquet"):
        assert (remote / "data" / name).read_bytes() == (local / "data" / name).read_bytes(), name
    if (local / "summary.tsv").exists():
        mine, theirs = (pd.read_csv(d / "summary.tsv", sep="\t") for d in (remote, local))
        threads = torch_threads(workdir), torch_threads(tiny_dag)
        assert threads[0].keys() == threads[1].keys(), threads
        assert all(threads[0].values()) and all(threads[1].values()), threads
        if THREADS == LOCAL_CORES and threads[0] == threads[1]:  # same seeds and threads
            pd.testing.assert_frame_equal(mine, theirs)  # the same numbers
        else:
            assert mine[["run", "step"]].values.tolist() == theirs[["run", "step"]].values.tolist()


@pytest.mark.slow
def test_time_limit_signal_then_resubmission_resumes_training(
    local_slurm: Path, tmp_path: Path
) -> None:
    # The profile's own --signal lead; a time limit one minute longer, so SIGTERM comes about a
    # minute into the job (SLURM checks every 30 s and may signal up to 60 s early).
    extra = yaml.safe_load(PROFILE.read_text())["set-resources"]["train"]["slurm_extra"]
    lead = re.fullmatch(r"--signal=TERM@(\d+)", extra)
    assert lead, f"train slurm_extra should ask for an early SIGTERM: {extra!r}"
    runtime = -(-int(lead[1]) // 60) + 1
    profile = test_profile(tmp_path / "profile", runtime=runtime)
    workdir = tmp_path / "preempt"
    workdir.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(PREEMPT / "Snakefile"),
        "-d",
        str(workdir),
        "--workflow-profile",
        str(profile),
        *FAST_STATUS,
        "--jobs",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=workdir, text=True, capture_output=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    done = json.loads((workdir / "done.json").read_text())
    assert done["resumed_from_step"] > 0
    assert done["saved_by_job"] != done["job"]  # state saved by the first job, used by the next
    jobs = slurm_jobs()
    assert jobs[done["saved_by_job"]]["JobState"] == "FAILED"
    # The interrupted job lasted until its state was saved (the trainer got time to save and
    # was not cut short by the end of the job step).
    ended = datetime.fromisoformat(jobs[done["saved_by_job"]]["EndTime"]).timestamp()
    assert ended >= int(done["saved_at"])
    assert jobs[done["job"]]["JobState"] == "COMPLETED"
    assert set(slurm_logs(workdir / "logs" / "slurm")) == {done["saved_by_job"], done["job"]}
