# Sample every checkpoint (and step 0, the untrained model) on the fixed eval split, score it,
# and collect one row per (run, step) into results/summary.tsv.


rule sample:
    wildcard_constraints:
        **RUN_STEP,
    input:
        eval=f"{DATA}/eval.parquet",
        model=sample_input,
    output:
        "results/runs/{run}/samples/step-{step}.jsonl",
    params:
        model=lambda wc: sample_model(wc.run, int(wc.step)),
        sampling=lambda wc: as_json(config["sampling"]),
        backend=sample_backend,
        device=lambda wc: run_view(config, wc.run)["device"],
        quantization=sample_quantization,
    threads: run_threads
    resources:
        gpu=sample_gpus,
    log:
        "logs/sample/{run}-{step}.log",
    benchmark:
        "benchmarks/sample/{run}-{step}.tsv"
    conda:
        "../envs/aha.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m aha sample --model {params.model} "
        "--eval {input.eval} --sampling {params.sampling:q} --backend {params.backend} "
        "--device {params.device} {params.quantization} "
        "--run {wildcards.run} --step {wildcards.step} --out {output} > {log} 2>&1"


rule score:
    wildcard_constraints:
        **RUN_STEP,
    input:
        "results/runs/{run}/samples/step-{step}.jsonl",
    output:
        "results/runs/{run}/scores/step-{step}.json",
    log:
        "logs/score/{run}-{step}.log",
    conda:
        "../envs/aha.yaml"
    shell:
        "python -m aha score --samples {input} --run {wildcards.run} --step {wildcards.step} "
        "--out {output} > {log} 2>&1"


rule aggregate:
    input:
        score_files(),
    output:
        summary="results/summary.tsv",
        by_pattern="results/summary_by_pattern.tsv",
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../envs/aha.yaml"
    shell:
        "python -m aha aggregate --scores {input} --out {output.summary} "
        "--by-pattern-out {output.by_pattern} > {log} 2>&1"
