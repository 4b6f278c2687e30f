# The report: seaborn figures and HTML tables, flagged with report() for `snakemake --report`.
# Both rules depend on results/summary.tsv only (it is downstream of every training log and
# samples file, so a retrain or resample reruns them); train logs and samples are read from
# results/runs/ where present, and whatever is missing is stated on the figure or page.
from aha.report import (
    ENVIRONMENT_TABLE,
    EXAMPLES_TABLE,
    FIGURES,
    PLOTS_DIR,
    SUMMARY_TABLE,
    TABLES_DIR,
    report_files,  # noqa: F401 (rule all's targets: `report_files(RUNS)`)
    runs_argument,
)

CAPTION = "../report/{}.rst"


rule report_plots:
    input:
        summary="results/summary.tsv",
        by_pattern="results/summary_by_pattern.tsv",
    output:
        success=report(
            f"{PLOTS_DIR}/{FIGURES['success']}",
            caption=CAPTION.format("success"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "success rate and pass@k vs step"},
        ),
        patterns=report(
            f"{PLOTS_DIR}/{FIGURES['patterns']}",
            caption=CAPTION.format("success_by_pattern"),
            category="1. Success",
            subcategory="Figures",
            labels={"figure": "success by operator pattern"},
        ),
        quality=report(
            f"{PLOTS_DIR}/{FIGURES['quality']}",
            caption=CAPTION.format("format_length"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "format, length, truncation vs step"},
        ),
        behaviours=report(
            f"{PLOTS_DIR}/{FIGURES['behaviours']}",
            caption=CAPTION.format("behaviours"),
            category="2. Completions",
            subcategory="Figures",
            labels={"figure": "aha behaviours vs step"},
        ),
        training=report(
            f"{PLOTS_DIR}/{FIGURES['training']}",
            caption=CAPTION.format("training"),
            category="3. Training",
            subcategory="Figures",
            labels={"figure": "training curves (TRL log)"},
        ),
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        runs_dir="results/runs",
        out_dir=lambda wc, output: os.path.dirname(output.success),
    log:
        "logs/report_plots/report_plots.log",
    conda:
        "../envs/aha.yaml"
    shell:
        "MPLBACKEND=Agg python -m aha plots --summary {input.summary} "
        "--by-pattern {input.by_pattern} --runs {params.runs:q} --runs-dir {params.runs_dir} "
        "--report {params.report:q} --out-dir {params.out_dir} > {log} 2>&1"


rule report_tables:
    input:
        summary="results/summary.tsv",
    output:
        summary=report(
            f"{TABLES_DIR}/{SUMMARY_TABLE}",
            caption=CAPTION.format("summary_table"),
            category="4. Tables",
            subcategory="Summary",
            labels={"table": "metrics per run and checkpoint"},
        ),
        environment=report(
            f"{TABLES_DIR}/{ENVIRONMENT_TABLE}",
            caption=CAPTION.format("environment"),
            category="4. Tables",
            subcategory="Summary",
            labels={"table": "software versions"},
        ),
        examples=[
            report(
                f"{TABLES_DIR}/{EXAMPLES_TABLE.format(run=run)}",
                caption=CAPTION.format("examples"),
                category="4. Tables",
                subcategory="Example completions",
                labels={"run": run},
            )
            for run in RUNS
        ],
    params:
        runs=lambda wc: as_json(runs_argument(config)),
        report=lambda wc: as_json(config["report"]),
        runs_dir="results/runs",
        out_dir=lambda wc, output: os.path.dirname(output.summary),
        workflow_dir=workflow.basedir,
    log:
        "logs/report_tables/report_tables.log",
    conda:
        "../envs/aha.yaml"
    shell:
        "python -m aha tables --summary {input.summary} --runs {params.runs:q} "
        "--runs-dir {params.runs_dir} --report {params.report:q} "
        "--workflow-dir {params.workflow_dir:q} --out-dir {params.out_dir} > {log} 2>&1"
