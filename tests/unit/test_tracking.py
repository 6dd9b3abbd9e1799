"""Where runs land and how they are named: in-process, no MLflow server, no git (tests/stages has
the git commit tag against real repos)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import tracking


def test_project_root_maps_dvc_temporary_copies_back_to_the_workspace(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    temp_copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_copy.mkdir(parents=True)
    assert tracking.project_root(temp_copy) == (tmp_path / "proj").resolve()
    assert tracking.project_root(tmp_path / "proj") == (tmp_path / "proj").resolve()
    monkeypatch.chdir(temp_copy)
    assert tracking.project_root() == (tmp_path / "proj").resolve()


def test_dvc_root_wins_when_dvc_runs_the_stage(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir("/")
    assert tracking.project_root() == tmp_path.resolve()


def test_tracking_uri_default_and_override(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_params_are_flattened_with_the_names_of_params_yaml():
    flat = tracking.flatten("train", {"batch_size": 16, "seeds": [1, 2], "inner": {"a": None}})
    assert flat == {"train.batch_size": 16, "train.seeds": "1,2", "train.inner.a": None}


def test_run_names_and_tags(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-3")
    monkeypatch.setenv("DVC_STAGE", "train@transposed-2")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(tracking, "git_commit", lambda cwd=None: sha)  # the real one: tests/stages
    tags = tracking.run_tags(variant="transposed", seed=2, stage="x", dataset="mnist", dataset_sha256="ab")
    assert tracking.run_name("transposed", 2) == "transposed/seed-2"
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == sha
    assert tags["dvc.experiment"] == "lr-sweep-3"
    assert tags["dvc.stage"] == "train@transposed-2"
    assert tags["variant"] == "transposed" and tags["seed"] == "2" and tags["dataset.sha256"] == "ab"
    assert "hunter2" not in str(tags)


def test_an_unreachable_server_is_a_clear_error():
    from pipeline.errors import TrackingError

    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server at http://127.0.0.1:9"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2)
    tracking.check_reachable("sqlite:///x.db")  # nothing to reach for a local store


def test_metrics_logged_twice_in_one_millisecond_to_a_run_with_a_model_do_not_fail(tmp_path: Path, monkeypatch):
    """Two parallel re-evaluations of one trained run log the same names; MLflow's key has no value."""
    import time

    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from pipeline.config import Variant
    from pipeline.models import build_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the default experiment keeps artifacts in ./mlruns
    spec = Variant.model_validate({"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]})
    model = build_model(spec, (28, 28, 1), 10)
    frozen = 1_700_000_000_000
    with mlflow.start_run() as run:
        tracking.log_keras_model(model, np.zeros((2, 28, 28, 1), np.float32), name="m", scaling="unit")
        mlflow.log_metrics({"test_accuracy": 0.5}, timestamp=frozen)
        with pytest.raises(MlflowException, match="(?i)unique constraint"):  # what MLflow does on its own
            mlflow.log_metrics({"test_accuracy": 0.6}, timestamp=frozen)
        real_time = time.time
        calls = []

        def same_millisecond_first() -> float:
            calls.append(1)
            return frozen / 1000 if len(calls) == 1 else real_time()

        monkeypatch.setattr(time, "time", same_millisecond_first)
        tracking.log_metrics({"test_accuracy": 0.7})
        monkeypatch.setattr(time, "time", real_time)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")
    assert 0.7 in [m.value for m in history]


def test_a_relative_sqlite_uri_names_the_projects_store_wherever_dvc_runs_the_stage(tmp_path: Path, monkeypatch):
    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"  # dvc exp run --temp runs the stage here
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db?timeout=20")
    assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}?timeout=20"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"  # absolute: as given


@pytest.mark.parametrize("given", [None, "sqlite:///mlflow.db", "absolute"])
def test_artifacts_land_in_mlartifacts_beside_mlflow_db_with_or_without_the_uri(tmp_path: Path, monkeypatch, given):
    """README's store, `mlflow.db` plus `mlartifacts/`, also when MLFLOW_TRACKING_URI names it (as the
    README's serve line does): MLflow's own default would be ./mlruns."""
    import mlflow

    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)
    if given == "absolute":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    elif given:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
    experiment_id = tracking.connect()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text("hello", "note.txt")
    store = project.resolve()
    assert mlflow.get_experiment(experiment_id).artifact_location == (store / "mlartifacts").as_uri()
    assert (store / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert (store / "mlflow.db").is_file()
    assert not (project / "mlruns").exists()
