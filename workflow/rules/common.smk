# Config validation (schema + semantic checks), every replicate's Run, input functions.
import json
import os
import re
import shlex
import string
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from aha.config import ConfigError, check, schema_error
from aha.launch.gpu_monitor import ENV_LOG, gpu_log_path, use_pci_device_order
from aha.launch.commands import LaunchError, stop_budget, train_command
from aha.run import batch_notes, build_all, run_seeds, steps

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
if problem := schema_error(config, SCHEMA):
    raise WorkflowError(f"invalid config: {problem}")
validate(config, schema=SCHEMA)  # fills the schema's defaults in
try:
    check(config)
    # (run, seed) -> aha.run.Run: built once, what every rule reads (a run its mode cannot
    # take is refused here)
    REPLICATE_RUNS = build_all(config)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None
for note in batch_notes(REPLICATE_RUNS.values()):
    logger.warning(f"note: {note}")

# Rules call `python -m aha STAGE`: the interpreter running Snakemake (the project venv) goes
# first on PATH, so `python` is it even when the venv is not activated.
# The workflow's src/ goes first on PYTHONPATH, so `python -m aha` is this checkout's package in
# any environment, `--sdm conda` ones included (environment.yml does not install it).
shell.prefix(
    f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; '
    f'export PYTHONPATH="{workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
)
DATA = "results/data"
# Threads of the heavy CPU rules; Snakemake scales them down to --cores, profiles set them.
MAX_THREADS = 8


def run_of(wildcards):
    """The job's aha.run.Run: its replicate's, or for a run's step 0 (no seed) its first
    replicate's, which samples the same base model."""
    seeds = run_seeds(config, wildcards.run)
    seed = int(wildcards.seed) if "seed" in wildcards.keys() else seeds[0]
    if seed not in seeds:
        raise WorkflowError(f"runs.{wildcards.run}: seed {seed} is not in its seeds {seeds}")
    return REPLICATE_RUNS[wildcards.run, seed]


def sample_threads(wildcards):
    """Sampling threads. One for a run that only runs on the CPU (the tiny model: `generate` of
    its small matmuls does not speed up with more; two sample jobs then run side by side), all
    allowed for GPU runs."""
    return 1 if run_of(wildcards).mode.cpu_only else MAX_THREADS


def train_threads(wildcards):
    """Training threads. Two on the CPU (the tiny model, a rehearsal): its optimiser step runs
    1.8x faster on two (docs/benchmarks.md), and samples of its checkpoints wait for the whole
    run anyway."""
    return 2 if run_of(wildcards).device == "cpu" else MAX_THREADS


def train_gpus(wildcards):
    """GPUs a training job asks the scheduler for: the run's devices on cuda, none on the CPU.
    Across nodes none here: `gpu` is the SLURM job's total (`--gpus`), so the GPUs per node go
    in `gres` (train_gres)."""
    run = run_of(wildcards)
    if run.nodes > 1:
        return None
    return run.devices if run.device == "cuda" else 0


# A run across nodes (runs.<run>.nodes > 1) is one SLURM job of Run.job_nodes nodes whose command
# calls srun itself (aha.launch.nodes): `mpi` makes the SLURM plugin run the rule's command as is
# instead of inside `srun -n1`, and asks for one task per node (`tasks`, which an MPI job must
# set); `tasks_per_gpu=0` keeps the plugin from turning `tasks` into --ntasks-per-gpu on a GPU
# job. On one node all of these are absent (None), so its submission is as before.
def _across_nodes(value):
    def resource(wildcards):
        run = run_of(wildcards)
        return value(run) if run.nodes > 1 else None

    return resource


train_nodes = _across_nodes(lambda run: run.job_nodes)
train_tasks = _across_nodes(lambda run: run.job_nodes)
train_mpi = _across_nodes(lambda run: "srun")
train_tasks_per_gpu = _across_nodes(lambda run: 0 if run.device == "cuda" else None)
train_gres = _across_nodes(lambda run: f"gpu:{run.devices}" if run.device == "cuda" else None)


def job_gpus(resources):
    """The job's GPUs per node: `gpu`, or across nodes the count of its `gres` (gpu[:type]:N)."""
    if resources.get("gpu") is not None:
        return int(resources.get("gpu"))
    match = re.fullmatch(r"gpu(?::[\w.]+)?:(\d+)", str(resources.get("gres") or ""))
    return int(match.group(1)) if match else None


def sample_gpus(wildcards):
    """One GPU to sample a GPU-mode run (vLLM takes most of it); none on the CPU."""
    return 1 if run_of(wildcards).device == "cuda" else 0


# Snakemake's benchmark file of each job (wall and CPU seconds, peak memory), by rule: the rules
# name theirs from here and rule compute (report.smk) reads every one. A job given GPUs also
# samples them with nvidia-smi into NAME.gpu.tsv beside its benchmark (aha.launch.gpu_monitor).
BENCHMARKS = {
    "prepare_data": "benchmarks/prepare_data/prepare_data.tsv",
    "build_tiny_model": "benchmarks/build_tiny_model/build_tiny_model.tsv",
    "train": "benchmarks/train/{run}-seed{seed}.tsv",
    "sample": "benchmarks/sample/{run}-seed{seed}-{step}.tsv",
    "sample_base": "benchmarks/sample/{run}-base-{step}.tsv",
}


def gpu_log(*rules):
    """A params function: `AHA_GPU_LOG=PATH` for a job given GPUs (its benchmark path with
    .gpu.tsv for .tsv), else nothing: a CPU job samples no GPU. Of `rules` (a rule and those
    `use`d from it, which share its params) the job's is the one whose benchmark pattern has
    exactly the job's wildcards."""
    patterns = [BENCHMARKS[rule] for rule in rules]

    def env(wildcards, resources):
        if not job_gpus(resources):
            return ""
        names = set(wildcards.keys())
        for pattern in patterns:
            if {f for _, f, _, _ in string.Formatter().parse(pattern) if f} == names:
                path = gpu_log_path(pattern.format(**wildcards))
                return f"{ENV_LOG}={shlex.quote(str(path))}"
        raise WorkflowError(f"no benchmark of {', '.join(rules)} has the wildcards {names}")

    return env


def builds_tiny_model():
    """Whether the DAG builds the tiny model: some run starts from it (see model_input)."""
    return any(run.model["source"] == "tiny" for run in REPLICATE_RUNS.values())


TINY = "results/models/tiny"
# Every job inherits this (local jobs and, through sbatch's default --export=ALL, SLURM ones):
# an OpenMP worker waiting for work spins 10,000 rounds instead of libgomp's 300,000 before it
# sleeps, so it does not take cycles from the thread doing the work. On this 2-vCPU machine
# GRPO steps of the tiny run are ~9% faster (1.12 vs 1.24 s/step, bench/threads_under_load.py).
# A wait policy only: the numbers computed are the same. Set it in the environment to override.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
# ... and CUDA numbers GPUs as nvidia-smi does (PCI bus order), in every job: the server-mode
# wrapper's vLLM server and its trainer then agree on which GPU is which, and the GPU log
# matches CUDA ids to nvidia-smi rows (aha.launch.gpu_monitor).
use_pci_device_order()
RUNS = list(config["runs"])
# One replicate of a run (its seed) trains, samples and scores in its own folder; step 0, the
# untrained model, is sampled once per run in BASE_DIR and is every replicate's step 0.
RUN_DIR = "results/runs/{run}/seed-{seed}"
BASE_DIR = "results/runs/{run}/base"
# Wildcard constraints for {run}/{seed}/{step} (a global `wildcard_constraints` directive here
# would make this a file of rules and functions, which `snakemake --lint` flags). A replicate's
# steps are its checkpoints (>= 1); step 0 lives in BASE_DIR only.
RUN_SEED = {"run": "|".join(re.escape(r) for r in RUNS), "seed": r"\d+"}
RUN_SEED_STEP = {**RUN_SEED, "step": r"[1-9]\d*"}
RUN_BASE = {"run": RUN_SEED["run"], "step": "0"}


def replicates(run):
    """(seed, run folder) of each replicate of `run`."""
    return [(seed, RUN_DIR.format(run=run, seed=seed)) for seed in run_seeds(config, run)]


def model_path(wildcards):
    """What training and step-0 sampling load: the built tiny model, a Hub id or a local dir."""
    model = run_of(wildcards).model
    return TINY if model["source"] == "tiny" else model["name_or_path"]


def prebuilt_tiny_model():
    """model.tiny.prebuilt as a path (relative: to the repository), or [] to build."""
    prebuilt = config["model"]["tiny"].get("prebuilt")
    if not prebuilt:
        return []
    return prebuilt if os.path.isabs(prebuilt) else os.path.join(workflow.basedir, prebuilt)


def model_input(wildcards):
    """File dependency on the model: only the tiny model is built by the workflow."""
    return TINY if run_of(wildcards).model["source"] == "tiny" else []


def sample_input(wildcards):
    """A replicate's checkpoint waits for the replicate's training (its manifests folder)."""
    return f"{RUN_DIR.format(**wildcards)}/checkpoints"


def sample_model(wildcards):
    """The --model argument of sampling: the base model at step 0, else the step's manifest."""
    step = int(wildcards.step)
    if step == 0:
        return model_path(wildcards)
    if step not in steps(config, wildcards.run):
        raise WorkflowError(f"runs.{wildcards.run}: step {step} is not a configured checkpoint")
    if int(wildcards.seed) not in run_seeds(config, wildcards.run):
        raise WorkflowError(f"runs.{wildcards.run}: seed {wildcards.seed} is not in its seeds")
    return f"{RUN_DIR.format(**wildcards)}/checkpoints/step-{step}.json"


def seed_option(wildcards):
    """`--seed S` of a replicate's score; nothing for the shared step-0 baseline."""
    return f"--seed {wildcards.seed}" if "seed" in wildcards.keys() else ""


def score_files():
    """Every scores record: each run's step-0 baseline, then each replicate's checkpoints."""
    files = []
    for run in RUNS:
        files.append(f"{BASE_DIR.format(run=run)}/scores/step-0.json")
        for _, folder in replicates(run):
            files += [f"{folder}/scores/step-{s}.json" for s in steps(config, run) if s]
    return files


def final_targets():
    """The default target: the summary and every report figure and table."""
    return ["results/summary.tsv", *report_files(RUNS)]


def as_json(obj):
    """A config section as one shell-quotable JSON argument."""
    return json.dumps(obj, sort_keys=True)


def sample_backend(wildcards):
    """The run's sampler (aha.run.Run.sample_backend): its mode's, or sampling.backend."""
    return run_of(wildcards).sample_backend


def sample_quantization(wildcards):
    """`--quantization` of a run with a 4-bit base, at every step (step 0 too): one precision
    per run."""
    kwargs = run_of(wildcards).quantization
    return f"--quantization {shlex.quote(as_json(kwargs))}" if kwargs else ""


def train_run(wildcards, resources):
    """The train job's Run, on the GPUs the job was given (`resources: gpu`)."""
    return run_of(wildcards).on(job_gpus(resources))


def train_stop_budget(wildcards, resources):
    """The job's stop budget (aha.launch.commands.StopBudget): from the lead of the `--signal=TERM@N`
    in its slurm_extra, the one place it is set (profiles/slurm); 300 s without one."""
    try:
        return stop_budget(train_run(wildcards, resources), resources.get("slurm_extra"))
    except LaunchError as err:
        raise WorkflowError(str(err)) from None


def launch_command(wildcards, resources):
    """The mode's training command (aha.launch.commands.train_command), its `aha train` args to follow."""
    cmd = train_command(
        train_run(wildcards, resources),
        [],
        python="python",
        model=model_path(wildcards),
        server_log=f"logs/train/{wildcards.run}-seed{wildcards.seed}.vllm-server.log",
        accelerate_config=f"{workflow.basedir}/workflow/accelerate/zero3.yaml",
        budget=train_stop_budget(wildcards, resources),
        rendezvous_dir=f"{RUN_DIR.format(**wildcards)}/trainer",  # across nodes: a shared folder
    )
    return shlex.join(cmd)


def stop_budget_line(wildcards, resources):
    """The stop budget in one line, written first into the train log."""
    return train_stop_budget(wildcards, resources).describe()
