"""The config's sections as typed objects, each built one way: schema, then checks, then fields.

`section(cls, raw)` validates `raw` against its part of workflow/schemas/config.schema.yaml
(types, ranges, enums, unknown keys), fills the schema's defaults, runs the semantic checks of
`aha.config` for that section and builds the frozen dataclass. The schema is the only home of a
default and of an allowed key, `aha.config` the only home of a relation between keys: a stage
run by hand gets exactly the errors the DAG gives. A new knob is one schema entry, one field
here and one line of config/README.md.

A run is not a section: it is `aha.run.Run`, built from the whole config and its mode's row.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from aha import config as cfg

T = TypeVar("T")


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class GenerateConfig:
    """dataset.generate: the task generator's knobs."""

    num_tasks: int | None  # None: num_samples
    num_counts: tuple[int, ...]
    number_range: tuple[int, int]
    target_range: tuple[int, int]
    balance_patterns: bool


@dataclass(frozen=True)
class DatasetConfig:
    """dataset: where the tasks come from and how they are split."""

    source: str
    name: str
    split: str
    path: str | None
    generate: GenerateConfig
    shuffle_seed: int
    num_samples: int
    test_size: float
    split_seed: int
    eval_size: int


# ----------------------------------------------------------------------------- tiny model


@dataclass(frozen=True)
class WarmStart:
    """model.tiny.warm_start: the supervised warm start on reasoning traces."""

    num_traces: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    batch_size: int
    give_up_rate: float
    max_wrong_candidates: int
    max_value: int | None
    answer_slip_rate: float
    eval_tasks: int


@dataclass(frozen=True)
class TinySpec:
    """model.tiny: architecture and warm start of the offline tiny model."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    warm_start: WarmStart
    prebuilt: str | None  # a committed model built from this recipe, installed instead


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Sampling:
    """sampling: how every checkpoint's completions are drawn."""

    k: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    seed: int
    backend: str


# ----------------------------------------------------------------------------- building

# schema path (keys under `properties`) and semantic check of each section class
SECTIONS: dict[type, tuple[tuple[str, ...], Any]] = {
    DatasetConfig: (("dataset",), cfg.check_dataset),
    TinySpec: (("model", "tiny"), cfg.check_tiny),
    Sampling: (("sampling",), None),
}


def section(cls: type[T], raw: dict[str, Any] | None = None) -> T:
    """`raw` (a config section; absent keys take the schema's defaults) as a checked `cls`.

    Raises aha.config.ConfigError with one line naming the key.
    """
    path, check = SECTIONS[cls]
    filled = cfg.validate_section(path, raw or {})
    if check is not None:
        check(filled)
    return build(cls, filled, ".".join(path))


def build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """The dataclass `cls` from `data`: nested sections built, lists made tuples where typed so.

    Keys that are not fields are refused here, once for every section.
    """
    if not isinstance(data, dict):
        raise cfg.ConfigError(f"{where}: must be a mapping (got {data!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise cfg.ConfigError(
            f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown key"
            f"{'s' if len(unknown) > 1 else ''} (allowed: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise cfg.ConfigError(f"{', '.join(f'{where}.{k}' for k in missing)}: required")
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if origin in (typing.Union, types.UnionType) and isinstance(value, list):
        return tuple(value)
    return value
