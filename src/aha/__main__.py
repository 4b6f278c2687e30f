"""`python -m aha STAGE ...`: one entry point for every workflow stage.

Stage modules are imported only when their stage runs, so `python -m aha score` never pays for
importing torch and `--help` is instant.
"""

from __future__ import annotations

import importlib
import sys

# stage name -> (module, one-line description). Each module exposes `cli(argv: list[str])`.
STAGES: dict[str, tuple[str, str]] = {
    "prepare-data": (
        "aha.stages.prepare_data",
        "load or generate Countdown tasks; write train/test/eval splits",
    ),
    "build-tiny-model": (
        "aha.stages.build_tiny_model",
        "build the offline tiny tokenizer + Qwen2 model and warm-start it",
    ),
    "train": (
        "aha.stages.train",
        "GRPO training of one run with TRL; checkpoints at configured steps",
    ),
    "sample": ("aha.stages.sample", "sample completions for the eval prompts from one checkpoint"),
    "score": ("aha.stages.score", "success rate, pass@k, format, lengths and aha behaviours"),
    "aggregate": ("aha.stages.aggregate", "collect every score file into results/summary.tsv"),
    "plots": ("aha.stages.plots", "seaborn figures for the report"),
    "tables": ("aha.stages.tables", "HTML tables for the report"),
    "compute": (
        "aha.stages.compute",
        "wall, CPU and GPU hours per stage and s/step for the report",
    ),
    "check-gpu": ("aha.launch.gpu", "check CUDA, GPU packages and the model before a GPU run"),
    "check-contracts": (
        "aha.contracts",
        "check every device branch's CUDA arguments with the pinned libraries (no GPU needed)",
    ),
    "with-vllm-server": (
        "aha.launch.vllm_server",
        "run a command beside vLLM's own `vllm serve` on the last GPU",
    ),
}


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: python -m aha STAGE [options]   (python -m aha STAGE --help)", "", "stages:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.exit(f"aha: unknown stage {stage!r}\n\n{_usage()}")
    module = importlib.import_module(STAGES[stage][0])
    entry = getattr(module, "cli_" + stage.replace("-", "_"), None) or module.cli
    entry(rest, prog=f"python -m aha {stage}")


if __name__ == "__main__":
    main()
