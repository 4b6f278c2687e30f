# The report: seaborn figures (`python -m aha plots`), HTML tables (`python -m aha tables`) and
# what the run cost (`python -m aha compute`), flagged with report() for `snakemake --report`.
# These rules own the report's paths; the files they read are the outputs of rules aggregate,
# train, sample and sample_base (evaluate.smk, train.smk), taken from those rules, so every path
# has one owner. Every file a stage reads is a declared input and every file it writes a
# declared output, each passed on its command line, so the stages compose no path and building
# the DAG imports no plotting code. Whatever an input lacks (a run with no logged step, an empty
# samples file) is stated on the figure or page. Over results that exist, these rules run on
# their own with `--allowed-rules plots tables compute all` (tests/integration/test_browser.py).
from aha.report import figures
from aha.report.inputs import (
    repeated,
    runs_argument,
    runs_overview,
    seed_reference_drawn,
    steps_and_seeds,
)

CAPTION = "../report/{}.rst"
# Every figure and page, its file and its report() flags: aha.report.figures.
FIGURE_FILES = {figure.name: f"results/plots/{figure.file}" for figure in figures.FIGURES}
COMPUTE_FIGURE = f"results/plots/{figures.COMPUTE_FIGURE.file}"
COMPUTE_TABLE = "results/compute.tsv"
SUMMARY_PAGE = f"results/tables/{figures.SUMMARY_PAGE.file}"
ENVIRONMENT_PAGE = f"results/tables/{figures.ENVIRONMENT_PAGE.file}"
EXAMPLES_PAGE = f"results/tables/{figures.EXAMPLES_PAGE.file}"
EXAMPLES_PAGES = {run: EXAMPLES_PAGE.format(run=run) for run in RUNS}
# {run: (steps, seeds)}: step 0 and the checkpoints, and the replicate seeds, of every run.
STEPS_SEEDS = steps_and_seeds(config)
# Every replicate's training log (rule train), and every samples file the examples pages draw
# from (rules sample and sample_base): (run, seed, step, path), seed `base` for step 0, which
# is sampled once per run and is every seed's step 0.
TRAIN_LOGS = [
    (run, seed, rules.train.output.log_history.format(run=run, seed=seed))
    for run, (_, seeds) in STEPS_SEEDS.items()
    for seed in seeds
]
SAMPLES_FILES = [
    (run, "base", 0, rules.sample_base.output[0].format(run=run, step=0)) for run in RUNS
] + [
    (run, seed, step, rules.sample.output[0].format(run=run, seed=seed, step=step))
    for run, (run_steps, seeds) in STEPS_SEEDS.items()
    for step in run_steps
    if step != 0
    for seed in seeds
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
        for run, (run_steps, seeds) in STEPS_SEEDS.items()
        for seed in seeds
        for step in run_steps
        if step
    ],
]
# Every file the report rules write, for `rule all` (so `--report` finds them). A lambda, not a
# def: `snakemake --lint` wants functions in common.smk, and the paths belong here.
report_files = lambda runs: [
    *FIGURE_FILES.values(),
    COMPUTE_FIGURE,
    COMPUTE_TABLE,
    SUMMARY_PAGE,
    ENVIRONMENT_PAGE,
    *expand(EXAMPLES_PAGE, run=runs),
]


rule plots:
    input:
        summary=rules.aggregate.output.summary,
        **{name: rules.aggregate.output[name] for name in figures.tables_read()},
        train_logs=[path for _, _, path in TRAIN_LOGS],
    output:
        **{
            figure.name: report(FIGURE_FILES[figure.name], **figure.flags(CAPTION))
            for figure in figures.FIGURES
        },
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        train_logs=repeated("--train-log", TRAIN_LOGS),
        tables=lambda wc, input: " ".join(
            f"{figures.TABLE_OPTIONS[name]} {input[name]}" for name in figures.tables_read()
        ),
        figures=lambda wc, output: " ".join(f"--{name} {output[name]}" for name in FIGURE_FILES),
        seed_reference=seed_reference_drawn(config),  # for the success figure's caption
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
        summary=rules.aggregate.output.summary,
        samples=[path for *_, path in SAMPLES_FILES],
    output:
        summary=report(SUMMARY_PAGE, **figures.SUMMARY_PAGE.flags(CAPTION)),
        environment=report(ENVIRONMENT_PAGE, **figures.ENVIRONMENT_PAGE.flags(CAPTION)),
        examples=[
            report(page, **figures.EXAMPLES_PAGE.flags(CAPTION, run=run))
            for run, page in EXAMPLES_PAGES.items()
        ],
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        samples=repeated("--samples", SAMPLES_FILES),
        examples=repeated("--examples-page", EXAMPLES_PAGES.items()),
        workflow_dir=workflow.basedir,
        overview=runs_overview(config),  # the runs as the report's front page lists them
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
        figure=report(COMPUTE_FIGURE, **figures.COMPUTE_FIGURE.flags(CAPTION)),
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
