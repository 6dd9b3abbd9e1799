"""Shared test set-up."""

from __future__ import annotations

import os

import pytest

from pipeline.runtime.worker import stop_workers


@pytest.fixture(autouse=True)
def _isolated_tracking_env(monkeypatch):
    """mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ; undo it after each test."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _session_stage_workers(tmp_path_factory):
    """Stage workers (pipeline.runtime.worker) started by the tests' stages live in this session's own
    directory and are stopped with the session."""
    directory = tmp_path_factory.mktemp("workers")
    directory.chmod(0o700)
    os.environ["PIPELINE_WORKER_DIR"] = str(directory)
    yield directory
    stop_workers(directory)


def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder's kind: unit, stages or e2e."""
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "stages", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))
