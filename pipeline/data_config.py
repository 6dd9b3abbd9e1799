"""The `data` section of params.yaml (DataConfig), and `load_data_config`, which reads that section
alone: all that the fetch and prepare stages declare, so that editing the layer vocabulary or
another section leaves them up to date. pipeline.config's Params holds the same DataConfig."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import schema
from pipeline.errors import ConfigError
from pipeline.scaling import Scaling


class DataConfig(schema.Strict):
    dataset: str = "mnist"
    mirrors: list[str] = Field(default_factory=list)
    sha256: dict[str, str] = Field(default_factory=dict)
    validation_size: Annotated[int, Field(ge=0)] = 5000
    split_seed: int = 0
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    scaling: Scaling = "centered"  # the map from raw pixels to a network's inputs: pipeline.scaling


class _DataSection(BaseModel):
    """params.yaml seen through its data section: the other sections are pipeline.config's to check."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    data: DataConfig = Field(default_factory=DataConfig)


def load_data_config(path: str | Path = "params.yaml") -> DataConfig:
    """The data section of a params file, checked with pipeline.config's messages; the other
    sections are not read."""
    source = str(Path(path))
    raw = schema.check_sections(schema.read_yaml(path), source)
    try:
        return _DataSection.model_validate(raw).data
    except ValidationError as exc:
        allowed_for = functools.partial(schema.section_keys, _DataSection)
        raise ConfigError(schema.format_validation_error(exc, source, allowed_for=allowed_for)) from None
