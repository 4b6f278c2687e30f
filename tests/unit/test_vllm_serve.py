"""What the server-mode wrapper starts and what it points the trainer at.

- The server: vLLM's own `vllm serve`, exactly the command `trl vllm-serve` (deprecated in TRL
  1.16) only execs, on 127.0.0.1, with the run's vllm_server options in vLLM's spelling; the
  argv goes through vLLM 0.30's own parser (the rehearsal environment's).
- The trainer: GRPOConfig's client keys come from the ports the wrapper chose for the job; the
  config may not set what the workflow owns.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from aha.config import ConfigError, check
from aha.launch.commands import LaunchError
from aha.launch.vllm_serve import server_command, server_flags
from aha.run import Run, build_all

ROOT = Path(__file__).resolve().parents[2]
PY = "/env/bin/python"
SERVER_RUN = {"name": "r", "mode": "zero3", "model": {"name_or_path": "M"},
              "grpo": {"use_vllm": True, "vllm_mode": "server"}}  # fmt: skip


# --- the server's command line ---------------------------------------------------------------


def test_server_flags_are_vllm_serve_options():
    options = {"gpu_memory_utilization": 0.5, "max-model-len": 2048, "enforce_eager": True,
               "enable_prefix_caching": False, "revision": None,
               "served_model_name": ["a", "b"]}  # fmt: skip
    assert server_flags(options) == [
        "--gpu-memory-utilization", "0.5", "--max-model-len", "2048", "--enforce-eager",
        "--no-enable-prefix-caching", "--served-model-name", "a", "b",
    ]  # fmt: skip


def test_server_command_is_what_trl_vllm_serve_execs():
    """TRL 1.16's `trl vllm-serve` only execs `vllm serve` with its own flags: the same
    command, bound to 127.0.0.1, the config's options replacing TRL's defaults."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    ours = server_command("M", port=8001, options={"enforce_eager": True}, python=PY)
    trl = build_command(ScriptArguments(model="M", port=8001, host="127.0.0.1", enforce_eager=True))
    assert ours[:5] == [PY, "-m", "vllm.entrypoints.cli.main", "serve", "M"]

    def options(argv: list[str]) -> dict[str, str]:
        found, key = {}, None
        for arg in argv[argv.index("serve") + 2 :]:
            if arg.startswith("--"):
                key = arg
                found[key] = ""
            else:
                found[key] = arg
        return found

    ours_opts, trl_opts = options(ours), options(trl)
    trl_opts.setdefault("--enable-scale-out", "")  # TRL adds it where vLLM >= 0.30 (our pin) is
    defaults = {"--tensor-parallel-size": "1", "--data-parallel-size": "1", "--dtype": "auto",
                "--kv-cache-dtype": "auto", "--uvicorn-log-level": "info"}  # fmt: skip
    # TRL spells out vLLM's own defaults; ours leaves them to vLLM, all else is identical
    assert {k: v for k, v in trl_opts.items() if k not in defaults} == ours_opts


def test_server_command_refuses_what_the_workflow_sets():
    for key in ("port", "host", "model", "max-logprobs", "weight_transfer_config"):
        with pytest.raises(LaunchError, match=rf"vllm_server\.{key}: set by the workflow"):
            server_command("M", port=1, options={key: 1})


# --- the trainer's side: the chosen ports, and config keys the workflow owns --------------


def test_the_trainer_is_pointed_at_the_ports_its_wrapper_chose(tmp_path):
    grpo = {**SERVER_RUN["grpo"], "max_steps": 2, "vllm_group_port": 52001}
    config = {"device": "cuda", "model": {"source": "hub", "name_or_path": "M"},
              "checkpoints": [2], "runs": {"r": {"mode": "zero3", "grpo": grpo}}}  # fmt: skip
    run = Run.build(config, "r")
    args = run.grpo_args(tmp_path, env={})  # not under the wrapper: the run's own keys
    assert "vllm_server_base_url" not in args and args["vllm_group_port"] == 52001
    env = {"AHA_VLLM_SERVER_URL": "http://127.0.0.1:41234", "AHA_VLLM_GROUP_PORT": "52001"}
    args = run.grpo_args(tmp_path, env=env)
    assert args["vllm_server_base_url"] == "http://127.0.0.1:41234"
    assert (args["vllm_server_host"], args["vllm_server_port"]) == ("127.0.0.1", 41234)
    assert args["vllm_group_port"] == 52001
    with pytest.raises(ConfigError, match=r"grpo\.vllm_group_port: 52001, but the server"):
        run.grpo_args(tmp_path, env={**env, "AHA_VLLM_GROUP_PORT": "52002"})  # not the pinned one
    config["runs"]["r"]["grpo"] = {**grpo, "vllm_mode": "colocate"}
    assert "vllm_server_base_url" not in Run.build(config, "r").grpo_args(tmp_path, env=env)


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("grpo", "vllm_server_host", "10.0.0.1", r"grpo\.vllm_server_host: set by the workflow"),
        ("grpo", "vllm_server_base_url", "http://h:1", r"grpo\.vllm_server_base_url: set by"),
        ("vllm_server", "port", 9000, r"vllm_server\.port: set by the workflow"),
        ("vllm_server", "max-logprobs", 5, r"vllm_server\.max-logprobs: set by the workflow"),
        ("grpo", "vllm_group_port", 8000, r"grpo\.vllm_group_port: 8000 is vllm_server_port"),
    ],
)
def test_server_keys_the_workflow_sets_are_refused_at_dag_build(where, key, value, message):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    check(copy.deepcopy(config))
    run = config["runs"]["qwen-zero3"]
    if key == "vllm_group_port":
        run["grpo"]["vllm_server_port"] = 8000
    run[where][key] = value
    with pytest.raises(ConfigError, match=rf"^runs\.qwen-zero3\.{message}"):
        check(config)  # the DAG's checks: the config's, then every run's as it is built
        build_all(config)
