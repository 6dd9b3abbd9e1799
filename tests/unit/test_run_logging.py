"""How runs are logged and named: params under params.yaml's names, tags, metrics retried on a key
collision; in-process, no MLflow server, no git (tests/stages has the git commit tag against real
repos)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import copy_store

from pipeline import run_logging
from pipeline.paths import run_name


def test_params_are_flattened_with_the_names_of_params_yaml():
    flat = run_logging.flatten("train", {"batch_size": 16, "seeds": [1, 2], "inner": {"a": None}})
    assert flat == {"train.batch_size": 16, "train.seeds": "1,2", "train.inner.a": None}


def test_run_names_and_tags(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-3")
    monkeypatch.setenv("DVC_STAGE", "train@transposed-2")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(run_logging, "git_commit", lambda cwd=None: sha)  # the real one: tests/stages
    tags = run_logging.run_tags(variant="transposed", seed=2, stage="x", dataset="mnist", dataset_sha256="ab")
    assert run_name("transposed", 2) == "transposed/seed-2"
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == sha
    assert tags["dvc.experiment"] == "lr-sweep-3"
    assert tags["dvc.stage"] == "train@transposed-2"
    assert tags["variant"] == "transposed" and tags["seed"] == "2" and tags["dataset.sha256"] == "ab"
    assert "hunter2" not in str(tags)


def test_metrics_logged_twice_in_one_millisecond_to_a_run_with_a_model_do_not_fail(
    tmp_path: Path, monkeypatch, migrated_store: Path
):
    """Two parallel re-evaluations of one trained run log the same names; MLflow's key has no value."""
    import time

    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from pipeline.config import Variant
    from pipeline.models import build_model
    from pipeline.training_logging import log_keras_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_store(migrated_store, tmp_path / "mlflow.db"))
    monkeypatch.chdir(tmp_path)  # the default experiment keeps artifacts in ./mlruns
    spec = Variant.model_validate({"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]})
    model = build_model(spec, (28, 28, 1), 10)
    frozen = 1_700_000_000_000
    with mlflow.start_run() as run:
        log_keras_model(model, np.zeros((2, 28, 28, 1), np.float32), name="m", scaling="unit")
        mlflow.log_metrics({"test_accuracy": 0.5}, timestamp=frozen)
        with pytest.raises(MlflowException, match="(?i)unique constraint"):  # what MLflow does on its own
            mlflow.log_metrics({"test_accuracy": 0.6}, timestamp=frozen)
        real_time = time.time
        calls = []

        def same_millisecond_first() -> float:
            calls.append(1)
            return frozen / 1000 if len(calls) == 1 else real_time()

        monkeypatch.setattr(time, "time", same_millisecond_first)
        run_logging.log_metrics({"test_accuracy": 0.7})
        monkeypatch.setattr(time, "time", real_time)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")
    assert 0.7 in [m.value for m in history]
