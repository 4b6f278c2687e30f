#!/usr/bin/env bash
# shellcheck disable=SC2317  # stage functions are called indirectly: stage NAME ... FUNCTION
# GPU smoke test of the two GPU modes on ONE GPU, with the tiny model, on a machine with no
# network: every package it lacks comes from the prepared .whl/ (scripts/gpu-smoke-prepare.sh).
#
#   bash scripts/gpu-smoke.sh          # in the repository root, .whl/ beside this script's folder
#
#   install        wheels from .whl/ into /tmp/site (no network there); GPU only
#   versions       python, torch + CUDA, transformers, trl, peft, accelerate, deepspeed,
#                  bitsandbytes, nvidia-smi  -> versions.txt
#   contracts      python -m aha check-contracts: every device branch's CUDA arguments of the
#                  seed config through the libraries' own checks (vLLM's from its snapshot,
#                  src/aha/vllm-0.30.json, where vLLM is not installed)
#   check-gpu-*    python -m aha check-gpu for the qlora and the zero3 run
#   qlora          python -m aha train, mode qlora (NF4 + LoRA, HF generation), steps 1-4,
#                  checkpoints 2 and 4 (adapter_model.safetensors)
#   zero3          accelerate launch (workflow/accelerate/zero3.yaml) on 1 process, DeepSpeed
#                  ZeRO-3, use_vllm false, checkpoints 2 and 4 (16-bit model.safetensors)
#   sample-*       python -m aha sample from each step-4 checkpoint, with the sampler the rule
#                  picks (aha.run.Run.sample_backend): qlora in NF4 with transformers, as on a
#                  cluster; zero3 with transformers here (vLLM is not carried)
#   qlora-resume   the qlora run again with max_steps 6: must resume from checkpoint-4
#   zero3-resume   the same for zero3 (DeepSpeed's own checkpoint state)
#   listing        ls -la of the run folders, train_log.jsonl copies
#
# Stages run in that order (most valuable first), each under its own `timeout` and within one
# overall budget (SMOKE_BUDGET_S), each with its log in $OUT/STAGE.log; a failed stage does not
# stop the next (stages that need its output are "skipped"). $OUT/summary.tsv: stage, status
# (ok, failed, timeout, skipped), seconds; $OUT/metrics.tsv: s/step (train_log.jsonl, step 1
# excluded) and peak GPU memory (nvidia-smi sampled every 500 ms). Exit status 1 if any stage
# failed. The runs come from aha.run.Run.build and their training argv from aha.launch.commands.train_command, as
# in the workflow's train rule.
#
# The whole script takes at most 8 minutes (SMOKE_BUDGET_S, 465 s of stages, plus the summary).
# With more than 8 files in $OUT, everything but summary.tsv, metrics.tsv and versions.txt is
# packed into $OUT/gpu-smoke-logs.tar.gz (SMOKE_PACK=auto), so a few files carry every log.
#
# On this CPU, end to end (installs skipped; the rehearsal environment has every package):
#   DEVICE=cpu PYTHON=.venv-rehearsal/bin/python scripts/gpu-smoke.sh
#
# Environment: DEVICE (cuda | cpu; default cuda), PYTHON (default python3), OUT (default
# /tmp/gpu-smoke-out), WORK (run folders; default /tmp/gpu-smoke-work), SMOKE_DIR (tiny model and
# data: models/tiny, data/; default .whl/smoke), SITE (install target; default /tmp/site),
# SMOKE_BUDGET_S (all stages together; default 465), SMOKE_PACK (auto | 1 | 0),
# SMOKE_STAGES (space-separated subset of the stages above, with the stages they need: a stage
# whose input stage did not pass is "skipped"; install, versions and specs always run).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-smoke-out}
WORK=${WORK:-/tmp/gpu-smoke-work}
WHL=$ROOT/.whl
SMOKE_DIR=${SMOKE_DIR:-$WHL/smoke}
SITE=${SITE:-/tmp/site}
BUDGET=${SMOKE_BUDGET_S:-465}
PACK=${SMOKE_PACK:-auto}
ONLY=${SMOKE_STAGES:-}
RESERVE=15 # seconds kept for the summary and the packing

case $DEVICE in cuda | cpu) ;; *)
    echo "DEVICE must be cuda or cpu (got $DEVICE)" >&2
    exit 2
    ;;
esac
[[ $PYTHON == */* ]] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
mkdir -p "$OUT" "$WORK" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
SMOKE_DIR=$(cd "$SMOKE_DIR" 2>/dev/null && pwd || echo "$SMOKE_DIR")
MODEL=$SMOKE_DIR/models/tiny
DATA=$SMOKE_DIR/data
SETUP=$WORK/setup
rm -rf "$WORK/qlora" "$WORK/zero3" "$SETUP"
rm -f "$OUT/summary.tsv" "$OUT/metrics.tsv"
mkdir -p "$SETUP"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1 DS_BUILD_OPS=0
export HF_HOME=$WORK/hf-home
if [[ $DEVICE == cuda ]]; then
    export PYTHONPATH=$SITE:$WHL/bnb:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
fi
HAVE_SMI=0
command -v nvidia-smi >/dev/null 2>&1 && HAVE_SMI=1

START=$(date +%s)
DEADLINE=$((START + BUDGET))
FAILED=0
declare -A STATUS=()
printf 'stage\tstatus\tseconds\n' >"$OUT/summary.tsv"
printf 'run\tsteps\ts_per_step\tpeak_gpu_mem_mib\ttrain_runtime_s\n' >"$OUT/metrics.tsv"

# install, versions and specs always run; SMOKE_STAGES picks among the others.
wanted() { [[ -z $ONLY || " install versions specs $ONLY " == *" $1 "* ]]; }

record() { # record STAGE STATUS SECONDS
    STATUS[$1]=$2
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT/summary.tsv"
    printf '%-14s %-8s %5ss   (%ss elapsed)\n' "$1" "$2" "$3" "$(($(date +%s) - START))"
    [[ $2 == ok || $2 == skipped ]] || FAILED=1
}

# timed CMD...: CMD under `timeout`, killed at the end of the current stage's time.
timed() {
    local left=$((STAGE_END - $(date +%s)))
    ((left > 0)) || return 124
    timeout -k 15 "$left" "$@"
}

# stage NAME LIMIT_S NEEDS FUNCTION [ARGS...]: run FUNCTION in a subshell, output to $OUT/NAME.log.
# NEEDS: space-separated stages that must have passed ("" for none).
stage() {
    local name=$1 limit=$2 needs=$3
    shift 3
    wanted "$name" || return 0
    local need
    for need in $needs; do
        if [[ ${STATUS[$need]:-} != ok ]]; then
            echo "needs $need (${STATUS[$need]:-not run})" >"$OUT/$name.log"
            record "$name" skipped 0
            return 0
        fi
    done
    local now left
    now=$(date +%s)
    left=$((DEADLINE - RESERVE - now))
    if ((left < 10)); then
        echo "no time left in the budget (SMOKE_BUDGET_S=$BUDGET)" >"$OUT/$name.log"
        record "$name" timeout 0
        return 0
    fi
    ((limit < left)) || limit=$left
    STAGE_END=$((now + limit))
    local t0 rc status
    t0=$(date +%s.%N)
    ("$@") >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [[ $status == ok ]] || echo "== stage $name: exit status $rc (limit ${limit}s)" >>"$OUT/$name.log"
    record "$name" "$status" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
}

check() { # check DESCRIPTION TEST...: one line in the log; fails the stage if TEST fails
    local what=$1
    shift
    if "$@"; then echo "check ok: $what"; else
        echo "CHECK FAILED: $what"
        return 1
    fi
}

# ----------------------------------------------------------------------------- stages

install() {
    rm -rf "$SITE"
    mkdir -p "$SITE"
    echo "== wheels ($(find "$WHL/wheels" -name '*.whl' | wc -l))"
    timed "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$WHL"/wheels/*.whl || return
    # A wheel in maybe/ only where the machine's own copy is older (or absent, or unreadable).
    local wheel
    for wheel in "$WHL"/maybe/*.whl; do
        [[ -e $wheel ]] || continue
        "$PYTHON" - "$wheel" <<'EOF'
import importlib.metadata as md, os, sys
from packaging.version import Version
name, version = os.path.basename(sys.argv[1]).split("-")[:2]
try:
    have = md.version(name.replace("_", "-"))
except md.PackageNotFoundError:
    have = None
newer = have is not None and Version(have) >= Version(version)
print(f"{name}: machine {have}, carried {version}: {'machine' if newer else 'carried'} kept")
sys.exit(3 if newer else 0)
EOF
        (($? == 3)) && continue
        timed "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
            --disable-pip-version-check --target "$SITE" "$wheel" || return
    done
    echo "== deepspeed from its sdist (DS_BUILD_OPS=0, --no-build-isolation)"
    if timed "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$WHL"/sdist/deepspeed-*.tar.gz; then
        echo "deepspeed: built from the sdist" >"$SETUP/deepspeed-source"
    else
        echo "== the sdist did not build: the pure-Python wheel built on the CPU machine instead"
        timed "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
            --disable-pip-version-check --target "$SITE" "$WHL"/fallback/deepspeed-*.whl || return
        echo "deepspeed: FALLBACK wheel built on the CPU machine (sdist build failed)" \
            >"$SETUP/deepspeed-source"
    fi
    check "bitsandbytes folder with its cuda130 library" test -f "$WHL/bnb/bitsandbytes/libbitsandbytes_cuda130.so"
}

versions() {
    timed "$PYTHON" - <<'EOF'
import importlib, importlib.metadata as md, os, platform, sys

failed = []
print("python", platform.python_version(), sys.executable)
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
             "bitsandbytes"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')} ({os.path.dirname(mod.__file__)})")
    except Exception as err:  # report every missing piece, not only the first
        print(f"{name} IMPORT FAILED: {type(err).__name__}: {err}")
        failed.append(name)
try:
    import torch

    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), "capability",
              torch.cuda.get_device_capability(0), "bf16", torch.cuda.is_bf16_supported())
except Exception as err:
    print("torch:", err)
try:
    import bitsandbytes.cextension as c

    lib = getattr(getattr(c, "lib", None), "_lib", None)
    print("bitsandbytes backend", getattr(c, "BNB_BACKEND", "?"), "library",
          getattr(lib, "_name", lib))
except Exception as err:
    print("bitsandbytes library:", err)
try:
    from deepspeed.accelerator import get_accelerator

    print("deepspeed accelerator", get_accelerator().device_name())
except Exception as err:
    print("deepspeed accelerator:", err)


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"


others = ("typing_extensions", "pydantic", "tokenizers", "huggingface_hub", "safetensors",
          "pyarrow", "fsspec", "regex", "attrs", "jsonschema", "setuptools", "numpy", "pandas")
print("others:", ", ".join(f"{n} {version(n)}" for n in others))
sys.exit(1 if failed else 0)
EOF
    local rc=$?
    [[ -f $SETUP/deepspeed-source ]] && cat "$SETUP/deepspeed-source"
    if ((HAVE_SMI)); then
        timed nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    else
        echo "nvidia-smi: not present"
    fi
    return "$rc"
}

# The runs (aha.run.Run.build of a config like the workflow's, on one device), as JSON, the
# training argv (aha.launch.commands.train_command), the sampling and quantization JSON, all into $SETUP.
specs() {
    timed "$PYTHON" - "$DEVICE" "$PYTHON" "$MODEL" "$DATA" "$WORK" "$SETUP" <<'EOF'
import copy, dataclasses, json, sys
from pathlib import Path

import pandas as pd

from aha import config as C
from aha.launch.commands import train_command
from aha.run import Run
from aha.sections import Sampling, section

device, python, model, data, work, setup = sys.argv[1:]
setup = Path(setup)
repo = C.SCHEMA_PATH.parents[2]  # this checkout: the rule passes its zero3 yaml the same way
grpo = {  # config.yaml's qwen runs, at the tiny model's size: 4 steps of 8 completions
    "max_steps": 4, "learning_rate": 1.0e-5, "beta": 0.001, "loss_type": "grpo",
    "scale_rewards": "group", "num_generations": 4, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "max_completion_length": 32, "temperature": 0.9,
    "bf16": True, "activation_checkpointing": True,
    "activation_checkpointing_kwargs": {"use_reentrant": False}, "use_vllm": False,
    "logging_steps": 1, "seed": 42,
}
runs = {
    "smoke-qlora": {
        "mode": "qlora", "grpo": grpo,
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear",
                 "task_type": "CAUSAL_LM"},
        "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                         "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_use_double_quant": True},
    },
    "smoke-zero3": {"mode": "zero3", "grpo": grpo},
}
if device == "cpu":  # ZeRO-3 ranks on the CPU train in fp32, as config/rehearsal.yaml's do
    runs["smoke-zero3"]["grpo"] = {**grpo, "bf16": False}
config = {"device": device, "model": {"source": "tiny", "dtype": "bfloat16"},
          "checkpoints": [2, 4], "runs": runs}
resumed = copy.deepcopy(config)
for run in resumed["runs"].values():
    run["grpo"] = {**run["grpo"], "max_steps": 6}
    run["checkpoints"] = [2, 4, 6]
jobs = {"qlora": (config, "smoke-qlora"), "zero3": (config, "smoke-zero3"),
        "qlora-resume": (resumed, "smoke-qlora"), "zero3-resume": (resumed, "smoke-zero3")}
for job, (cfg, name) in jobs.items():
    # One device: the GPU of this machine, or one CPU rank (a rehearsal's zero3 would have 2).
    run = dataclasses.replace(Run.build(cfg, name), devices=1)
    spec = run.to_json()
    out_dir = f"{work}/{job.removesuffix('-resume')}"
    args = ["--run", spec, "--data-dir", data, "--model", model, "--out-dir", out_dir]
    argv = train_command(run, args, gpus=1, python=python,
                         accelerate_config=f"{repo}/workflow/accelerate/zero3.yaml")
    (setup / f"spec-{job}.json").write_text(spec)
    (setup / f"argv-{job}").write_text("\0".join(argv) + "\0")
    print(f"{job}: {' '.join(a if a != spec else 'RUN' for a in argv)}")
    print(f"  run: {spec}")
sampling = {"k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 32, "batch_size": 16,
            "seed": 1}
if "backend" in {f.name for f in dataclasses.fields(Sampling)}:
    sampling["backend"] = "hf"
section(Sampling, sampling)  # the sampling section as the DAG checks it
(setup / "sampling.json").write_text(json.dumps(sampling))
qlora = Run.build(config, "smoke-qlora")
backend, quant = qlora.sample_backend, qlora.quantization
assert backend == "hf" and quant, (backend, quant)  # the sampler the rule picks for qlora
(setup / "quantization.json").write_text(json.dumps(quant))
rows = len(pd.read_parquet(Path(data) / "eval.parquet"))
(setup / "eval_rows").write_text(f"{rows}\n")
print("sampling", json.dumps(sampling), "| quantization", json.dumps(quant), "| eval rows", rows)
EOF
}

MEMPID=
mem_start() { # nvidia-smi's GPU memory every 500 ms into $OUT/mem-NAME.csv (GPU only)
    MEMPID=
    ((HAVE_SMI)) || return 0
    local left=$((STAGE_END - $(date +%s)))
    timeout "$left" nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
        >"$OUT/mem-$1.csv" 2>/dev/null &
    MEMPID=$!
}

mem_stop() {
    [[ -n $MEMPID ]] || return 0
    kill "$MEMPID" 2>/dev/null
    wait "$MEMPID" 2>/dev/null
    MEMPID=
}

# metrics JOB FIRST_STEP: s/step over the steps after FIRST_STEP (its start-up excluded), peak
# GPU memory, into $OUT/metrics.tsv.
metrics() {
    local job=$1 first=$2 run=${1%-resume} peak=n/a
    if [[ -s $OUT/mem-$job.csv ]]; then
        peak=$(sort -n "$OUT/mem-$job.csv" | tail -n 1)
        echo "GPU memory used: first $(head -n 1 "$OUT/mem-$job.csv") MiB, peak $peak MiB"
    fi
    "$PYTHON" - "$WORK/$run/train_log.jsonl" "$first" "$job" "$peak" "$OUT/metrics.tsv" <<'EOF'
import json, statistics, sys
path, first, job, peak, metrics = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if line.strip()]
times = [r["step_time"] for r in rows if "step_time" in r and r.get("step", 0) > int(first)]
steps = sorted({r["step"] for r in rows if "step" in r})
runtime = next((r["train_runtime"] for r in rows if "train_runtime" in r), "")
spp = f"{statistics.mean(times):.3f}" if times else "n/a"
print(f"{job}: steps logged {steps}; s/step after step {first}: {spp} over {len(times)}; "
      f"train_runtime {runtime}")
with open(metrics, "a") as fh:
    fh.write(f"{job}\t{','.join(map(str, steps))}\t{spp}\t{peak}\t{runtime}\n")
EOF
}

train() { # train JOB: the run's argv from specs; checks per job
    local job=$1 run=${1%-resume}
    local dir=$WORK/$run argv=()
    mapfile -d '' -t argv <"$SETUP/argv-$job"
    echo "+ ${argv[*]}"
    mem_start "$job"
    timed "${argv[@]}"
    local rc=$?
    mem_stop
    ((rc == 0)) || return "$rc"
    echo "== checks"
    local steps=(2 4) weights=adapter_model.safetensors first=1 step
    [[ $run == zero3 ]] && weights=model.safetensors
    if [[ $job == *-resume ]]; then
        steps=(2 4 6)
        first=5
        check "resumed from checkpoint-4" grep -Eq "resuming from .*checkpoint-4\b" "$OUT/$job.log" || return
    fi
    for step in "${steps[@]}"; do
        check "checkpoints/step-$step.json" test -f "$dir/checkpoints/step-$step.json" || return
        check "weights/step-$step/$weights" test -f "$dir/weights/step-$step/$weights" || return
    done
    check "train_log.jsonl logs steps 1..${steps[-1]} once each" "$PYTHON" -c '
import json, sys
steps = [r["step"] for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
sys.exit(steps != list(range(1, int(sys.argv[2]) + 1)))' "$dir/train_log.jsonl" "${steps[-1]}" || return
    metrics "$job" "$first"
}

sample() { # sample RUN: step 4 with the transformers backend, eval_rows x k lines
    local run=$1 extra=()
    [[ $run == qlora ]] && extra=(--quantization "$(cat "$SETUP/quantization.json")")
    local out=$OUT/samples-$run.jsonl
    local argv=("$PYTHON" -m aha sample --model "$WORK/$run/checkpoints/step-4.json"
        --eval "$DATA/eval.parquet" --sampling "$(cat "$SETUP/sampling.json")" --backend hf
        --device "$DEVICE" --run "smoke-$run" --step 4 --out "$out" "${extra[@]}")
    echo "+ ${argv[*]}"
    timed "${argv[@]}" || return
    local rows want
    rows=$(wc -l <"$out")
    want=$(($(cat "$SETUP/eval_rows") * 2))
    check "$out has eval rows x k = $want lines (has $rows)" test "$rows" -eq "$want"
}

listing() {
    local run
    for run in qlora zero3; do
        [[ -d $WORK/$run ]] || continue
        echo "=== $run"
        ls -la "$WORK/$run" "$WORK/$run/checkpoints"
        ls -la "$WORK/$run/weights"/* "$WORK/$run/trainer"/*
        cat "$WORK/$run/checkpoints/step-4.json" 2>/dev/null
        cp "$WORK/$run/train_log.jsonl" "$OUT/train_log-$run.jsonl" 2>/dev/null
    done
    cp "$SETUP"/spec-qlora.json "$SETUP"/spec-zero3.json "$OUT/" 2>/dev/null
    return 0
}

# ----------------------------------------------------------------------------- main

echo "gpu-smoke: DEVICE=$DEVICE PYTHON=$PYTHON OUT=$OUT WORK=$WORK SMOKE_DIR=$SMOKE_DIR budget ${BUDGET}s"
if [[ ! -f $MODEL/config.json || ! -f $DATA/eval.parquet ]]; then
    echo "no tiny model or data in $SMOKE_DIR: run scripts/gpu-smoke-prepare.sh first" >&2
fi
if [[ $DEVICE == cuda ]]; then
    stage install 240 "" install
else
    echo "DEVICE=cpu: no installs (the rehearsal environment has every package)"
fi
stage versions 90 "" versions
[[ -f $OUT/versions.log ]] && mv "$OUT/versions.log" "$OUT/versions.txt"
stage specs 60 "" specs
stage contracts 90 "" timed "$PYTHON" -m aha check-contracts --model "$MODEL"
stage check-gpu-qlora 60 specs timed "$PYTHON" -m aha check-gpu --run "$(cat "$SETUP/spec-qlora.json" 2>/dev/null)" --model "$MODEL"
stage check-gpu-zero3 60 specs timed "$PYTHON" -m aha check-gpu --run "$(cat "$SETUP/spec-zero3.json" 2>/dev/null)" --model "$MODEL"
stage qlora 180 specs train qlora
stage zero3 210 specs train zero3
stage sample-qlora 90 qlora sample qlora
stage sample-zero3 90 zero3 sample zero3
stage qlora-resume 150 qlora train qlora-resume
stage zero3-resume 180 zero3 train zero3-resume
RESERVE=0 stage listing 30 "" listing

echo
echo "== summary ($(($(date +%s) - START))s)"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
echo "== metrics"
column -t -s $'\t' "$OUT/metrics.tsv" 2>/dev/null || cat "$OUT/metrics.tsv"
while IFS=$'\t' read -r name status _; do
    log=$OUT/$name.log
    [[ $name == versions ]] && log=$OUT/versions.txt
    case $status in failed | timeout)
        echo "== $name: last lines of its log"
        tail -n 25 "$log" | cut -c 1-400
        ;;
    esac
done < <(tail -n +2 "$OUT/summary.tsv")

files=$(find "$OUT" -maxdepth 1 -type f | wc -l)
if [[ $PACK == 1 || ($PACK == auto && $files -gt 8) ]]; then
    mapfile -t packed < <(cd "$OUT" && find . -mindepth 1 -maxdepth 1 ! -name summary.tsv \
        ! -name metrics.tsv ! -name versions.txt ! -name gpu-smoke-logs.tar.gz -printf '%P\n' | sort)
    if tar czf "$OUT/.logs.tar.gz" -C "$OUT" "${packed[@]}" && mv "$OUT/.logs.tar.gz" "$OUT/gpu-smoke-logs.tar.gz"; then
        (cd "$OUT" && rm -rf "${packed[@]}")
        echo "== packed ${#packed[@]} files into $OUT/gpu-smoke-logs.tar.gz"
    fi
fi
exit $FAILED
