"""What the e2e tests share, made once per session: a project after one `dvc repro`."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc_project import copy_project, dvc, make_repo


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """The project (tests/dvc_project.py) after one `dvc repro`: every stage run once, the MLflow store
    created by the stages. Tests only read it; a test that changes it asks for `project_copy`."""
    path = tmp_path_factory.mktemp("e2e") / "project"
    make_repo(path)
    dvc(path, "repro")
    return path


@pytest.fixture
def project_copy(built_project: Path, tmp_path: Path) -> Path:
    """This test's own copy of `built_project` (dvc_project.copy_project), to change as it likes."""
    return copy_project(built_project, tmp_path / "project")
