# Countdown tasks: hub, local file or offline generator -> train/test/eval splits + data card.


rule prepare_dataset:
    output:
        train=f"{DATA}/train.parquet",
        test=f"{DATA}/test.parquet",
        eval=f"{DATA}/eval.parquet",
        card=f"{DATA}/card.json",
    params:
        dataset=lambda wc: as_json(config["dataset"]),
    log:
        "logs/prepare_dataset/prepare_dataset.log",
    benchmark:
        "benchmarks/prepare_dataset/prepare_dataset.tsv"
    shell:
        "{AHA} prepare-data --dataset {params.dataset:q} --out-dir {DATA} > {log} 2>&1"
