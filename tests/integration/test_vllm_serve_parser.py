"""`vllm serve`'s own parser over the wrapper's command: imports vLLM in the rehearsal env (seconds)."""

from __future__ import annotations

import json
import subprocess
import textwrap


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
