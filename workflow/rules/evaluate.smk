# Sample every replicate's checkpoints (and, once per run, step 0: the untrained model) on the
# fixed eval split, score them, and collect one row per (run, seed, step) into
# results/summary.tsv and one per (run, step) across seeds into results/summary_across_seeds.tsv;
# the long tables beside them (by task size, pass@k curve, audit, reflection words) feed the
# report's figures.


rule sample:
    wildcard_constraints:
        **RUN_SEED_STEP,
    input:
        eval=f"{DATA}/eval.parquet",
        model=sample_input,
    output:
        f"{RUN_DIR}/samples/step-{{step}}.jsonl",
    params:
        model=sample_model,
        sampling=lambda wc: as_json(config["sampling"]),
        backend=sample_backend,
        device=lambda wc: run_of(wc).device,
        quantization=sample_quantization,
        gpu_log=gpu_log("sample", "sample_base"),
    threads: sample_threads
    resources:
        gpu=sample_gpus,
    log:
        "logs/sample/{run}-seed{seed}-{step}.log",
    benchmark:
        BENCHMARKS["sample"]
    conda:
        "../../environment.yml"
    shell:
        "{params.gpu_log} OMP_NUM_THREADS={threads} python -m aha sample --model {params.model} "
        "--eval {input.eval} --sampling {params.sampling:q} --backend {params.backend} "
        "--device {params.device} {params.quantization} "
        "--run {wildcards.run} --step {wildcards.step} --out {output} > {log} 2>&1"


# Step 0 once per run, not per seed: the untrained model is the same for every replicate.
use rule sample as sample_base with:
    wildcard_constraints:
        **RUN_BASE,
    input:
        eval=f"{DATA}/eval.parquet",
        model=model_input,
    output:
        f"{BASE_DIR}/samples/step-{{step}}.jsonl",
    log:
        "logs/sample/{run}-base-{step}.log",
    benchmark:
        BENCHMARKS["sample_base"]


rule score:
    wildcard_constraints:
        **RUN_SEED_STEP,
    input:
        f"{RUN_DIR}/samples/step-{{step}}.jsonl",
    output:
        f"{RUN_DIR}/scores/step-{{step}}.json",
    params:
        seed=seed_option,
    log:
        "logs/score/{run}-seed{seed}-{step}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m aha score --samples {input} --run {wildcards.run} --step {wildcards.step} "
        "{params.seed} --out {output} > {log} 2>&1"


use rule score as score_base with:
    wildcard_constraints:
        **RUN_BASE,
    input:
        f"{BASE_DIR}/samples/step-{{step}}.jsonl",
    output:
        f"{BASE_DIR}/scores/step-{{step}}.json",
    log:
        "logs/score/{run}-base-{step}.log",


rule aggregate:
    input:
        score_files(),
    output:
        summary="results/summary.tsv",
        by_pattern="results/summary_by_pattern.tsv",
        across_seeds="results/summary_across_seeds.tsv",
        by_size="results/summary_by_size.tsv",
        pass_at_k="results/pass_at_k.tsv",
        audit="results/audit.tsv",
        reflection_words="results/reflection_words.tsv",
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m aha aggregate --scores {input} --out {output.summary} "
        "--by-pattern-out {output.by_pattern} --across-seeds-out {output.across_seeds} "
        "--by-size-out {output.by_size} --pass-at-k-out {output.pass_at_k} "
        "--audit-out {output.audit} --reflection-words-out {output.reflection_words} "
        "> {log} 2>&1"
