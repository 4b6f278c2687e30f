"""Shared fixtures: run the real workflow in a scratch directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
TINY_TEST_CONFIG = ROOT / "tests" / "data" / "tiny-test.yaml"


def snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | None = TINY_TEST_CONFIG,
    check: bool = True,
    timeout: float = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run this repository's workflow with `workdir` as working directory; output captured."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, text=True, capture_output=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_dag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole tiny DAG, really run once per session (small override config), plus the report.

    Returns the working directory holding results/, logs/ and results/report.html.
    """
    workdir = tmp_path_factory.mktemp("tiny-dag")
    snakemake(workdir, "--cores", "2")
    snakemake(workdir, "--cores", "2", "--report", "results/report.html")
    return workdir


@pytest.fixture
def workdir_copy(tmp_path: Path, tiny_dag: Path) -> Path:
    """A private copy of the finished tiny DAG, for tests that modify it."""
    dst = tmp_path / "dag"
    shutil.copytree(tiny_dag, dst, symlinks=True)
    return dst
