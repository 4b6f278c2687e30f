"""Shared fixtures: run the real workflow in a scratch directory; the two tiers' rule.

tests/unit is the inner loop (`make unit`): pure and fast, no test marked slow, slurm or browser.
tests/integration (`make integration`) runs the real DAGs, the rehearsal, SLURM and the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
TINY_TEST_CONFIG = ROOT / "tests" / "data" / "tiny-test.yaml"
# The rehearsal: the seed config with config/rehearsal.yaml merged over it (make rehearsal).
REHEARSAL_CONFIGS = (ROOT / "config" / "config.yaml", ROOT / "config" / "rehearsal.yaml")
UNIT = ROOT / "tests" / "unit"
# Markers of tests too slow or too heavy for the unit tier (pyproject.toml declares them).
INTEGRATION_ONLY = ("slow", "slurm", "browser")


# `make test` runs on two pytest-xdist workers (`-n 2 --dist loadgroup`): most tests wait on a
# subprocess more than they compute. Tests that share what is costly to build stay on one
# worker, which builds it once: the session's tiny DAG with the local SLURM clusters (one at a
# time on a host; test_slurm.py compares its run with the tiny DAG), the rehearsal DAG, and the
# modules whose module-scoped fixture trains. Grouped by module, by our own scheduler: xdist
# 3.8's loadgroup reads `xdist_group` marks from node ids, which pytest 9.2 no longer lets it
# change, so it does not group at all (pytest-xdist issue #1386). Every other test goes alone.
WORKER_GROUPS = {
    "tiny-dag": ("test_e2e.py", "test_browser.py", "test_slurm.py", "test_slurm_nodes.py"),
    "rehearsal-dag": ("test_rehearsal.py",),
    "tracking": ("test_tracking.py",),
    "train-runs": ("test_train_runs.py",),
}
MODULE_GROUP = {module: group for group, modules in WORKER_GROUPS.items() for module in modules}
# What a test may only use from a module of its group: else that worker builds it again.
SHARED_BUILDS = {
    "tiny_dag": "tiny-dag",
    "workdir_copy": "tiny-dag",
    "rehearsal_dag": "rehearsal-dag",
}


def shared_build_outside_its_group(item: pytest.Item) -> str | None:
    """The group a test should be in and is not (`WORKER_GROUPS`), if any."""
    wanted = {
        SHARED_BUILDS[name] for name in getattr(item, "fixturenames", ()) if name in SHARED_BUILDS
    }
    if item.get_closest_marker("slurm"):
        wanted.add("tiny-dag")
    group = MODULE_GROUP.get(item.path.name)
    return next((want for want in sorted(wanted) if want != group), None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup`, by the module groups above; None (xdist's own) for other modes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return MODULE_GROUP.get(module, nodeid)

    return ModuleGroups(config, log)


@pytest.hookimpl(trylast=True)  # after -m, -k and --deselect: only the tests that would run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A unit test marked slow, slurm or browser belongs in tests/integration: refused."""
    misplaced = [
        f"{item.nodeid} ({', '.join(m for m in INTEGRATION_ONLY if item.get_closest_marker(m))})"
        for item in items
        if item.path.is_relative_to(UNIT)
        and any(item.get_closest_marker(m) for m in INTEGRATION_ONLY)
    ]
    if misplaced:
        raise pytest.UsageError(
            "tests/unit is the fast tier; move these to tests/integration:\n  "
            + "\n  ".join(misplaced)
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test sharing a costly build from a module outside its group fails (a UsageError at
    collection would be lost inside an xdist worker)."""
    group = shared_build_outside_its_group(item)
    if group is not None:
        pytest.fail(
            f"{item.path.name} shares the {group} build: add it to that group of "
            "tests/conftest.py WORKER_GROUPS, or its worker builds it again",
            pytrace=False,
        )


def snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | Sequence[Path] | None = TINY_TEST_CONFIG,
    check: bool = True,
    timeout: float = 1800,
    python: str | Path = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """Run this repository's workflow with `workdir` as working directory; output captured.

    `configfile` may be several files, merged in order; `python` is the environment that runs
    Snakemake and so every rule (the rehearsal environment for the GPU modes on CPU).
    """
    cmd = [str(python), "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if configfile is not None:
        files = [configfile] if isinstance(configfile, Path) else list(configfile)
        cmd += ["--configfile", *map(str, files)]
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


@pytest.fixture(scope="session")
def tiny_train_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config/tiny.yaml's train split, made by the data stage as the DAG makes it."""
    import yaml

    from aha.__main__ import main

    out = tmp_path_factory.mktemp("tiny-data")
    dataset = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())["dataset"]
    main(["prepare-data", "--dataset", json.dumps(dataset), "--out-dir", str(out)])
    return out / "train.parquet"


def rehearsal_python() -> Path:
    """The rehearsal environment's interpreter (vLLM CPU, DeepSpeed, bitsandbytes).

    Missing, the rehearsal tests are skipped on a developer's machine and fail under CI: `make
    test` installs it, so a CI run without it is a broken install, not a reason to skip.
    """
    python = Path(
        os.environ.get("AHA_REHEARSAL_PYTHON", ROOT / ".venv-rehearsal" / "bin" / "python")
    )
    if not python.exists():
        message = f"{python} missing: run `make install-rehearsal`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="session")
def rehearsal_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rehearsal's tiny model and data, built by the DAG once per session: a `results/`
    for tests that train one run to copy in (`copy_inputs`), whose overrides touch neither."""
    workdir = tmp_path_factory.mktemp("rehearsal-inputs")
    snakemake(workdir, "--cores", "2", "results/models/tiny", "results/data/train.parquet",
              configfile=REHEARSAL_CONFIGS, python=rehearsal_python())  # fmt: skip
    return workdir / "results"


def copy_inputs(inputs: Path, workdir: Path) -> None:
    """Copy built inputs into `workdir`, times kept, so that its DAG takes them as built."""
    shutil.copytree(inputs, workdir / "results")


@pytest.fixture(scope="session")
def rehearsal_dag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`make rehearsal`, really run once per session: the seed's runs on the CPU, and the report.

    Returns the working directory and what Snakemake printed while building and running the DAG.
    """
    python = rehearsal_python()
    workdir = tmp_path_factory.mktemp("rehearsal")
    run = snakemake(workdir, "--cores", "2", configfile=REHEARSAL_CONFIGS, python=python)
    snakemake(
        workdir,
        "--cores",
        "2",
        "--report",
        "results/report.html",
        configfile=REHEARSAL_CONFIGS,
        python=python,
    )
    return workdir, run.stdout + run.stderr
