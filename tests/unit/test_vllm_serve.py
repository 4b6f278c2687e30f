"""What the server-mode wrapper starts and what it points the trainer at.

- The server: vLLM's own `vllm serve`, exactly the command `trl vllm-serve` (deprecated in TRL
  1.16) only execs, on 127.0.0.1, with the run's vllm_server options in vLLM's spelling; the
  argv goes through vLLM 0.30's own parser (the rehearsal environment's).
- The trainer: GRPOConfig's client keys come from the ports the wrapper chose for the job; the
  config may not set what the workflow owns.
"""

from __future__ import annotations

import copy
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from aha.config import ConfigError, check
from aha.launch.commands import LaunchError
from aha.launch.vllm_serve import server_command, server_flags

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


def test_server_command_parses_with_vllm_serve_itself():
    """The argv goes through `vllm serve`'s own parser (vLLM 0.30, the rehearsal's build)."""
    from tests.conftest import rehearsal_python

    code = textwrap.dedent(
        """
        import json, sys
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from aha.launch.vllm_serve import server_command

        parser = FlexibleArgumentParser(prog="vllm")
        ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
        options = json.loads(sys.argv[1])
        argv = server_command("results/models/tiny", port=8001, options=options)
        args = parser.parse_args(argv[argv.index("serve") :])
        keys = ("model_tag", "host", "port", "gpu_memory_utilization", "enforce_eager",
                "enable_prefix_caching", "max_model_len", "logprobs_mode", "max_logprobs",
                "enable_scale_out", "model_impl")
        print(json.dumps({**{k: getattr(args, k) for k in keys},
                          "weight_transfer": args.weight_transfer_config.backend}))
        """
    )
    options = {"gpu_memory_utilization": 0.5, "enforce_eager": True,
               "enable_prefix_caching": False, "max-model-len": 256}  # fmt: skip
    out = subprocess.run(
        [str(rehearsal_python()), "-c", code, json.dumps(options)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed == {
        "model_tag": "results/models/tiny", "host": "127.0.0.1", "port": 8001,
        "gpu_memory_utilization": 0.5, "enforce_eager": True, "enable_prefix_caching": False,
        "max_model_len": 256, "logprobs_mode": "processed_logprobs", "max_logprobs": -1,
        "enable_scale_out": True, "model_impl": "vllm", "weight_transfer": "nccl",
    }  # fmt: skip


def test_server_command_refuses_what_the_workflow_sets():
    for key in ("port", "host", "model", "max-logprobs", "weight_transfer_config"):
        with pytest.raises(LaunchError, match=rf"vllm_server\.{key}: set by the workflow"):
            server_command("M", port=1, options={key: 1})


# --- the trainer's side: the chosen ports, and config keys the workflow owns --------------


def test_the_trainer_is_pointed_at_the_ports_its_wrapper_chose(monkeypatch, tmp_path):
    from aha.sections import RunSpec
    from aha.stages import train

    view = {**SERVER_RUN, "device": "cuda", "checkpoints": [2], "grpo": {
        **SERVER_RUN["grpo"], "max_steps": 2, "vllm_group_port": 52001}}  # fmt: skip
    spec = RunSpec.from_view(view)
    monkeypatch.delenv("AHA_VLLM_SERVER_URL", raising=False)
    args = train.build_grpo_args(spec, tmp_path)  # not under the wrapper: the run's own keys
    assert "vllm_server_base_url" not in args and args["vllm_group_port"] == 52001
    monkeypatch.setenv("AHA_VLLM_SERVER_URL", "http://127.0.0.1:41234")
    monkeypatch.setenv("AHA_VLLM_GROUP_PORT", "52001")
    args = train.build_grpo_args(spec, tmp_path)
    assert args["vllm_server_base_url"] == "http://127.0.0.1:41234"
    assert (args["vllm_server_host"], args["vllm_server_port"]) == ("127.0.0.1", 41234)
    assert args["vllm_group_port"] == 52001
    monkeypatch.setenv("AHA_VLLM_GROUP_PORT", "52002")  # not the pinned one
    with pytest.raises(ConfigError, match=r"grpo\.vllm_group_port: 52001, but the server"):
        train.build_grpo_args(spec, tmp_path)
    colocate = RunSpec.from_view({**view, "grpo": {**view["grpo"], "vllm_mode": "colocate"}})
    assert "vllm_server_base_url" not in train.build_grpo_args(colocate, tmp_path)


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
        check(config)
