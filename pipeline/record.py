"""What a run records, field by field: `RunRecord` is run.json (who the run is, how its training
went, its size), `MetricsRecord` its metrics JSON (its test metrics). The field names are the keys
of the files, the MLflow metric names and the report columns; the fields' order is the files'."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DataError


@dataclass(frozen=True)
class RunRecord:
    """models/<variant>/seed-<n>/run.json: written when the run's training ends, before its testing."""

    variant: str
    seed: int
    run_id: str  # the MLflow run
    experiment_id: str
    run_key: str  # runner.run_key: what the run's numbers depend on, hashed
    steps: int  # training steps done
    stopped_early_at: int | None
    diverged_at_step: int | None  # the first step with a NaN/inf loss
    val_accuracy: float | None  # of the model as saved (restored best under early stopping); null if NaN
    train_seconds: float
    trace_seconds: float
    validation_seconds: float
    train_images_per_second: float
    threads: int  # train.threads: part of the run's definition
    trainable_params: int
    flops_per_image: int
    data_scaling: str  # what `python -m pipeline predict` scales a file's pixels with
    peak_memory_mb: float | None

    def to_json(self) -> dict[str, Any]:
        """The fields in order, as run.json holds them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A run.json read back (other keys, such as the metrics JSON's merged in, are left out); a
        DataError names the fields it lacks."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            who = f"{data.get('variant', '?')}/seed-{data.get('seed', '?')}"
            raise DataError(f"{who}: its run.json has no {', '.join(missing)}: rerun its train stage (dvc repro)")
        return cls(**{name: data[name] for name in names})


@dataclass(frozen=True)
class MetricsRecord:
    """metrics/<variant>/seed-<n>.json: the run's identity and its test metrics, written last."""

    variant: str
    seed: int
    run_id: str
    test_accuracy: float
    test_loss: float
    inference_images_per_second: float
    eval_batch_size: int  # evaluate.batch_size
    test_examples: int
    per_class_accuracy: dict[str, float]  # class name: its test accuracy

    def to_json(self) -> dict[str, Any]:
        """The fields in order, as the metrics JSON holds them."""
        return dataclasses.asdict(self)
