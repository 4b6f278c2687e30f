# Config validation (schema + semantic checks), run/step helpers and input functions.
import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from aha.config import ConfigError, check, run_view, schema_error, steps

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
if problem := schema_error(config, SCHEMA):
    raise WorkflowError(f"invalid config: {problem}")
validate(config, schema=SCHEMA)  # fills the schema's defaults in
try:
    check(config)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

# Rules call `python -m aha STAGE`: the interpreter running Snakemake (the project venv) goes
# first on PATH, so `python` is it even when the venv is not activated.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')
DATA = "results/data"
RUNS = list(config["runs"])


def final_targets():
    """Everything `rule all` builds."""
    return [f"{DATA}/train.parquet", f"{DATA}/test.parquet", f"{DATA}/eval.parquet", f"{DATA}/card.json"]


def as_json(obj):
    """A config section as one shell-quotable JSON argument."""
    return json.dumps(obj, sort_keys=True)
