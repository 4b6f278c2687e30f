# Countdown tasks: hub, local file or offline generator -> train/test/eval splits + data card.


rule prepare_data:
    output:
        train=f"{DATA}/train.parquet",
        test=f"{DATA}/test.parquet",
        eval=f"{DATA}/eval.parquet",
        card=f"{DATA}/card.json",
    params:
        dataset=lambda wc: as_json(config["dataset"]),
        out_dir=lambda wc, output: os.path.dirname(output.card),
    log:
        "logs/prepare_data/prepare_data.log",
    benchmark:
        BENCHMARKS["prepare_data"]
    conda:
        "../../environment.yml"
    shell:
        "python -m aha prepare-data --dataset {params.dataset:q} --out-dir {params.out_dir} > {log} 2>&1"
