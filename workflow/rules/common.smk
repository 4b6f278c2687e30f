# Config validation (schema + semantic checks), run/step helpers and input functions.
import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from aha.config import ConfigError, check, run_view, steps

validate(config, schema="../schemas/config.schema.yaml")
try:
    check(config)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

# Stages run through the interpreter that runs Snakemake (the project venv); override with
# AHA_PYTHON, e.g. in a cluster image with the package installed elsewhere.
AHA = f"{os.environ.get('AHA_PYTHON', sys.executable)} -m aha"
DATA = "results/data"
RUNS = list(config["runs"])


def final_targets():
    """Everything `rule all` builds."""
    return [f"{DATA}/train.parquet", f"{DATA}/test.parquet", f"{DATA}/eval.parquet", f"{DATA}/card.json"]


def as_json(obj):
    """A config section as one shell-quotable JSON argument."""
    return json.dumps(obj, sort_keys=True)
