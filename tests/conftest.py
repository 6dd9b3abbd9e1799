"""Shared test set-up: every test starts without the caller's MLflow/DVC variables, and the costly
things many tests need are made once per session (an empty migrated MLflow store, a learned network)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# what a test, or the pipeline code it calls, may set: mlflow.set_tracking_uri() writes
# MLFLOW_TRACKING_URI, `python -m pipeline predict` MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_STAGE",
)


@pytest.fixture(autouse=True)
def _isolated_tracking_env(monkeypatch):
    """No test sees these variables at its start, and whatever a test sets is undone after it, as is
    MLflow's in-process tracking URI (which wins over MLFLOW_TRACKING_URI)."""
    for key in _ENV:
        monkeypatch.setenv(key, "")  # records the value before the test, or its absence, for the undo
        monkeypatch.delenv(key)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder's kind: unit, stages or e2e."""
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "stages", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with all of MLflow's migrations applied, made once per session.
    Tests copy it (support.copy_store) instead of paying the migrations again for every new store
    (3 to 7 s each here); a test of how a store comes to be still starts from no file."""
    import mlflow

    folder = tmp_path_factory.mktemp("migrated-store")
    path = folder / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's Default experiment keeps artifacts in ./mlruns
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def learned_network():
    """One small logits network that has learned `model_store.learnable_images` in both pixel
    scalings, trained once per session: the predict tests and the serving tests share it."""
    from model_store import train_network

    return train_network()
