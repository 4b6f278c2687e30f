"""`python -m aha STAGE ...`: one entry point for every workflow stage.

Stage modules are imported only when their stage runs, so `python -m aha score` never pays for
importing torch and `--help` is instant. Each module exposes `cli(argv, prog)`, built with
`aha.cli`.
"""

from __future__ import annotations

import importlib
import sys

# stage name -> one-line description; its module is aha.stages.<name with _> unless ELSEWHERE
STAGES: dict[str, str] = {
    "prepare-data": "load or generate Countdown tasks; write train/test/eval splits",
    "build-tiny-model": "build the offline tiny tokenizer + Qwen2 model and warm-start it",
    "train": "GRPO training of one run with TRL; checkpoints at configured steps",
    "sample": "sample completions for the eval prompts from one checkpoint",
    "score": "success rate, pass@k, format, lengths and aha behaviours",
    "aggregate": "collect every score file into results/summary.tsv",
    "plots": "seaborn figures for the report",
    "tables": "HTML tables for the report",
    "compute": "wall, CPU and GPU hours per stage and s/step for the report",
    "check-gpu": "check CUDA, GPU packages and the model before a GPU run",
    "check-contracts": "check every device branch's CUDA arguments with pinned libraries; no GPU",
    "with-vllm-server": "run a command beside vLLM's own `vllm serve` on the last GPU",
    "nodes": "train one zero3 run across nodes: one `aha node` per node (srun, or stand-ins)",
    "node": "one node of a run across nodes: the c10d rendezvous, then `accelerate launch`",
}
ELSEWHERE = {
    "check-gpu": "aha.launch.gpu",
    "check-contracts": "aha.contracts",
    "with-vllm-server": "aha.launch.vllm_server",
    "nodes": "aha.launch.nodes:nodes_cli",
    "node": "aha.launch.nodes:node_cli",
}


def module_of(stage: str) -> str:
    return ELSEWHERE.get(stage, "aha.stages." + stage.replace("-", "_"))


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: python -m aha STAGE [options]   (python -m aha STAGE --help)", "", "stages:"]
    lines += [f"  {name:<{width}}  {desc}" for name, desc in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.exit(f"aha: unknown stage {stage!r}\n\n{_usage()}")
    module, _, name = module_of(stage).partition(":")  # MODULE or MODULE:FUNCTION (default cli)
    cli = getattr(importlib.import_module(module), name or "cli")
    cli(rest, prog=f"python -m aha {stage}")


if __name__ == "__main__":
    main()
