"""The committed tiny base model (models/tiny-base): installed instead of rebuilt when it was
built from exactly the recipe the config asks for.

The warm start plays pretraining's part, and the seed experiment does not pretrain Qwen either,
so `make demo` starts from a base model the `build_tiny_model` rule built once and the
repository keeps (`model.tiny.prebuilt`). Its warm_start.json records what built it: the tiny
spec, the seed and the sha256 of the train split it traced. A config, seed or data that differs
is refused with the differences named, never silently used; `prebuilt: null` rebuilds.
No torch: installing is a checked copy.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORT = "warm_start.json"
# What a rebuild needs to reproduce the artifact (besides the code): compared before installing.
RECIPE_KEYS = ("spec", "seed", "train_sha256")
REBUILD_HINT = (
    "rebuild it with the config's recipe (model.tiny.prebuilt: null, e.g. --configfile "
    "config/tiny.yaml config/tiny-rebuild.yaml), or point prebuilt at a model built from it"
)


class ArtifactError(ValueError):
    """The prebuilt model is missing, damaged, or built from another recipe."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model name: weights are the same bytes only on the same CPU kind (and threads)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The cpuinfo fields and vector-ISA flags that decide which kernels torch and oneDNN run, and so
# the order of floating-point sums: a virtual machine's model name alone ("AMD EPYC") does not.
_KIND_FIELDS = ("model name", "cpu family", "model", "stepping")
_KIND_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_kind(cpuinfo: str | None = None) -> str:
    """What identifies a CPU kind for byte-identical weights: model name, family, model,
    stepping and the vector-ISA flags, from /proc/cpuinfo (`cpuinfo`: its text, for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:
            break  # the first processor is every processor's kind
    flags = set(fields.get("flags", "").split())
    parts = [f"{k} {fields[k]}" for k in _KIND_FIELDS if k in fields]
    parts.append("isa " + (" ".join(f for f in _KIND_FLAGS if f in flags) or "-"))
    return "; ".join(parts)


def recipe(spec: Mapping[str, Any], seed: int, train: Path) -> dict[str, Any]:
    """The recipe of a build: the tiny spec without `prebuilt` (where a model comes from is not
    how it is built), the seed and the train split's sha256."""
    return {
        "spec": {k: v for k, v in spec.items() if k != "prebuilt"},
        "seed": int(seed),
        "train_sha256": sha256_file(train),
    }


def recorded_recipe(report: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe a warm_start.json records (RECIPE_KEYS; `prebuilt` left out of its spec)."""
    recorded = {k: report.get(k, "(absent)") for k in RECIPE_KEYS}
    if isinstance(recorded["spec"], Mapping):
        recorded["spec"] = {k: v for k, v in recorded["spec"].items() if k != "prebuilt"}
    return recorded


def differences(
    wanted: Mapping[str, Any], recorded: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """'key: recorded X, config Y' for every leaf that differs (missing keys included)."""
    out = []
    for key in sorted(set(wanted) | set(recorded), key=str):
        a, b = wanted.get(key, "(absent)"), recorded.get(key, "(absent)")
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: built with {b!r}, config asks {a!r}")
    return out


def install(
    prebuilt: Path, spec: Mapping[str, Any], seed: int, train: Path, out_dir: Path
) -> dict[str, Any]:
    """Copy `prebuilt` to `out_dir` if its recorded recipe is the config's; the report read."""
    report_path = prebuilt / REPORT
    if not report_path.is_file():
        raise ArtifactError(f"{prebuilt}: no {REPORT}; not a model built by build_tiny_model")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{report_path}: not JSON ({err})") from None
    diff = differences(recipe(spec, seed, train), recorded_recipe(report))
    if diff:
        raise ArtifactError(
            f"{prebuilt} was built from another recipe ({'; '.join(diff)}): {REBUILD_HINT}"
        )
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if
               not (prebuilt / f).is_file()]  # fmt: skip
    if missing:
        raise ArtifactError(f"{prebuilt}: missing {', '.join(missing)}")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(prebuilt, partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return report
