# The report: seaborn figures (`python -m aha plots`) and HTML tables (`python -m aha tables`),
# flagged with report() for `snakemake --report`. These rules own the report's paths: every file
# a stage reads is a declared input (summary, each run's training log, each checkpoint's
# samples) and every file it writes a declared output, each passed on its command line, so the
# stages compose no path and building the DAG imports no plotting code. Whatever an input lacks
# (a run with no logged step, an empty samples file) is stated on the figure or page.
from aha.config import run_seeds, steps
from aha.report.inputs import repeated, runs_argument

CAPTION = "../report/{}.rst"
# `plots` option -> figure file (the options are aha.stages.plots.FIGURES).
FIGURES = {
    "success": "results/plots/success.svg",
    "patterns": "results/plots/success_by_pattern.svg",
    "sizes": "results/plots/success_by_size.svg",
    "passk": "results/plots/pass_at_k.svg",
    "quality": "results/plots/format_length.svg",
    "behaviours": "results/plots/behaviours.svg",
    "reflection": "results/plots/reflection.svg",
    "audit": "results/plots/audit.svg",
    "training": "results/plots/training.svg",
}
# rule aggregate's long tables (evaluate.smk) -> the `plots` option that reads each
TABLES = {
    "--by-pattern": "results/summary_by_pattern.tsv",
    "--by-size": "results/summary_by_size.tsv",
    "--pass-at-k-table": "results/pass_at_k.tsv",
    "--audit-table": "results/audit.tsv",
    "--reflection-table": "results/reflection_words.tsv",
}
COMPUTE_TABLE = "results/compute.tsv"
COMPUTE_FIGURE = "results/plots/compute.svg"
SUMMARY_PAGE = "results/tables/summary.html"
ENVIRONMENT_PAGE = "results/tables/environment.html"
EXAMPLES_PAGE = "results/tables/examples-{run}.html"
EXAMPLES_PAGES = {run: EXAMPLES_PAGE.format(run=run) for run in RUNS}
# The outputs of rule train (train.smk) and rule sample (evaluate.smk), spelled here too so
# that these rules also run in a workflow of their own over existing results. Every replicate's
# training log, and every samples file the examples pages draw from: (run, seed, step, path),
# seed `base` for step 0, which is sampled once per run and is every seed's step 0.
TRAIN_LOGS = [
    (run, seed, f"results/runs/{run}/seed-{seed}/train_log.jsonl")
    for run in RUNS
    for seed in run_seeds(config, run)
]
SAMPLES_FILES = [
    (run, "base", 0, f"results/runs/{run}/base/samples/step-0.jsonl") for run in RUNS
] + [
    (run, seed, step, f"results/runs/{run}/seed-{seed}/samples/step-{step}.jsonl")
    for run in RUNS
    for step in steps(config, run)
    if step != 0
    for seed in run_seeds(config, run)
]
# The benchmark file of every job of the DAG, as (stage, path), in pipeline order: the
# benchmark patterns of the rules (BENCHMARKS, common.smk) over the jobs they run. Step 0 is
# sampled by rule sample_base, which is stage sample.
JOB_BENCHMARKS = [
    ("prepare_data", BENCHMARKS["prepare_data"]),
    *([("build_tiny_model", BENCHMARKS["build_tiny_model"])] if builds_tiny_model() else []),
    *[("train", BENCHMARKS["train"].format(run=run, seed=seed)) for run, seed, _ in TRAIN_LOGS],
    *[("sample", BENCHMARKS["sample_base"].format(run=run, step=0)) for run in RUNS],
    *[
        ("sample", BENCHMARKS["sample"].format(run=run, seed=seed, step=step))
        for run in RUNS
        for seed in run_seeds(config, run)
        for step in steps(config, run)
        if step
    ],
]
# Every file the report rules write, for `rule all` (so `--report` finds them). A lambda, not a
# def: `snakemake --lint` wants functions in common.smk, and the paths belong here.
report_files = lambda runs: [
    *FIGURES.values(),
    COMPUTE_FIGURE,
    COMPUTE_TABLE,
    SUMMARY_PAGE,
    ENVIRONMENT_PAGE,
    *expand(EXAMPLES_PAGE, run=runs),
]


rule plots:
    input:
        summary="results/summary.tsv",
        tables=list(TABLES.values()),
        train_logs=[path for _, _, path in TRAIN_LOGS],
    output:
        success=report(
            FIGURES["success"],
            caption=CAPTION.format("success"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "success rate and pass@k vs step"},
        ),
        patterns=report(
            FIGURES["patterns"],
            caption=CAPTION.format("success_by_pattern"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "success by operator pattern"},
        ),
        sizes=report(
            FIGURES["sizes"],
            caption=CAPTION.format("success_by_size"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "success by task size"},
        ),
        passk=report(
            FIGURES["passk"],
            caption=CAPTION.format("pass_at_k"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "pass@k curves, k = 1..K"},
        ),
        quality=report(
            FIGURES["quality"],
            caption=CAPTION.format("format_length"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "format, length, truncation vs step"},
        ),
        behaviours=report(
            FIGURES["behaviours"],
            caption=CAPTION.format("behaviours"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "aha behaviours vs step"},
        ),
        reflection=report(
            FIGURES["reflection"],
            caption=CAPTION.format("reflection"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "reflection words vs step"},
        ),
        audit=report(
            FIGURES["audit"],
            caption=CAPTION.format("audit"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "reward-hacking audit vs step"},
        ),
        training=report(
            FIGURES["training"],
            caption=CAPTION.format("training"),
            category="3. Training",
            subcategory="Figures",
            labels={"figure": "training curves (TRL log)"},
        ),
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        train_logs=repeated("--train-log", TRAIN_LOGS),
        tables=" ".join(f"{flag} {path}" for flag, path in TABLES.items()),
        figures=lambda wc, output: " ".join(f"--{name} {output[name]}" for name in FIGURES),
    log:
        "logs/plots/plots.log",
    conda:
        "../../environment.yml"
    shell:
        "MPLBACKEND=Agg python -m aha plots --summary {input.summary} {params.tables} "
        "{params.train_logs} --runs {params.runs:q} --report {params.report:q} "
        "{params.figures} > {log} 2>&1"


rule tables:
    input:
        summary="results/summary.tsv",
        samples=[path for *_, path in SAMPLES_FILES],
    output:
        summary=report(
            SUMMARY_PAGE,
            caption=CAPTION.format("summary_table"),
            category="4. Tables",
            subcategory="Summary",
            labels={"table": "metrics per run and checkpoint"},
        ),
        environment=report(
            ENVIRONMENT_PAGE,
            caption=CAPTION.format("environment"),
            category="4. Tables",
            subcategory="Summary",
            labels={"table": "software versions"},
        ),
        examples=[
            report(
                page,
                caption=CAPTION.format("examples"),
                category="4. Tables",
                subcategory="Example completions",
                labels={"run": run},
            )
            for run, page in EXAMPLES_PAGES.items()
        ],
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        samples=repeated("--samples", SAMPLES_FILES),
        examples=repeated("--examples-page", EXAMPLES_PAGES.items()),
        workflow_dir=workflow.basedir,
    log:
        "logs/tables/tables.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m aha tables --summary {input.summary} {params.samples} --runs {params.runs:q} "
        "--report {params.report:q} --workflow-dir {params.workflow_dir:q} "
        "--summary-page {output.summary} --environment-page {output.environment} "
        "{params.examples} > {log} 2>&1"


# What the run cost: job-hours per stage from every job's benchmark file (and GPU log beside
# it), s/step from every replicate's training log. It runs after every other benchmarked job.
rule compute:
    input:
        benchmarks=[path for _, path in JOB_BENCHMARKS],
        train_logs=[path for _, _, path in TRAIN_LOGS],
    output:
        table=COMPUTE_TABLE,
        figure=report(
            COMPUTE_FIGURE,
            caption=CAPTION.format("compute"),
            category="5. Compute",
            subcategory="Figures",
            labels={"figure": "hours per stage, s/step, GPU memory"},
        ),
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        benchmarks=repeated("--benchmark", JOB_BENCHMARKS),
        train_logs=repeated("--train-log", TRAIN_LOGS),
    log:
        "logs/compute/compute.log",
    conda:
        "../../environment.yml"
    shell:
        "MPLBACKEND=Agg python -m aha compute {params.benchmarks} {params.train_logs} "
        "--runs {params.runs:q} --table {output.table} --figure {output.figure} > {log} 2>&1"
