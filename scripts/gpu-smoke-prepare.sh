#!/usr/bin/env bash
# Prepare, on a CPU machine with network to PyPI, what scripts/gpu-smoke.sh needs on a one-GPU
# machine without network (e.g. an H100 or H200 image with Python 3.12, torch 2.11 CUDA 13,
# transformers 5.17; no trl, datasets, deepspeed, bitsandbytes). Everything lands in .whl/
# (git-ignored through .git/info/exclude), which goes to that machine with the checkout:
#
#   .whl/wheels/   pinned wheels for cp312 manylinux x86_64, installed there with
#                  `pip install --no-index --no-deps --target /tmp/site`
#   .whl/maybe/    wheels installed there only if the machine's own copy is older
#   .whl/sdist/    deepspeed 0.19.8's sdist (recent releases are source-only; a --only-binary
#                  download silently picks an ancient 0.3.x wheel); built there, DS_BUILD_OPS=0
#   .whl/fallback/ deepspeed's pure-Python wheel built here, used only if the sdist fails to build
#   .whl/bnb/      bitsandbytes 0.50.2 unpacked with only its cuda130 and cpu libraries
#                  (4.5 MB instead of the 43 MB wheel), put on PYTHONPATH there
#   .whl/smoke/    the tiny model and data (models/tiny, data/*.parquet), built with this
#                  project's own workflow and config/rehearsal.yaml
#
# Idempotent: files already present are kept; stale ones (other versions) are removed.
#
#   scripts/gpu-smoke-prepare.sh               # everything (downloads + model/data)
#   scripts/gpu-smoke-prepare.sh --smoke-only  # only the tiny model and data, into $SMOKE_DIR
#   scripts/gpu-smoke-prepare.sh --force       # rebuild the model/data and the bnb folder
#
# Environment: SMOKE_DIR (default .whl/smoke), PIP_PYTHON (a Python with a recent pip, default
# .venv/bin/python), BUILD_PYTHON (Python with snakemake and the project, default
# .venv-rehearsal/bin/python, else .venv/bin/python), CACHE (where the full bitsandbytes wheel is
# kept, outside .whl: default ~/.cache/aha-gpu-smoke).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SMOKE_ONLY=0
FORCE=0
for arg in "$@"; do
    case $arg in
        --smoke-only) SMOKE_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

WHL=$ROOT/.whl
SMOKE_DIR=${SMOKE_DIR:-$WHL/smoke}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aha-gpu-smoke}
if [[ -z ${PIP_PYTHON:-} ]]; then
    PIP_PYTHON=python3
    [[ -x .venv/bin/python ]] && PIP_PYTHON=.venv/bin/python
fi
if [[ -z ${BUILD_PYTHON:-} ]]; then
    BUILD_PYTHON=.venv/bin/python
    [[ -x .venv-rehearsal/bin/python ]] && BUILD_PYTHON=.venv-rehearsal/bin/python
fi

# What the GPU machine lacks (or has in a version too old), pinned: one version of each, as
# pip --no-deps --target would otherwise stop on two. Versions as in .venv / .venv-rehearsal.
WHEELS=(
    transformers==5.23.0 # 5.17 there has no TrainingArguments.activation_checkpointing
    trl==1.16.0
    datasets==5.2.0
    dill==0.4.1               # datasets: dill<0.4.2
    multiprocess==0.70.19     # datasets: multiprocess<0.70.20
    peft==0.21.2              # the project's pin; transformers 5.23 wants peft>=0.20 (there: unknown)
    jsonschema==4.26.0        # aha.config validates with it
    referencing==0.37.0
    rpds-py==2026.9.1
    jsonschema-specifications==2025.9.1
    hjson==3.1.0              # deepspeed
    pydantic==2.14.4          # deepspeed
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
)
# Installed there only where the machine's version is older (pydantic 2.14 needs >= 4.16.0).
MAYBE=(typing-extensions==4.16.0)
DEEPSPEED=deepspeed==0.19.8
BITSANDBYTES=bitsandbytes==0.50.2
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

say() { printf '== %s\n' "$*"; }

# The file name prefix pip gives a distribution (name normalised to underscores, then version).
prefix() {
    local name=${1%%==*} version=${1##*==}
    name=$(tr '[:upper:]' '[:lower:]' <<<"${name//-/_}")
    printf '%s-%s' "$name" "$version"
}

have() { # have DIR SPEC: a file for exactly this name and version is there
    compgen -G "$1/$(prefix "$2")[-.]*" >/dev/null ||
        compgen -G "$1/$(prefix "$2" | sed 's/_/-/g')[-.]*" >/dev/null
}

# download DIR [pip options] -- SPEC...: pip download whatever is not there yet; drop the rest.
download() {
    local dir=$1
    shift
    local opts=()
    while [[ $1 != -- ]]; do
        opts+=("$1")
        shift
    done
    shift
    mkdir -p "$dir"
    local missing=() spec
    for spec in "$@"; do have "$dir" "$spec" || missing+=("$spec"); done
    if ((${#missing[@]})); then
        say "downloading ${missing[*]}"
        "$PIP_PYTHON" -m pip download --quiet --no-deps "${opts[@]}" -d "$dir" "${missing[@]}"
    fi
    local file keep
    for file in "$dir"/*; do
        [[ -e $file ]] || continue
        keep=0
        for spec in "$@"; do
            local p
            p=$(prefix "$spec")
            case ${file##*/} in "$p"[-.]* | "${p//_/-}"[-.]*) keep=1 ;; esac
        done
        if ((!keep)); then
            say "removing stale ${file##*/}"
            rm -rf "$file"
        fi
    done
}

ignore_whl() {
    if git check-ignore -q .whl/probe 2>/dev/null; then return; fi
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    echo "/.whl/" >>"$exclude"
    say "added /.whl/ to $exclude (add .whl/ to .gitignore to make it permanent)"
}

build_smoke() {
    if [[ $FORCE == 0 && -f $SMOKE_DIR/models/tiny/config.json && -f $SMOKE_DIR/data/eval.parquet &&
        -f $SMOKE_DIR/data/train.parquet ]]; then
        say "tiny model and data already in $SMOKE_DIR"
        return
    fi
    local build
    build=$(mktemp -d "${TMPDIR:-/tmp}/gpu-smoke-build.XXXXXX")
    say "building the tiny model and data with the workflow ($BUILD_PYTHON, in $build)"
    if ! HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$BUILD_PYTHON" -m snakemake -s "$ROOT/Snakefile" \
        --cores 2 --configfile "$ROOT/config/config.yaml" "$ROOT/config/rehearsal.yaml" \
        --directory "$build" results/models/tiny results/data/eval.parquet >"$build/snakemake.log" 2>&1; then
        tail -n 40 "$build/snakemake.log" >&2
        echo "snakemake failed; its log: $build/snakemake.log" >&2
        exit 1
    fi
    rm -rf "$SMOKE_DIR/models" "$SMOKE_DIR/data"
    mkdir -p "$SMOKE_DIR/models"
    cp -r "$build/results/models/tiny" "$SMOKE_DIR/models/tiny"
    cp -r "$build/results/data" "$SMOKE_DIR/data"
    rm -rf "$build"
    say "tiny model and data in $SMOKE_DIR: $(du -sh "$SMOKE_DIR" | cut -f1)"
}

if ((SMOKE_ONLY)); then
    build_smoke
    exit 0
fi

ignore_whl
mkdir -p "$WHL" "$CACHE"

download "$WHL/wheels" "${PLATFORM[@]}" -- "${WHEELS[@]}"
download "$WHL/maybe" "${PLATFORM[@]}" -- "${MAYBE[@]}"
download "$WHL/sdist" --no-binary :all: -- "$DEEPSPEED"

# DeepSpeed's pure-Python wheel (no compiled ops), built here in case the machine's setuptools
# cannot build the sdist (setuptools 77-78 fail with "unexpected keyword argument 'use_ninja'").
mkdir -p "$WHL/fallback"
if ! have "$WHL/fallback" "$DEEPSPEED"; then
    say "building deepspeed's fallback wheel"
    rm -f "$WHL"/fallback/*
    DS_BUILD_OPS=0 "$PIP_PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --no-index \
        -w "$WHL/fallback" "$WHL"/sdist/deepspeed-*.tar.gz
fi

# bitsandbytes: the wheel holds libraries for every CUDA, ROCm and XPU version; keep cuda130
# (torch 2.11+cu130 there) and cpu, and the dist-info (transformers checks the version).
if [[ $FORCE == 1 || ! -f $WHL/bnb/bitsandbytes/libbitsandbytes_cuda130.so ]]; then
    download "$CACHE" "${PLATFORM[@]}" -- "$BITSANDBYTES"
    rm -rf "$WHL/bnb"
    mkdir -p "$WHL/bnb"
    "$PIP_PYTHON" - "$CACHE"/bitsandbytes-*.whl "$WHL/bnb" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1:]
kept = 0
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        base = name.rsplit("/", 1)[-1]
        if base.startswith("libbitsandbytes_") and base not in (
            "libbitsandbytes_cuda130.so",
            "libbitsandbytes_cpu.so",
        ):
            continue
        zf.extract(name, dest)
        kept += 1
print(f"bitsandbytes: {kept} files unpacked into {dest}")
EOF
fi

# Every carried distribution's Requires-Dist, for Python 3.12 on Linux, must be met by another
# carried one or by the machine's image (KINDS.md's package list; versions where known).
say "checking Requires-Dist against the machine's packages"
"$PIP_PYTHON" - "$WHL" <<'EOF'
import email.parser, re, sys, tarfile, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

whl = Path(sys.argv[1])
# The one-GPU machine's image as documented on 2026-11-17 (packages it has, versions where known).
MACHINE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnxruntime opencv-python-headless optax
opt-einsum orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pytest python-dateutil pyyaml regex requests rich safetensors scikit-learn scipy
seaborn sentencepiece setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard threadpoolctl tiktoken timm tokenizers toolz torch torchaudio torchvision tqdm
transformers triton typer typing-extensions typing-inspect urllib3 uvloop werkzeug wheel wrapt
xarray xxhash yarl zipp"""
KNOWN = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2",
         "safetensors": "0.8.0", "tokenizers": "0.23.2", "torch": "2.11.0", "triton": "3.6.0",
         "transformers": "5.17.0"}
machine = {canonicalize_name(n) for n in MACHINE.split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def metadata(path):
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            text = zf.read(name).decode()
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tf:
            member = next(m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            text = tf.extractfile(member).read().decode()
    else:
        text = path.read_text()
    return email.parser.Parser().parsestr(text)


carried = {}
sources = [*sorted((whl / "wheels").glob("*.whl")), *sorted((whl / "sdist").glob("*.tar.gz")),
           *sorted((whl / "bnb").glob("*.dist-info/METADATA"))]
maybe = {canonicalize_name(metadata(p)["Name"]): metadata(p)["Version"] for p in (whl / "maybe").glob("*.whl")}
for path in sources:
    meta = metadata(path)
    carried[canonicalize_name(meta["Name"])] = (meta["Version"], meta.get_all("Requires-Dist") or [])
problems = 0
for name, (version, requires) in sorted(carried.items()):
    needs = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = canonicalize_name(req.name)
        if dep in carried:
            have, where = carried[dep][0], "carried"
        elif dep in maybe:
            have, where = maybe[dep], "carried if newer"
        elif dep in machine:
            have, where = KNOWN.get(dep), "machine"
        else:
            print(f"  MISSING {name} {version} needs {req}: neither carried nor on the machine")
            problems += 1
            continue
        if have is not None and req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            print(f"  CONFLICT {name} {version} needs {req}, {where} has {have}")
            problems += 1
        else:
            needs.append(f"{req.name}{req.specifier}" + ("" if have else "?"))
    print(f"  {name} {version}: ok ({', '.join(needs) or 'no requirements'})")
print("  (? = on the machine, version not known here)")
sys.exit(1 if problems else 0)
EOF

build_smoke

# A manifest for the record (and for gpu-smoke.sh's versions stage).
(
    cd "$WHL"
    find wheels maybe sdist fallback -type f | sort
    find bnb -maxdepth 1 -name '*.dist-info'
    find bnb/bitsandbytes -maxdepth 1 -name '*.so' | sort
) >"$WHL/manifest.txt"

total=$(du -sb "$WHL" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{ s += $1 } END { print s + 0 }')
say "sizes:"
du -sh "$WHL"/* | sed 's/^/   /'
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say ".whl: $(mib "$total"); working tree that travels besides it: $(mib "$tree"); together $(mib $((total + tree))) of 64 MiB"
if ((total + tree > 56 * 1048576)); then
    echo "too close to 64 MiB, the most a copy to a machine without network is planned for" >&2
    exit 1
fi
