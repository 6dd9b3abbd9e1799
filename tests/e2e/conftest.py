"""What the e2e tests share: a project after one `dvc repro`, and a team server (MLflow on
PostgreSQL). Each is used by one file only (test_pipeline_e2e.py, test_team.py): `make test` runs
pytest-xdist with `--dist loadfile`, one worker per file, so each is made once."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dvc_project import copy_project, dvc, make_repo
from support import ROOT, free_port, have_postgres
from team_server import PASSWORD, Server, kill_leftovers, start_env, started


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


@pytest.fixture(scope="module")
def team_server() -> Iterator[Server]:
    """`make server`'s script on 127.0.0.1 with an admin password (basic-auth on, logins cached for
    60 s) and two MLflow workers, started once for the tests that use a server without stopping it (test_team.py);
    SIGTERM stops it after them, as a supervisor would."""
    if not have_postgres():
        pytest.skip("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)")
    # not under pytest's private (0700) temp root: as root, PostgreSQL runs as the postgres user
    state = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    state.chmod(0o755)
    env = start_env(
        state,
        free_port(),
        free_port(),
        uuid.uuid4().hex,
        MLFLOW_WORKERS="2",
        MLFLOW_AUTH_CACHE_TTL_SECONDS="60",  # the pipeline test makes hundreds of requests, 0.1 s of scrypt each
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
        MLFLOW_PG_DIR=str(state / "postgres"),
    )
    server = None
    try:
        with started(["bash", str(ROOT / "scripts" / "mlflow-server.sh")], ROOT, env, state / "server.log") as (
            _,
            server,
        ):
            yield server
    finally:
        if server is not None:
            kill_leftovers(server)
        shutil.rmtree(state, ignore_errors=True)
