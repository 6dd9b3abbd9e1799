"""Team scale: the pipeline against `make server` (MLflow on PostgreSQL), and a DVC remote round trip."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_pipeline_e2e import SEEDS, VARIANTS, changed_stages, dvc, make_repo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_postgres() -> bool:
    return any(Path(p).joinpath("initdb").exists() for p in Path("/usr/lib/postgresql").glob("*/bin"))


@pytest.fixture(scope="module")
def server():
    if not have_postgres():
        pytest.skip("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)")
    port = free_port()
    # not under pytest's private (0700) temp root: PostgreSQL runs as the postgres user when we are root
    state = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    state.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_PORT=str(port),
        MLFLOW_PG_PORT=str(free_port()),
        MLFLOW_SERVER_DIR=str(state),
        MLFLOW_BIN=str(Path(sys.executable).parent / "mlflow"),
        MLFLOW_WORKERS="2",
    )
    log = open(state / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "mlflow-server.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
        assert proc.poll() is None, (state / "server.log").read_text()
    else:
        pytest.fail("the MLflow server did not start:\n" + (state / "server.log").read_text())
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)
    log.close()
    shutil.rmtree(state, ignore_errors=True)


def test_the_pipeline_logs_to_the_shared_server_over_http(server: str, tmp_path: Path):
    import mlflow

    repo = tmp_path / "project"
    make_repo(repo)
    dvc(repo, "repro", MLFLOW_TRACKING_URI=server)
    assert not (repo / "mlflow.db").exists()  # nothing went to the embedded store
    client = mlflow.MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("deconvolution")
    runs = client.search_runs([experiment.experiment_id])
    training = {r.info.run_name: r for r in runs if r.data.tags.get("summary") != "true"}
    assert set(training) == {f"{v}/seed-{s}" for v in VARIANTS for s in SEEDS}
    for run in training.values():
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 41
    # the model comes back through the server's proxied artifact store
    mlflow.set_tracking_uri(server)
    run = training["transposed/seed-1"]
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    model = mlflow.keras.load_model(f"models:/{logged.model_id}")
    import numpy as np

    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


def test_dvc_remote_push_then_pull_restores_everything(tmp_path: Path):
    repo = tmp_path / "project"
    make_repo(repo)
    dvc(repo, "repro", "train@transposed-1")  # fetch, prepare and one model: data and a model to share
    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    dvc(repo, "push")
    model = repo / "models" / "transposed" / "seed-1" / "model.keras"
    before = model.read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in ("data", "models"):
        shutil.rmtree(repo / out)
    dvc(repo, "pull", "--with-deps", "train@transposed-1")
    assert model.read_bytes() == before
    assert {"fetch", "prepare", "train@transposed-1"}.isdisjoint(changed_stages(repo))
