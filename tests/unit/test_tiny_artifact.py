"""The committed tiny base model (models/tiny-base, `model.tiny.prebuilt`): installed only when
built from the config's recipe. That a rebuild reproduces it is an integration test
(tests/integration/test_tiny_model_build.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from aha.sections import TinySpec, section
from aha.task.metrics import fisher_exact_p, proportions_agree
from aha.tiny import artifact as tiny_artifact
from tests.conftest import ROOT

ARTIFACT = ROOT / "models" / "tiny-base"
TINY_YAML = ROOT / "config" / "tiny.yaml"
# Level of Fisher's two-sided exact test that a rebuild's sampled rates equal the committed ones
# (per rate; two rates, so at most 2% of machines whose rates are only noise would fail).
RATE_ALPHA = 0.01
RATES = ("format_rate", "success_rate")


def tiny_config() -> dict:
    return yaml.safe_load(TINY_YAML.read_text())


def fake_artifact(folder: Path, spec: dict, seed: int, train: Path) -> Path:
    """A model folder whose warm_start.json records (spec, seed, train); files are stand-ins."""
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text(name)
    report = {**tiny_artifact.recipe(spec, seed, train), "eval": {"success_rate": 0.1}}
    (folder / "warm_start.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def train(tmp_path: Path) -> Path:
    path = tmp_path / "train.parquet"
    path.write_bytes(b"the train split")
    return path


def spec_of(raw: dict) -> dict:
    return asdict(section(TinySpec, raw))


def test_install_copies_a_model_built_from_this_recipe(tmp_path: Path, train: Path) -> None:
    spec = spec_of(tiny_config()["model"]["tiny"])
    art = fake_artifact(tmp_path / "art", spec, 42, train)
    out = tmp_path / "results" / "models" / "tiny"
    report = tiny_artifact.install(art, spec, 42, train, out)
    assert report["eval"] == {"success_rate": 0.1}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in art.iterdir())
    assert not out.with_name("tiny.partial").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"warm_start": {"max_steps": 900}}, "spec.warm_start.max_steps: built with 1500, config asks 900"),
        ({"hidden_size": 128}, "spec.hidden_size: built with 192, config asks 128"),
        ({"seed": 7}, "seed: built with 42, config asks 7"),
        ({"train": b"another split"}, "train_sha256: built with"),
    ],
)  # fmt: skip
def test_install_refuses_another_recipe(
    tmp_path: Path, train: Path, change: dict, named: str
) -> None:
    raw = tiny_config()["model"]["tiny"]
    art = fake_artifact(tmp_path / "art", spec_of(raw), 42, train)
    seed = change.pop("seed", 42)
    if "train" in change:
        train.write_bytes(change.pop("train"))
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(tiny_artifact.ArtifactError, match="built from another recipe") as err:
        tiny_artifact.install(art, spec_of(raw), seed, train, tmp_path / "out")
    assert named in str(err.value) and "tiny-rebuild.yaml" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_install_refuses_a_folder_that_is_no_build(tmp_path: Path, train: Path) -> None:
    spec = spec_of(tiny_config()["model"]["tiny"])
    with pytest.raises(tiny_artifact.ArtifactError, match=r"no warm_start\.json"):
        tiny_artifact.install(tmp_path, spec, 42, train, tmp_path / "out")
    art = fake_artifact(tmp_path / "art", spec, 42, train)
    (art / "model.safetensors").unlink()
    with pytest.raises(tiny_artifact.ArtifactError, match=r"missing model\.safetensors"):
        tiny_artifact.install(art, spec, 42, train, tmp_path / "out")


def test_prebuilt_does_not_change_the_recipe() -> None:
    """Where a model comes from is not how it is built: `prebuilt` is left out of the recipe."""
    raw = tiny_config()["model"]["tiny"]
    a = tiny_artifact.recipe(spec_of(raw), 42, TINY_YAML)
    b = tiny_artifact.recipe(spec_of({**raw, "prebuilt": None}), 42, TINY_YAML)
    assert a == b and "prebuilt" not in a["spec"]


def rate_differences(old: dict, new: dict, alpha: float = RATE_ALPHA) -> list[str]:
    """The sampled rates (RATES) of two warm_start.json `eval` records that Fisher's two-sided
    exact test finds different at `alpha`: same quality is a statement about two samples of
    `tasks` completions each, so both counts' sampling noise is allowed for."""
    out = []
    for key in RATES:
        counts = []
        for record in (old, new):
            n = record["tasks"]
            successes = round(record[key] * n)
            assert successes == pytest.approx(record[key] * n, abs=1e-6), (key, record[key], n)
            counts.append((successes, n))
        (a, n_a), (b, n_b) = counts
        if not proportions_agree(a, n_a, b, n_b, alpha):
            out.append(f"{key}: {a}/{n_a} vs {b}/{n_b}, p {fisher_exact_p(a, n_a, b, n_b):.2g}")
    return out


def test_rate_comparison_allows_noise_and_names_a_real_change() -> None:
    """A fresh clone's 200/200 format against the committed 199/200 is the same quality (the
    one-sample Wilson check refused it); a drop to 180/200 or a success jump is not."""
    committed = {"tasks": 200, "format_rate": 0.995, "success_rate": 0.025}
    assert rate_differences(committed, {**committed, "format_rate": 1.0}) == []
    assert rate_differences(committed, {**committed, "success_rate": 0.0}) == []  # 5 vs 0: p 0.06
    changed = {"tasks": 200, "format_rate": 0.9, "success_rate": 0.1}
    assert [d.split(":")[0] for d in rate_differences(committed, changed)] == list(RATES)
    assert rate_differences(committed, changed, alpha=1e-3) == [  # success: 5 vs 20, p 0.003
        "format_rate: 199/200 vs 180/200, p 1.3e-05"
    ]


def test_committed_model_records_the_tiny_config_recipe(tiny_train_split: Path) -> None:
    """models/tiny-base was built from config/tiny.yaml's recipe and data: the DAG installs it."""
    cfg = tiny_config()
    assert cfg["model"]["tiny"]["prebuilt"] == "models/tiny-base"
    report = json.loads((ARTIFACT / "warm_start.json").read_text())
    wanted = tiny_artifact.recipe(spec_of(cfg["model"]["tiny"]), cfg["seed"], tiny_train_split)
    assert tiny_artifact.differences(wanted, tiny_artifact.recorded_recipe(report)) == []
    size = sum(p.stat().st_size for p in ARTIFACT.iterdir())
    assert size < 10 * 2**20, f"models/tiny-base is {size / 2**20:.1f} MiB"


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_kind_tells_apart_hosts_that_share_a_model_name() -> None:
    """Two hosts that both call themselves "AMD EPYC" differ in family or vector ISA; the kind
    says so, as byte-identical weights need."""
    zen3 = tiny_artifact.cpu_kind(ZEN3)
    assert zen3 == "model name AMD EPYC; cpu family 25; model 1; stepping 1; isa avx2 fma"
    zen4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace(
        "fma\n", "fma avx512f avx512_bf16\n"
    )
    assert tiny_artifact.cpu_kind(zen4) == (
        "model name AMD EPYC; cpu family 25; model 17; stepping 1; isa avx2 fma avx512f avx512_bf16"
    )
    assert tiny_artifact.cpu_kind("") == "isa -"
