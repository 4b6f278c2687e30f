# aha-countdown: GRPO on Countdown, from data to report. See README.md and docs/.
#   snakemake --cores 2                                   # embedded tiny default (CPU, offline)
#   snakemake --configfile config/config.yaml --workflow-profile profiles/slurm   # the seed
import sys

from snakemake.utils import min_version

min_version("9.0")
# The workflow's own package, importable whether or not it is installed in the environment
# (environment.yml does not install it; `pip install -e .` does, from the same folder).
sys.path.insert(0, f"{workflow.basedir}/src")


# The embedded default applies only when no --configfile is given: a --configfile is merged
# over a `configfile:` directive, so declaring one here would leak its runs into every DAG.
if not config:

    configfile: f"{workflow.basedir}/config/tiny.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
