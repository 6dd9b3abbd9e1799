"""Team scale: the pipeline against `make server` (MLflow on PostgreSQL), who gets into that server
and where its secrets stay, and two processes training one model.

The server tests share the session's server (tests/e2e/conftest.py, `team_server`), all in this file:
under `make test`'s pytest-xdist (`--dist loadfile`) one worker runs a file, so the server starts once.
How a server starts and stops is tests/e2e/test_server_security.py's.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import time
from pathlib import Path

import pytest
from dvc_project import VARIANTS, dvc, make_repo, metrics_files, run_queued_grid
from support import (
    ROOT,
    Lines,
    arg_value,
    clean_env,
    copy_store,
    free_port,
    kill_group,
    stage_command,
    stage_outs,
    write_prepared,
)
from team_server import ADMIN, PASSWORD, Server, call, server_processes

# the server (tests/e2e/conftest.py, `team_server`) runs with MLflow's basic-auth; clients log in
# with MLflow's standard variables
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}


def test_the_pipeline_logs_to_the_shared_server_over_http(team_server: Server, tmp_path: Path, monkeypatch):
    import mlflow

    server = team_server.url
    for key, value in CREDENTIALS.items():  # this process's MLflow clients log in too
        monkeypatch.setenv(key, value)
    repo = tmp_path / "project"
    make_repo(repo, seeds=[1])  # one seed: every request pays the server's password check (scrypt)
    dvc(repo, "repro", MLFLOW_TRACKING_URI=server, **CREDENTIALS)
    assert not (repo / "mlflow.db").exists()  # nothing went to the embedded store
    client = mlflow.MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("deconvolution")
    runs = client.search_runs([experiment.experiment_id])
    training = {r.info.run_name: r for r in runs if r.data.tags.get("summary") != "true"}
    assert set(training) == {f"{v}/seed-1" for v in VARIANTS}
    for name, path in metrics_files(repo, seeds=[1]).items():
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
    before = {r.info.run_id for r in runs}
    new = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id not in before]
    assert sorted((r.data.tags["dvc.experiment"], r.info.run_name, r.info.status) for r in new) == [
        (f"grid-{units}", "baseline/seed-1", "FINISHED") for units in (41, 43)
    ]
    reports = client.get_experiment_by_name("deconvolution-reports")
    summaries = client.search_runs([reports.experiment_id], filter_string="tags.summary = 'true'")
    assert {r.data.tags.get("dvc.experiment") for r in summaries} >= {"grid-41", "grid-43"}
    assert {"grid-41", "grid-43"} <= set(dvc(repo, "exp", "show", "--csv").stdout.replace(",", " ").split())
    assert not (repo / "mlflow.db").exists()


def test_only_logged_in_clients_get_in(team_server: Server, monkeypatch):
    import mlflow

    url, admin = team_server.url, (ADMIN, PASSWORD)
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    assert call(url, "/health")[0] == 200  # what a load balancer probes stays open
    assert call(url, search)[0] == 401
    assert call(url, search, user=(ADMIN, "not-the-password"))[0] == 401
    assert call(url, search, user=admin)[0] == 200
    for _ in range(2):  # a login the server has cached trusts that password and no other
        assert call(url, search, user=(ADMIN, "not-the-password"))[0] == 401
        assert call(url, search, user=admin)[0] == 200
    assert "logins cached 60 s" in team_server.log.read_text()

    # a client logs in with MLflow's standard variables, creates an experiment and logs a run
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("security")
    run_ = client.create_run(experiment_id, run_name="logged-in")
    for step, loss in enumerate([2.3, 1.1, 0.4]):
        client.log_metric(run_.info.run_id, "loss", loss, step=step)
    client.log_param(run_.info.run_id, "variant", "baseline")
    client.set_terminated(run_.info.run_id)
    logged = client.get_run(run_.info.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"variant": "baseline"}
    assert [m.value for m in client.get_metric_history(run_.info.run_id, "loss")] == [2.3, 1.1, 0.4]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    # logged out, the server itself refuses: a 401 (a server that is down or failing answers otherwise)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"failed with error code 401 != 200") as refused:
        client.search_experiments()
    assert refused.value.get_http_status_code() == 401
    assert "You are not authenticated" in refused.value.message

    # a teammate the admin adds logs to the shared experiment (default permission EDIT) but may not delete it
    alice = ("alice", secrets.token_urlsafe(18))
    new_user = "/api/2.0/mlflow/users/create"
    assert call(url, new_user, method="POST", body={"username": alice[0], "password": alice[1]}, user=admin)[0] == 200
    created = call(url, "/api/2.0/mlflow/runs/create", method="POST", body={"experiment_id": experiment_id}, user=alice)
    assert created[0] == 200, created
    delete = {"experiment_id": experiment_id}
    assert call(url, "/api/2.0/mlflow/experiments/delete", method="POST", body=delete, user=alice)[0] == 403
    # no one signs up without logging in, and only an admin adds users
    eve = {"username": "eve", "password": secrets.token_urlsafe(18)}
    assert call(url, new_user, method="POST", body=eve)[0] == 401
    assert call(url, new_user, method="POST", body=eve, user=alice)[0] == 403


def test_postgresql_wants_its_password_and_secrets_stay_private(team_server: Server):
    import psycopg2

    server = team_server
    connect = dict(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow", connect_timeout=10)
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(**connect, passfile="/dev/null").close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**connect, password="not-the-password").close()
    with psycopg2.connect(**connect, password=server.pg_password()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        assert {row[0] for row in cursor.fetchall()} == {"scram-sha-256"}  # no trust, for any connection
        cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'experiments'")
        assert cursor.fetchone()[0] == 1  # MLflow's tables, in the database it reaches through PGPASSFILE
    conn.close()

    auth = server.state / "auth"
    for path, mode in [
        (server.state / "pgpass", 0o600),
        (auth, 0o700),
        (auth / "basic_auth.db", 0o600),
        (auth / "basic_auth.ini", 0o600),
        (auth / "flask-secret-key", 0o600),
        (server.pgdata, 0o700),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert PASSWORD not in (auth / "basic_auth.ini").read_text()

    # no secret on a command line, in the server's output or in its auth config
    secret_values = [PASSWORD, server.pg_password(), (auth / "flask-secret-key").read_text().strip()]
    processes = server_processes(server)
    assert any("mlflow server" in cmd for _, cmd in processes.values()), processes
    for _, cmd in processes.values():
        assert not any(value in cmd for value in secret_values), cmd
    output = server.log.read_text()
    assert not any(value in output for value in secret_values)


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
