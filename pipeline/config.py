"""params.yaml as typed, immutable models; unknown keys and bad values are errors naming the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.layers import LAYER_MODELS, LAYER_TYPES, Layer, PositiveInt, Strict  # Strict, LAYER_TYPES: API here too
from pipeline.scaling import Scaling

# --- variants: models as data, in the layer vocabulary of pipeline/layers.py -----------------------


class Variant(Strict):
    """A model as data: layers applied in order to a 28x28x1 image; the last gives the logits."""

    description: str = ""
    layers: list[Layer] = Field(min_length=1)


# --- sections --------------------------------------------------------------------------


class DataConfig(Strict):
    dataset: str = "mnist"
    mirrors: list[str] = Field(default_factory=list)
    sha256: dict[str, str] = Field(default_factory=dict)
    validation_size: Annotated[int, Field(ge=0)] = 5000
    split_seed: int = 0
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    scaling: Scaling = "centered"  # the map from raw pixels to a network's inputs: pipeline.scaling


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
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in LAYER_TYPES:
            continue  # pydantic's discriminator tag, not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def _allowed_for(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed in the mapping that contains the last element of loc."""
    parent = loc[:-1]
    if parent and parent[-1] in LAYER_MODELS:
        return list(LAYER_MODELS[parent[-1]].model_fields)
    if len(parent) == 2 and parent[0] == "variants":
        return list(Variant.model_fields)
    if len(parent) == 1 and parent[0] in Params.model_fields:
        annotation = Params.model_fields[parent[0]].annotation
        return list(getattr(annotation, "model_fields", {}))
    if not parent:
        return list(Params.model_fields)
    return []


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


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = _key_path(loc) or "(top level)"
        if err["type"] == "extra_forbidden" and (no_bias := _key_without_bias(loc)):
            msg = no_bias
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_for(loc)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"  - {key}: unknown key"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}"
        elif err["type"] == "union_tag_invalid":
            tag = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
            hint = difflib.get_close_matches(str(tag), LAYER_TYPES, n=1)
            msg = f"  - {key}.type: unknown layer type {tag!r}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            msg += f"; allowed: {', '.join(LAYER_TYPES)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"  - {key}: a layer needs a 'type', one of: {', '.join(LAYER_TYPES)}"
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            msg = f"  - {key}: {err['msg']}{shown}"
        lines.append(msg)
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate already-loaded YAML data."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of sections (data, train, evaluate, variants)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml with a safe loader and validate it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project root, or pass --params") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
