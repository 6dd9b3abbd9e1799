"""What the compare stage leaves in MLflow: each variant's champion (its best seed by validation
accuracy) registered as `deconvolution-<variant>@champion`, and the summary run, in the reports
experiment, that holds the report and points at the runs it summarizes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import TrackingError
from pipeline.paths import run_name
from pipeline.run_logging import context_tags, flatten, log_metrics, tracked_run

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.record import RunRecord

# registered models: "deconvolution-<variant>", the best seed of the latest compare under CHAMPION
REGISTERED_PREFIX = "deconvolution-"
CHAMPION = "champion"


def registered_name(variant: str) -> str:
    """The registry's name for a variant's champion model."""
    return f"{REGISTERED_PREFIX}{variant}"


def logged_model_id(run: Any) -> str | None:
    """The id of the model a training run (an MLflow Run, or its id) logged: its last, if it logged
    more than one."""
    import mlflow

    if isinstance(run, str):
        run = mlflow.MlflowClient().get_run(run)
    models = run.outputs.model_outputs if run.outputs else []
    return models[-1].model_id if models else None


def champion(records: Sequence[RunRecord]) -> RunRecord | None:
    """A variant's best run by final *validation* accuracy (never test), among the runs that trained;
    the lowest seed wins a tie. None when no run has a finite validation accuracy."""
    candidates = [
        r
        for r in records
        if r.diverged_at_step is None and r.val_accuracy is not None and math.isfinite(r.val_accuracy)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-r.val_accuracy, r.seed))


def register_champion(variant: str, record: RunRecord, dataset_name: str) -> Any:
    """Register a variant's champion run's logged model as `deconvolution-<variant>` (a new version
    only if this model has none yet) and point the `champion` alias at it. Returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    name = registered_name(variant)
    training = client.get_run(record.run_id)
    model_id = logged_model_id(training)
    if model_id is None:
        raise TrackingError(f"{run_name(variant, record.seed)} has no logged model: rerun its train stage")
    versions = client.search_model_versions(f"name = '{name}'")  # none yet: an empty list
    existing = [v for v in versions if model_id in (v.model_id, v.source.removeprefix("models:/"))]
    if existing:
        version = existing[0]
    else:
        version = mlflow.register_model(
            f"models:/{model_id}",
            name,
            tags={
                "variant": variant,
                "seed": str(record.seed),
                "val_accuracy": str(record.val_accuracy),
                "dataset": dataset_name,
                "git.commit": training.data.tags.get("git.commit", "unknown"),
                "dvc.experiment": training.data.tags.get("dvc.experiment", "workspace"),
            },
        )
        client.update_registered_model(
            name, description=f"The {variant!r} variant: its best seed by validation accuracy, alias {CHAMPION!r}."
        )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version


def register_champions(records: Sequence[RunRecord], params: Params) -> dict[str, str]:
    """Register each variant's champion (see `champion`, `register_champion`); says what each got."""
    said = {}
    for variant in params.variants:
        best = champion([r for r in records if r.variant == variant])
        if best is None:
            said[variant] = "no run trained; nothing registered"
            continue
        version = register_champion(variant, best, params.data.dataset)
        said[variant] = f"version {version.version} ({run_name(variant, best.seed)})"
    return said


def log_summary_run(experiment_id: str, params: Params, metrics: Mapping, reports: Path, run_ids: list[str]) -> str:
    """The compare stage's `summary` run, in the reports experiment: the report as artifacts, its
    figures as metrics, and a `summary_run_id` tag on every run it summarizes. Returns its run id."""
    import mlflow

    from pipeline.artifacts import json_safe

    with tracked_run(experiment_id, name="summary", tags={"summary": "true", **context_tags()}) as run:
        mlflow.log_params(
            {"variants": ",".join(params.variants), "train.seeds": ",".join(map(str, params.train.seeds))}
        )
        log_metrics(_flat_metrics(json_safe(metrics)))
        mlflow.log_artifacts(str(reports), artifact_path="reports")
        mlflow.set_tag("summary.runs", ",".join(run_ids))
        client = mlflow.MlflowClient()
        for run_id in run_ids:
            client.set_tag(run_id, "summary_run_id", run.info.run_id)
        return run.info.run_id


def _flat_metrics(metrics: Mapping) -> dict[str, float]:
    """{'baseline': {'test_accuracy': 0.9}} -> {'baseline.test_accuracy': 0.9}; numbers only."""
    return {k: v for k, v in flatten("", metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
