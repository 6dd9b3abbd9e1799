"""params.yaml as typed, immutable models; unknown keys and bad values are errors naming the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline import schema
from pipeline.data_config import DataConfig
from pipeline.errors import ConfigError
from pipeline.layers import LAYER_MODELS, LAYER_TYPES, Layer  # LAYER_TYPES: API here too
from pipeline.schema import PositiveInt, Strict

# --- variants: models as data, in the layer vocabulary of pipeline/layers.py -----------------------


class Variant(Strict):
    """A model as data: layers applied in order to a 28x28x1 image; the last gives the logits."""

    description: str = ""
    layers: list[Layer] = Field(min_length=1)


# --- sections --------------------------------------------------------------------------


class TrainConfig(Strict):
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    batch_size: PositiveInt = 16
    steps: PositiveInt = 1001
    validation_every: PositiveInt = 100
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    initializer: Literal["tutorial", "keras"] = "tutorial"
    early_stopping_patience: PositiveInt | None = None
    # a run whose loss becomes NaN/inf: "record" it as a diverged run (marked FAILED in MLflow, counted
    # in the report) and go on with the others, or "fail" the stage
    on_divergence: Literal["record", "fail"] = "record"
    # none | mirrored (all local GPUs) | multi_worker (tf.distribute over the workers in TF_CONFIG)
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    # TensorFlow's intra- and inter-op threads: part of a run's definition, since oneDNN splits its
    # reductions by thread count (same params, seed and threads: same numbers on any machine). 2: a
    # serial `dvc repro` is faster with 2 than with 1 (its validations and tests are large batches)
    threads: PositiveInt = 2

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds


class EvaluateConfig(Strict):
    batch_size: PositiveInt = 1000


class Params(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    variants: dict[str, Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _variant_names(self) -> Params:
        for name in self.variants:
            if not name.replace("_", "").isalnum() or not name[0].isalpha():
                raise ValueError(f"variant name {name!r} must start with a letter and use only letters, digits and '_'")
        return self

    def variant(self, name: str, source: str | Path = "params.yaml") -> Variant:
        """The variant called `name`; a ConfigError with a "did you mean" and the known ones when there is none."""
        if name not in self.variants:
            hint = difflib.get_close_matches(name, list(self.variants), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"variant {name!r} is not in {source}{did_you_mean}; known: {', '.join(self.variants)}")
        return self.variants[name]


# --- loading and error messages -----------------------------------------------------------


def _key_path(loc: tuple[Any, ...]) -> str:
    return schema.key_path(loc, skip=LAYER_TYPES)


def _allowed_for(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed in the mapping that contains the last element of loc."""
    parent = loc[:-1]
    if parent and parent[-1] in LAYER_MODELS:
        return list(LAYER_MODELS[parent[-1]].model_fields)
    if len(parent) == 2 and parent[0] == "variants":
        return list(Variant.model_fields)
    return schema.section_keys(Params, loc)


def _key_without_bias(loc: tuple[Any, ...]) -> str | None:
    """The message for bias_init on a layer type that has no bias, naming the variant and the layer
    (counted from 1, as users count); None for any other key."""
    if not (len(loc) == 6 and loc[0] == "variants" and loc[2] == "layers" and loc[-1] == "bias_init"):
        return None
    variant, index, layer_type = loc[1], loc[3], loc[4]
    with_bias = [name for name, cls in LAYER_MODELS.items() if "bias_init" in cls.model_fields]
    return (
        f"  - {_key_path(loc)}: variant {variant!r}, layer {index + 1} ({layer_type}) has no bias, so it takes no"
        f" bias_init; layers with a bias: {', '.join(with_bias)}"
    )


def _layer_message(err: dict, loc: tuple[Any, ...]) -> str | None:
    """The messages about layers: bias_init where there is no bias, an unknown or missing layer type;
    None for any other error."""
    key = _key_path(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        return _key_without_bias(loc)
    if err["type"] == "union_tag_invalid":
        tag = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
        hint = difflib.get_close_matches(str(tag), LAYER_TYPES, n=1)
        msg = f"  - {key}.type: unknown layer type {tag!r}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        return msg + f"; allowed: {', '.join(LAYER_TYPES)}"
    if err["type"] == "union_tag_not_found":
        return f"  - {key}: a layer needs a 'type', one of: {', '.join(LAYER_TYPES)}"
    return None


def format_validation_error(exc: ValidationError, source: str) -> str:
    return schema.format_validation_error(exc, source, key=_key_path, allowed_for=_allowed_for, special=_layer_message)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate already-loaded YAML data."""
    try:
        return Params.model_validate(schema.check_sections(raw, source))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml with a safe loader and validate it."""
    return parse_params(schema.read_yaml(path), str(Path(path)))
