# The embedded tiny policy (model.source: tiny): offline tokenizer + Qwen2 + warm start.
# For hub models there is nothing to build: training and step-0 sampling load them directly.
# With model.tiny.prebuilt (config/tiny.yaml: models/tiny-base, committed) the rule installs
# that model instead, after checking it was built from this very recipe (aha.tiny.artifact);
# `prebuilt: null` (config/tiny-rebuild.yaml) builds it here.


rule build_tiny_model:
    input:
        train=f"{DATA}/train.parquet",
        prebuilt=prebuilt_tiny_model(),
    output:
        model=directory(TINY),
    params:
        tiny=lambda wc: as_json(config["model"]["tiny"]),
        seed=config["seed"],
        prebuilt=lambda wc, input: f"--prebuilt {input.prebuilt}" if input.prebuilt else "",
    threads: MAX_THREADS
    log:
        "logs/build_tiny_model/build_tiny_model.log",
    benchmark:
        BENCHMARKS["build_tiny_model"]
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} python -m aha build-tiny-model --tiny {params.tiny:q} "
        "--train {input.train} --seed {params.seed} {params.prebuilt} --out-dir {output.model} "
        "> {log} 2>&1"
