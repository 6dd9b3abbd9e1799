"""Team scale: the pipeline against `make server` (MLflow on PostgreSQL), and a DVC remote round trip."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dvc_project import SEEDS, VARIANTS, changed_stages, dvc, make_repo, metrics_files, run_queued_grid
from support import (
    BIN,
    ROOT,
    Lines,
    arg_value,
    clean_env,
    copy_store,
    free_port,
    have_postgres,
    kill_group,
    stage_command,
    stage_outs,
    wait_for_server,
    write_prepared,
)

pytestmark = pytest.mark.slow

# the server runs with MLflow's basic-auth; clients log in with MLflow's standard variables
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18)}


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
        MLFLOW_BIN=str(BIN / "mlflow"),
        MLFLOW_WORKERS="2",
        MLFLOW_AUTH_ADMIN_PASSWORD=CREDENTIALS["MLFLOW_TRACKING_PASSWORD"],
        MLFLOW_PG_DIR=str(state / "postgres"),  # reachable by the postgres user: state is 0755
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
    try:
        wait_for_server(url, proc, state / "server.log")
        with pytest.raises(urllib.error.HTTPError, match="401"):  # no one gets in without logging in
            urllib.request.urlopen(url + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        with pytest.MonkeyPatch.context() as patch:  # this process's MLflow clients log in too
            for key, value in CREDENTIALS.items():
                patch.setenv(key, value)
            yield url
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, 15)  # the script stops PostgreSQL and MLflow on SIGTERM
        try:
            proc.wait(timeout=60)
        finally:
            kill_group(proc)  # SIGKILL only when SIGTERM did not stop it in time
            log.close()
            shutil.rmtree(state, ignore_errors=True)


def test_the_pipeline_logs_to_the_shared_server_over_http(server: str, tmp_path: Path):
    import mlflow

    repo = tmp_path / "project"
    make_repo(repo)
    dvc(repo, "repro", MLFLOW_TRACKING_URI=server, **CREDENTIALS)
    assert not (repo / "mlflow.db").exists()  # nothing went to the embedded store
    client = mlflow.MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("deconvolution")
    runs = client.search_runs([experiment.experiment_id])
    training = {r.info.run_name: r for r in runs if r.data.tags.get("summary") != "true"}
    assert set(training) == {f"{v}/seed-{s}" for v in VARIANTS for s in SEEDS}
    for name, path in metrics_files(repo).items():
        run, metrics = training[name], json.loads(path.read_text())
        assert run.info.status == "FINISHED"
        assert metrics["run_id"] == run.info.run_id
        assert metrics["test_accuracy"] > 0.9  # every run learns the easy data; chance is 0.1
        # the server holds exactly the numbers of the metrics files
        assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
        assert run.data.metrics["test_loss"] == metrics["test_loss"]
        # the training loss as 20-step means: every 20 steps and at each validation of 41 steps
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 19, 20, 39, 40]
    # the model comes back through the server's proxied artifact store
    mlflow.set_tracking_uri(server)
    run = training["transposed/seed-1"]
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert logged.name == "transposed-seed1"
    assert {d.dataset.name for d in client.get_run(run.info.run_id).inputs.dataset_inputs} == {
        "tiny-train",
        "tiny-validation",
        "tiny-test",
    }
    model = mlflow.keras.load_model(f"models:/{logged.model_id}")
    import numpy as np

    assert model(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)  # plain images, as served
    # the registry works through the server too
    champion = mlflow.keras.load_model("models:/deconvolution-baseline@champion")
    assert champion(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)

    # a grid of queued experiments run by two workers lands on the shared server too
    status = run_queued_grid(repo, "grid", MLFLOW_TRACKING_URI=server, **CREDENTIALS)
    assert status.count("Success") == 2, status
    reports = client.get_experiment_by_name("deconvolution-reports")
    summaries = client.search_runs([reports.experiment_id], filter_string="tags.summary = 'true'")
    assert {r.data.tags.get("dvc.experiment") for r in summaries} >= {"grid-41", "grid-43"}
    assert {"grid-41", "grid-43"} <= set(dvc(repo, "exp", "show", "--csv").stdout.replace(",", " ").split())
    assert not (repo / "mlflow.db").exists()


def test_dvc_remote_push_then_pull_restores_everything(project_copy: Path, tmp_path: Path):
    repo = project_copy  # a built project: data and models to share
    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    dvc(repo, "push")
    model = repo / "models" / "transposed" / "seed-1" / "model.keras"
    before = model.read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in ("data", "models"):
        shutil.rmtree(repo / out)
    dvc(repo, "pull", "--with-deps", "train@transposed")
    assert model.read_bytes() == before
    assert {"fetch", "prepare", "train@transposed"}.isdisjoint(changed_stages(repo))


def test_two_multi_worker_processes_train_the_same_weights_and_only_the_chief_logs(
    tmp_path: Path, migrated_store: Path
):
    import keras
    import mlflow
    import numpy as np
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["variants"] = {"baseline": params["variants"]["baseline"]}
    params["train"].update(steps=30, validation_every=10, seeds=[1], distribution="multi_worker")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = stage_command("train", params, variant="baseline")  # as dvc.yaml runs it
    write_prepared(tmp_path / arg_value(command, "--data"), dataset=params["data"]["dataset"])
    copy_store(migrated_store, tmp_path / "mlflow.db")  # the chief's store, empty (worker 1 makes a scratch one)
    roots = {flag: command.index(flag) + 1 for flag in ("--models", "--metrics", "--plots")}
    models_out, *_ = stage_outs("train", params, variant="baseline")
    model_dir = Path(models_out).relative_to(command[roots["--models"]]) / "seed-1"  # under each worker's --models
    ports = [free_port(), free_port()]
    procs = []
    try:
        for rank in (0, 1):
            cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
            task = {"cluster": cluster, "task": {"type": "worker", "index": rank}}
            env = clean_env(PYTHONPATH=str(ROOT), TF_CONFIG=json.dumps(task))
            for flag, index in roots.items():  # each worker writes its own files
                command[index] = f"{flag.removeprefix('--')}-{rank}"
            procs.append(
                subprocess.Popen(
                    list(command), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
                )
            )
        stderrs = [Lines(p.stderr) for p in procs]  # both drained at once: the two train in lockstep
        deadline = time.monotonic() + 300
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        errors = [lines.rest(timeout=30) for lines in stderrs]
    finally:
        for proc in procs:
            kill_group(proc)  # a no-op for one that exited
    assert [p.returncode for p in procs] == [0, 0], errors
    weights = [
        keras.saving.load_model(tmp_path / f"models-{rank}" / model_dir / "model.keras").get_weights()
        for rank in (0, 1)
    ]
    for chief_array, worker_array in zip(*weights, strict=True):
        np.testing.assert_array_equal(chief_array, worker_array)
    histories = [json.loads((tmp_path / f"models-{r}" / model_dir / "run.json").read_text()) for r in (0, 1)]
    assert histories[0]["steps"] == histories[1]["steps"] == 30
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("deconvolution").experiment_id], output_format="list")
    assert len(runs) == 1  # the chief's; worker 1 logged to a scratch store
    assert runs[0].data.params["train.distribution"] == "multi_worker"
    assert runs[0].info.status == "FINISHED"
