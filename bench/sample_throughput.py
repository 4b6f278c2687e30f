"""Completions per second of CPU sampling (aha.stages.sample's HF backend), per batch size.

    .venv/bin/python bench/sample_throughput.py [--model results/models/tiny]
        [--eval results/data/eval.parquet] [--config config/tiny.yaml] [--prompts 50]
        [--batch-sizes 32,100,200] [--threads 0]

Samples `--prompts` eval prompts x the config's k with its temperature/top_p/max_new_tokens,
exactly as `python -m aha sample --backend hf` does (the model loaded once), and prints
completions/s, generated tokens/s, the truncated share and process CPU seconds (all threads; less
sensitive to other jobs on a shared machine than wall time) for each batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

from aha.sections import Sampling, section
from aha.stages import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="results/models/tiny")
    parser.add_argument("--eval", default="results/data/eval.parquet")
    parser.add_argument("--config", default="config/tiny.yaml")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--batch-sizes", default="32,100,200")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model; build it with `snakemake --cores 2 results/models/tiny`")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = section(Sampling, yaml.safe_load(Path(args.config).read_text())["sampling"])
    tasks = sample.load_tasks(Path(args.eval)).head(args.prompts)
    model, tokenizer = sample.load_hf(sample.ModelRef(args.model))
    texts = sample.render_prompts(tokenizer, tasks)
    print(
        f"model {args.model}: {len(texts)} prompts x k={cfg.k}, temperature {cfg.temperature}, "
        f"top_p {cfg.top_p}, max_new_tokens {cfg.max_new_tokens}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'batch':>6} {'seconds':>8} {'compl/s':>8} {'tokens/s':>9} {'mean tok':>9} "
        f"{'trunc':>6} {'cpu s':>7} {'compl/cpu-s':>11}"
    )
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        run_cfg = replace(cfg, batch_size=batch_size)
        t0, c0 = time.perf_counter(), time.process_time()
        completions = sample.generate_hf(model, tokenizer, texts, run_cfg, progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = sum(c.num_tokens for c in completions)
        truncated = sum(c.truncated for c in completions) / len(completions)
        print(
            f"{batch_size:>6} {seconds:>8.2f} {len(completions) / seconds:>8.1f} "
            f"{tokens / seconds:>9.0f} {tokens / len(completions):>9.1f} {truncated:>6.1%} "
            f"{cpu:>7.2f} {len(completions) / cpu:>11.1f}"
        )


if __name__ == "__main__":
    main()
