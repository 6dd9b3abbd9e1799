"""The train stage under faults: Ctrl-C/SIGTERM (also between seeds), a NaN loss, a tracking server
that is down, secrets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support import (
    ROOT,
    Lines,
    arg_value,
    clean_env,
    copy_store,
    free_port,
    kill_group,
    run_stage_here,
    stage_args,
    stage_command,
    stage_outs,
    write_prepared,
)

from pipeline import paths
from pipeline.runtime.stage import INTERRUPTED

ITEM = {"variant": "baseline"}


@pytest.fixture
def project(tmp_path: Path, migrated_store: Path) -> Path:
    return make_project(tmp_path, migrated_store)


def make_project(directory: Path, store: Path) -> Path:
    """A stage's working directory: params.yaml with the baseline only, 60 steps, a small random
    prepared dataset where dvc.yaml's train stage reads it, and the project's MLflow store, empty: a
    copy of `store` (conftest's migrated_store), so that no stage pays MLflow's migrations."""
    directory.mkdir(exist_ok=True)
    copy_store(store, directory / "mlflow.db")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["variants"] = {"baseline": params["variants"]["baseline"]}
    params["train"].update(steps=60, validation_every=20, seeds=[1])
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    write_prepared(directory / arg_value(train_args(directory), "--data"), dataset=params["data"]["dataset"])
    return directory


def stage_env(**extra: str) -> dict[str, str]:
    """The environment for a stage run by hand from a project folder: the project's code importable."""
    return clean_env(PYTHONPATH=str(ROOT), **extra)


def project_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def train_args(project: Path) -> list[str]:
    """The train@baseline stage's arguments, as dvc.yaml gives them."""
    return stage_args("train", project_params(project), **ITEM)


def train_cmd(project: Path) -> list[str]:
    return stage_command("train", project_params(project), **ITEM)


def model_dir(project: Path, seed: int = 1) -> Path:
    """Where train@baseline writes a seed's model (under its first out in dvc.yaml)."""
    models, *_ = stage_outs("train", project_params(project), **ITEM)
    assert paths.model_dir("baseline", seed).parent == Path(models)
    return project / paths.model_dir("baseline", seed)


def no_outputs(project: Path) -> bool:
    models = model_dir(project).parent.parent
    return not models.exists() or not any(models.rglob("*"))


def windowed(values: list[float], window: int = 20) -> list[float]:
    """Each step's mean over the last `window` steps (fewer at the start)."""
    return [
        sum(values[max(0, i + 1 - window) : i + 1]) / len(values[max(0, i + 1 - window) : i + 1])
        for i in range(len(values))
    ]


def runs(project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("deconvolution")
    return mlflow.search_runs([experiment.experiment_id], output_format="list")


def _cores() -> int:
    """TensorFlow's default thread count here: the stages called in-process meet its pools as set."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def edit_params(project: Path, **train: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def train_here(project: Path, monkeypatch, capsys, **env: str) -> subprocess.CompletedProcess:
    """`python -m pipeline train` of train@baseline in the project folder, with `env` added to the
    environment, run in this process (support.run_stage_here): its exit status, stdout and stderr.
    For the faults that need no signal: no interpreter and TensorFlow to start for each."""
    edit_params(project, threads=_cores())  # in this process TensorFlow may already run, one thread per core
    monkeypatch.chdir(project)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return run_stage_here("train", train_args(project), capsys)


def test_sigterm_in_training_ends_the_run_killed_and_writes_no_outputs(project: Path):
    """SIGTERM (what a supervisor or `kill` sends) while the first seed trains. Ctrl-C (SIGINT) in
    training: the next test, in its second seed; both signals in any stage: tests/stages/test_runtime.py."""
    edit_params(project, steps=1_000_000, validation_every=100)
    proc = subprocess.Popen(
        train_cmd(project), cwd=project, env=stage_env(), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stderr = Lines(proc.stderr)
        stderr.wait_for("step     0/", timeout=300)  # training is under way
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest = stderr.rest(timeout=120)
        assert proc.wait(timeout=60) == 130
    finally:
        kill_group(proc)
        proc.stderr.close()
    assert INTERRUPTED in rest
    assert "Traceback" not in rest
    assert no_outputs(project)
    (run,) = runs(project)
    assert run.info.status == "KILLED"


def test_ctrl_c_in_the_second_seed_keeps_the_first_seeds_run_and_files_whole(project: Path):
    """Seed 1 finished: its MLflow run FINISHED, its files whole. Seed 2 interrupted: its run KILLED, no
    folder of it, no partial folder. DVC records none of the stage's outputs (tests/e2e: dvc status)."""
    edit_params(project, steps=5_000, validation_every=1_000, seeds=[1, 2])
    proc = subprocess.Popen(
        train_cmd(project), cwd=project, env=stage_env(), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stderr = Lines(proc.stderr)
        stderr.wait_for("baseline/seed-2 (2/2): step     0/", timeout=600)
        proc.send_signal(signal.SIGINT)
        rest = stderr.rest(timeout=120)
        assert proc.wait(timeout=60) == 130
    finally:
        kill_group(proc)
        proc.stderr.close()
    assert INTERRUPTED in rest
    assert "Traceback" not in rest
    statuses = {r.info.run_name: r.info.status for r in runs(project)}
    assert statuses == {"baseline/seed-1": "FINISHED", "baseline/seed-2": "KILLED"}
    first = model_dir(project, 1)
    assert json.loads((first / "run.json").read_text())["steps"] == 5_000
    assert (first / "model.keras").stat().st_size > 0
    assert json.loads((project / paths.metrics_file("baseline", 1)).read_text())["test_examples"] == 50
    assert not model_dir(project, 2).exists()
    assert not (project / paths.metrics_file("baseline", 2)).exists()
    assert not list((project / "models").rglob("*.partial-*"))


def test_a_nan_loss_is_recorded_as_a_diverged_failed_run_by_default(project: Path, monkeypatch, capsys):
    edit_params(project, learning_rate=1e12)
    result = train_here(project, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr
    assert "warning: baseline/seed-1: the training loss became NaN/inf at step" in result.stderr
    saved = json.loads((model_dir(project) / "run.json").read_text())
    assert saved["diverged_at_step"] is not None
    assert f"at step {saved['diverged_at_step']}" in result.stderr
    (run,) = runs(project)
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged_at_step"] == str(saved["diverged_at_step"])


def test_a_nan_loss_fails_the_stage_when_asked(project: Path, monkeypatch, capsys):
    edit_params(project, learning_rate=1e12, on_divergence="fail")
    result = train_here(project, monkeypatch, capsys)
    assert result.returncode == 2
    assert "error: baseline/seed-1: the training loss became NaN/inf at step" in result.stderr
    assert no_outputs(project)
    (run,) = runs(project)
    assert run.info.status == "FAILED"


def test_a_tracking_server_that_is_down_is_reported_before_training(project: Path, monkeypatch, capsys):
    port = free_port()  # nobody listens on it
    started = time.monotonic()
    result = train_here(project, monkeypatch, capsys, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in result.stderr
    assert "step " not in result.stderr  # no training happened
    assert time.monotonic() - started < 60
    assert not model_dir(project).parent.parent.exists()


def test_credentials_in_the_environment_are_never_logged(project: Path, monkeypatch, capsys):
    secret = "s3cr3t-do-not-log-4242"
    result = train_here(project, monkeypatch, capsys, MLFLOW_TRACKING_PASSWORD=secret, MLFLOW_TRACKING_USERNAME="alice")
    assert result.returncode == 0, result.stderr
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    logged = [*run.data.params.items(), *run.data.tags.items()]
    assert not [kv for kv in logged if secret in kv[0] or secret in kv[1]]
    assert secret.encode() not in (project / "mlflow.db").read_bytes()
    assert (model_dir(project) / "model.keras").exists()


def test_an_mlflow_failure_during_training_keeps_the_model_and_its_metrics(project: Path, monkeypatch):
    edit_params(project, threads=_cores())  # in this process TensorFlow may already run, one thread per core
    from pipeline import run_logging
    from pipeline.errors import TrackingError
    from pipeline.stages import train as train_stage

    monkeypatch.chdir(project)
    for key in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(key, raising=False)

    def broken(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(run_logging, "log_steps", broken)
    saved = model_dir(project)
    message = f"saved in {saved.relative_to(project)}, but logging to MLflow failed"
    with pytest.raises(TrackingError, match=re.escape(message)):
        train_stage.main(train_stage.parse_args(train_args(project)))
    assert (saved / "model.keras").stat().st_size > 0
    assert len((saved / "history.csv").read_text().splitlines()) == 61  # header + 60 steps
    (run,) = runs(project)
    assert run.info.status == "FAILED"


def test_a_flaky_tracking_store_loses_no_steps(project: Path, monkeypatch):
    edit_params(project, threads=_cores())  # in this process TensorFlow may already run, one thread per core
    import mlflow

    from pipeline import run_logging
    from pipeline.stages import train as train_stage

    monkeypatch.chdir(project)
    for key in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(key, raising=False)
    real, calls = run_logging.log_steps, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("timeout")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_logging, "log_steps", flaky)
    train_stage.main(train_stage.parse_args(train_args(project)))
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    # every 20 steps and at each validation, the mean of the last 20 steps of history.csv
    history = sorted(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 19, 20, 39, 40, 59]
    per_step = list(pd.read_csv(model_dir(project) / "history.csv")["loss"])
    assert len(per_step) == 60
    means = windowed(per_step)
    for metric in history:
        assert metric.value == pytest.approx(means[metric.step], rel=1e-9)
