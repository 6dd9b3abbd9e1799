"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_tracking_env(monkeypatch):
    """mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ; undo it after each test."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE"):
        monkeypatch.delenv(key, raising=False)


def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder's kind: unit, stages or e2e."""
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "stages", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))
