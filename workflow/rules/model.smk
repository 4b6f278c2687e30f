# The embedded tiny policy (model.source: tiny): offline tokenizer + Qwen2 + warm start.
# For hub models there is nothing to build: training and step-0 sampling load them directly.


rule build_tiny_model:
    input:
        train=f"{DATA}/train.parquet",
    output:
        model=directory(TINY),
    params:
        tiny=lambda wc: as_json(config["model"]["tiny"]),
        seed=config["seed"],
    threads: MAX_THREADS
    log:
        "logs/build_tiny_model/build_tiny_model.log",
    benchmark:
        BENCHMARKS["build_tiny_model"]
    conda:
        "../envs/aha.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m aha build-tiny-model --tiny {params.tiny:q} "
        "--train {input.train} --seed {params.seed} --out-dir {output.model} > {log} 2>&1"
