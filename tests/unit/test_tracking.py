"""Where runs land: the store a stage finds from wherever it runs, in-process, no MLflow server."""

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


def test_an_unreachable_server_is_a_clear_error():
    from pipeline.errors import TrackingError

    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server at http://127.0.0.1:9"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2)
    tracking.check_reachable("sqlite:///x.db")  # nothing to reach for a local store


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
