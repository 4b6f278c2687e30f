"""Multi-node jobs through a real two-node SLURM on this one host (issue #21).

`AHA_SLURM_NODES=2 tests/slurm/local-slurm.sh start DIR` runs slurmctld here and two slurmd, each
in its own network, UTS and mount namespaces: hosts aha-n1 (10.77.X.2) and aha-n2 (10.77.X.3) on a
bridge with this host (10.77.X.1), each with its own fake GPUs and the same file tree. The node
names resolve on the nodes (DIR/hosts on their /etc/hosts), not on this host, so every check that
needs them runs inside a job.

Inside a job: the batch script runs on the first node; its `hostname`, or the first name of
`scontrol show hostnames "$SLURM_JOB_NODELIST"`, is the rendezvous host, and SLURM_LAUNCH_NODE_IPADDR
of every task that srun starts there is that node's address.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REHEARSAL_CONFIGS, ROOT, rehearsal_python, snakemake
from tests.integration.test_slurm import (
    FAST_STATUS,
    GPU_TYPE,
    PARTITION,
    _skip_reason,
    running_cluster,
    slurm_logs,
    test_profile,
)

pytestmark = pytest.mark.slurm

NODES = 2
GPUS_PER_NODE = 2
NODE_NAMES = {f"aha-n{i}" for i in range(1, NODES + 1)}
ALLREDUCE = ROOT / "tests" / "slurm" / "allreduce.py"
NODES_SNAKEFILE = ROOT / "tests" / "slurm" / "nodes" / "Snakefile"
JOB_TIMEOUT = 180  # seconds: a job of the tests below takes under 30 s on 2 cores
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


def _nodes_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the second node is a network namespace with a veth"
    missing = [t for t in ("ip", "unshare", "nsenter") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)} (iproute2, util-linux)"
    return _skip_reason()


@pytest.fixture(scope="module")
def two_node_slurm() -> Iterator[Path]:
    """A running two-node cluster; its directory. Stopped afterwards, also on failure."""
    if reason := _nodes_skip_reason():
        pytest.skip(reason)
    settings = {
        "AHA_SLURM_NODES": str(NODES),
        "AHA_SLURM_PARTITION": PARTITION,
        "AHA_SLURM_GPUS": str(GPUS_PER_NODE),
        "AHA_SLURM_GPU_TYPE": GPU_TYPE,
    }
    with running_cluster("aha-slurm-nodes-", settings, "two-node SLURM") as cluster:
        yield cluster


def job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job], text=True, capture_output=True, timeout=30
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def run_batch(script: str, workdir: Path, *sbatch_args: str) -> tuple[dict[str, str], str]:
    """Submit `script` from `workdir`, wait until it ends; its scontrol fields and its output."""
    path = workdir / "job.sh"
    path.write_text(script)
    log = workdir / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--output", str(log), "--time", "5", *sbatch_args, str(path)],
        cwd=workdir,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert submitted.returncode == 0, f"sbatch failed: {submitted.stderr}"
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_TIMEOUT
    fields = job_fields(job)
    while fields.get("JobState") not in DONE:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=30)
            output = log.read_text() if log.exists() else "(no output yet)"
            raise AssertionError(
                f"job {job} ({' '.join(sbatch_args)}) still {fields.get('JobState')} on "
                f"{fields.get('NodeList')} after {JOB_TIMEOUT} s (reason {fields.get('Reason')}):"
                f"\n{output[-3000:]}"
            )
        time.sleep(0.5)
        fields = job_fields(job)
    return fields, log.read_text() if log.exists() else ""


def test_two_nodes_idle_each_with_its_gpus(two_node_slurm: Path) -> None:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t %G"], text=True, capture_output=True, timeout=30
    ).stdout
    assert sorted(out.split("\n")[:-1]) == sorted(
        f"{n} idle gpu:{GPU_TYPE}:{GPUS_PER_NODE}" for n in NODE_NAMES
    ), out


def test_srun_in_a_two_node_batch_job_runs_on_both_hosts(
    two_node_slurm: Path, tmp_path: Path
) -> None:
    script = """#!/bin/bash
set -euo pipefail
srun --kill-on-bad-exit=1 -l hostname
srun --kill-on-bad-exit=1 -l bash -c 'echo "gpus=$CUDA_VISIBLE_DEVICES" > "gpus-$(hostname)"'
"""
    fields, output = run_batch(
        script, tmp_path, "--nodes", "2", "--ntasks-per-node", "1", f"--gres=gpu:{GPUS_PER_NODE}"
    )
    assert fields["JobState"] == "COMPLETED", output
    lines = sorted(output.split("\n")[:-1])
    assert lines == ["0: aha-n1", "1: aha-n2"], output
    # The same working directory on both nodes; --gres is per node: each has all of its GPUs.
    all_gpus = ",".join(map(str, range(GPUS_PER_NODE)))
    for node in NODE_NAMES:
        assert (tmp_path / f"gpus-{node}").read_text() == f"gpus={all_gpus}\n"


def check_ranks(ranks: Path) -> list[dict[str, object]]:
    """Each node's rank reached the all_reduce; what the ranks saw."""
    seen = [json.loads(p.read_text()) for p in sorted(ranks.glob("rank*.json"))]
    assert [s["rank"] for s in seen] == list(range(NODES)), seen
    assert {s["hostname"] for s in seen} == NODE_NAMES
    assert {s["sum"] for s in seen} == {NODES * (NODES + 1) / 2}
    # The first node resolves to the same address on every node, its own (not 127.0.0.1), and
    # srun's launch address in every task is that address (srun runs in the batch script there).
    (first,) = {s["first_node"] for s in seen}
    assert first == "aha-n1"
    (first_address,) = {s["first_node_address"] for s in seen}
    by_host = {s["hostname"]: s for s in seen}
    assert by_host[first]["address"] == first_address
    assert not first_address.startswith("127.")
    assert {s["SLURM_LAUNCH_NODE_IPADDR"] for s in seen} == {first_address}
    return seen


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_torch_gloo_all_reduce_across_two_nodes(
    two_node_slurm: Path, tmp_path: Path, launcher: str
) -> None:
    pytest.importorskip("torch")
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    py = sys.executable
    if launcher == "torchrun":  # c10d rendezvous: the agent on the endpoint's host serves it
        step = (
            f'{py} -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-id "$SLURM_JOB_ID"'
            ' --rdzv-backend c10d --rdzv-endpoint "$first:29400" --rdzv-conf join_timeout=60'
            f" {ALLREDUCE} {ranks}"
        )
    else:  # rank 0 serves the TCPStore on MASTER_ADDR:MASTER_PORT
        step = f'env MASTER_ADDR="$first" MASTER_PORT=29500 {py} {ALLREDUCE} {ranks}'
    script = f"""#!/bin/bash
set -euo pipefail
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --kill-on-bad-exit=1 -l {step}
"""
    fields, output = run_batch(script, tmp_path, "--nodes", "2", "--ntasks-per-node", "1")
    assert fields["JobState"] == "COMPLETED", output
    seen = check_ranks(ranks)
    if launcher == "torchrun":
        assert {s["master"].split(":")[0] for s in seen} == {"aha-n1"}  # torchrun's own store


def test_snakemake_rule_runs_one_batch_script_across_two_nodes(
    two_node_slurm: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = {
        "nodes": NODES,
        "gpus_per_node": GPUS_PER_NODE,
        "gpu_type": GPU_TYPE,
        "cpus_per_node": os.cpu_count() or 1,
        "python": sys.executable,
        "script": str(ALLREDUCE),
    }
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(NODES_SNAKEFILE),
        "-d",
        str(workdir),
        "--executor",
        "slurm",
        "--slurm-no-account",
        "--slurm-logdir",
        "logs/slurm",
        "--slurm-keep-successful-logs",
        "--default-resources",
        f"slurm_partition={PARTITION}",
        *FAST_STATUS,
        "--jobs",
        "1",
        "--latency-wait",
        "10",
        "--config",
        *(f"{k}={v}" for k, v in config.items()),
    ]
    proc = subprocess.run(
        cmd, cwd=workdir, text=True, capture_output=True, timeout=JOB_TIMEOUT + 120
    )
    logs = "\n".join(p.read_text() for p in (workdir / "logs" / "slurm").rglob("*.log"))
    assert proc.returncode == 0, proc.stderr[-4000:] + logs[-4000:]
    check_ranks(workdir / "ranks")
    # The plugin's sbatch line: one task a node, GPUs per node, no --ntasks-per-gpu.
    (job,) = {p.stem for p in (workdir / "logs" / "slurm").rglob("*.log")}  # {jobid}.log
    fields = job_fields(job)
    assert fields["JobState"] == "COMPLETED"
    assert fields["NumNodes"] == str(NODES) and fields["NumTasks"] == str(NODES), fields
    assert fields["TresPerNode"] == f"gres:gpu:{GPU_TYPE}:{GPUS_PER_NODE}", fields
    assert "TresPerTask" not in fields or "gpu" not in fields["TresPerTask"], fields
    # The rule's command ran on the first node, without the allocation's SLURM_* (the jobstep
    # drops them): its srun found the allocation by SLURM_JOB_ID alone.
    assert (workdir / "ranks" / "jobstep-host.txt").read_text().strip() == "aha-n1"
    env = (workdir / "ranks" / "jobstep-env.txt").read_text()
    assert "SLURM_JOB_ID=" in env and "SLURM_JOB_NODELIST=" not in env, env


NODES_RUN = "qwen-zero3-colocate-nodes"  # config/rehearsal.yaml: 2 nodes x 1 CPU rank, colocated
SLURM_PLUGINS = ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep")


def slurm_plugins_for(python: Path, dest: Path) -> Path:
    """A folder for PYTHONPATH that gives `python` the SLURM plugins of the interpreter running
    the tests (links to its packages, nothing installed). The rehearsal environment lacks them:
    their numpy pin conflicts with vLLM's. Snakemake finds plugins by module name on sys.path."""
    specs = [importlib.util.find_spec(m) for m in SLURM_PLUGINS]
    if not all(specs):
        pytest.skip(f"{sys.executable} has no SLURM plugin ({', '.join(SLURM_PLUGINS)})")
    dest.mkdir(parents=True, exist_ok=True)
    for name, spec in zip(SLURM_PLUGINS, specs, strict=True):
        (dest / name).symlink_to(Path(spec.origin).parent)
    check = subprocess.run(
        [str(python), "-c", "import " + ", ".join(SLURM_PLUGINS)],
        env={**os.environ, "PYTHONPATH": str(dest)}, text=True, capture_output=True,
    )  # fmt: skip
    assert check.returncode == 0, f"{python} cannot import the linked plugins:\n{check.stderr}"
    return dest


def restore_slurm_conf(cluster: Path, tool: str) -> None:
    """Put a `tool` first on PATH (cluster/bin) that sets SLURM_CONF, as local-slurm.sh does for
    srun: the plugin's job step drops SLURM_CONF, and `aha nodes` calls scontrol there (the
    job's node list and CPUs). A cluster with its slurm.conf in /etc/slurm needs none."""
    wrapper = cluster / "bin" / tool
    if wrapper.exists():
        return
    real = shutil.which(tool)
    assert real, f"no {tool} on PATH"
    wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF={cluster / "slurm.conf"}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)


@pytest.mark.slow
def test_a_run_across_nodes_trains_as_one_slurm_job_on_both_nodes(
    two_node_slurm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real train rule of a run across nodes, through the slurm profile: one SLURM job of
    two nodes whose `aha nodes` sruns one `aha node` on each; machine ranks 0 and 1 meet at
    machine 0's rendezvous on aha-n1 and train two ZeRO-3 steps with vLLM colocated (CPU)."""
    python = rehearsal_python()
    restore_slurm_conf(two_node_slurm, "scontrol")
    # Snakemake runs in the rehearsal environment (vLLM, DeepSpeed), so every job does too: the
    # job step reruns Snakemake with the submitter's interpreter, and the rules' `python` is that
    # one's (common.smk's shell.prefix). PYTHONPATH reaches the jobs (sbatch --export=ALL).
    monkeypatch.setenv("PYTHONPATH", str(slurm_plugins_for(python, tmp_path / "plugins")))
    profile_dir = test_profile(tmp_path / "profile")
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    profile["retries"] = 0  # one train job: a failure shows as is
    train = profile["set-resources"]["train"]
    for key in ("gpu", "gpu_model", "cpus_per_gpu"):  # CPU ranks: the rule asks for no GPUs
        train.pop(key, None)
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    overrides = tmp_path / "short.yaml"
    overrides.write_text(
        yaml.safe_dump({"runs": {NODES_RUN: {"checkpoints": [2], "grpo": {"max_steps": 2}}}})
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_dir = workdir / "results" / "runs" / NODES_RUN / "seed-42"
    proc = snakemake(
        workdir,
        "--workflow-profile",
        str(profile_dir),
        *FAST_STATUS,
        "--jobs",
        "1",
        "--latency-wait",
        "10",
        str(run_dir.relative_to(workdir) / "checkpoints"),
        configfile=[*REHEARSAL_CONFIGS, overrides],
        python=python,
        check=False,
        timeout=1500,
    )
    train_log = workdir / "logs" / "train" / f"{NODES_RUN}-seed42.log"
    log = train_log.read_text() if train_log.exists() else "(no train log)"
    slurm_dir = workdir / "logs" / "slurm"
    assert proc.returncode == 0, (
        proc.stderr[-4000:]
        + "\n".join(p.read_text()[-3000:] for p in slurm_dir.rglob("*.log"))
        + log[-4000:]
    )

    # One SLURM job of two nodes for the train rule, one task a node.
    (job,) = slurm_logs(slurm_dir / "rule_train")
    fields = job_fields(job)
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["NumNodes"] == str(NODES) and fields["NumTasks"] == str(NODES), fields
    assert fields["NodeList"] == "aha-n[1-2]", fields
    # Both machine ranks, each on its own node, at machine 0's one point on aha-n1's address.
    points = re.findall(r"aha node (\d)/2 on (\S+): rendezvous (\S+):(\d+)", log)
    assert sorted((rank, host) for rank, host, _, _ in points) == [
        ("0", "aha-n1"),
        ("1", "aha-n2"),
    ], log[-4000:]
    ((address, _),) = {(a, p) for _, _, a, p in points}
    assert not address.startswith("127."), address
    assert "training on aha-n1, aha-n2; rendezvous at aha-n1" in log
    assert not list((run_dir / "trainer").glob("rendezvous-*.json"))
    # Two steps trained; the checkpoint manifest and the gathered weights of step 2.
    steps = [json.loads(line).get("step") for line in (run_dir / "train_log.jsonl").open()]
    assert max(s for s in steps if s is not None) == 2, steps
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*.json")] == ["step-2.json"]
    assert (run_dir / "weights" / "step-2" / "model.safetensors").is_file()
