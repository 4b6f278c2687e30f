"""Two server-mode trainings on one node at once, for real: each talks to its own vLLM server.

Two replicates (seeds 42 and 43) of the rehearsal's qwen-zero3 (DeepSpeed ZeRO-3 ranks + vLLM's
CPU build behind `vllm serve`) train at the same time, with the environment's http_proxy
pointing at a dead address, as on a cluster that sets one without no_proxy. Both must train;
their servers must listen on different ports (chosen per job, none pinned), and each server's
log must hold generation requests: had one trainer reached the other's server, its own
server's log would hold none.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import REHEARSAL_CONFIGS, copy_inputs, rehearsal_python, snakemake

pytestmark = pytest.mark.slow

RUN = "qwen-zero3"
SEEDS = (42, 43)
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there
GENERATE = re.compile(r'"POST /(?:inference/v1/generate|v1/completions) HTTP')
PORTS = re.compile(r"ports: server http://127\.0\.0\.1:(\d+), weight-sync group (\d+)")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ aha\.", re.M)


def overlay(tmp_path: Path) -> Path:
    """Two replicates, two steps each: the shortest run that still generates and saves."""
    run = {"seeds": list(SEEDS), "checkpoints": [2], "grpo": {"max_steps": 2}}
    path = tmp_path / "two-servers.yaml"
    path.write_text(yaml.safe_dump({"runs": {RUN: run}}))
    return path


def test_two_server_runs_at_once_each_use_their_own_server(
    tmp_path: Path, rehearsal_inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = rehearsal_python()  # skips without .venv-rehearsal
    copy_inputs(rehearsal_inputs, tmp_path)  # the tiny model and data, built once per session
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    targets = [f"results/runs/{RUN}/seed-{seed}/checkpoints" for seed in SEEDS]
    configs = [*REHEARSAL_CONFIGS, overlay(tmp_path)]
    # 6 cores: both train jobs (2 threads each) are scheduled at once
    snakemake(tmp_path, "--cores", "6", *targets, configfile=configs, python=python)

    logs = tmp_path / "logs" / "train"
    ports, spans, served = {}, {}, {}
    for seed in SEEDS:
        manifest = tmp_path / f"results/runs/{RUN}/seed-{seed}/checkpoints/step-2.json"
        assert manifest.is_file(), f"seed {seed} did not train"
        log = (logs / f"{RUN}-seed{seed}.log").read_text()
        found = PORTS.search(log)
        assert found, f"seed {seed}: the wrapper logged no ports:\n{log[-3000:]}"
        ports[seed] = (int(found.group(1)), int(found.group(2)))
        assert "already in use" not in log  # no port of another job: rendezvous included
        server_log = (logs / f"{RUN}-seed{seed}.vllm-server.log").read_text()
        assert f"--host 127.0.0.1 --port {ports[seed][0]} " in server_log.splitlines()[0]
        served[seed] = len(GENERATE.findall(server_log))
        assert served[seed] > 0, f"seed {seed}: its server served no generation request"
        stamps = [datetime.fromisoformat(t) for t in STAMP.findall(log)]
        spans[seed] = (min(stamps), max(stamps))
    (a_server, a_group), (b_server, b_group) = ports[SEEDS[0]], ports[SEEDS[1]]
    assert len({a_server, a_group, b_server, b_group}) == 4, ports
    # the same run, the same number of generations: each its own trainer's, none the other's
    assert served[SEEDS[0]] == served[SEEDS[1]], served
    (a_start, a_end), (b_start, b_end) = spans[SEEDS[0]], spans[SEEDS[1]]
    assert a_start < b_end and b_start < a_end, f"the two trainings did not overlap: {spans}"
