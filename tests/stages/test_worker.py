"""The warm stage worker (pipeline.runtime.worker) on the real train stage: same results, fresh code,
signals and fallback. Its failure modes, on stand-in stages: test_runtime.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, Lines, clean_env, kill_group, run
from test_stage_faults import edit_params, make_project, model_dir, no_outputs, runs, stage_env, train_args

from pipeline.runtime.worker import stop_workers

STAGE_TIMEOUT = 300  # seconds for a 60-step training, worker start-up included, on a busy machine


def launcher_cmd(project: Path, *extra: str) -> list[str]:
    """The train stage as dvc.yaml starts it: `python -m pipeline train ...`."""
    return [sys.executable, "-m", "pipeline", "train", *train_args(project), *extra]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def workers(tmp_path: Path):
    """A worker directory of the test's own, so its log shows which stages the worker ran."""
    directory = tmp_path / "workers"
    directory.mkdir(mode=0o700)
    yield directory
    stop_workers(directory)


def worker_log(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.glob("*.log"))


def stage_children(directory: Path) -> set[str]:
    """Pids of the stage processes the worker forked, from its log ("... child <pid>: ...")."""
    return {line.split()[3].rstrip(":") for line in worker_log(directory).splitlines() if " child " in line}


@pytest.fixture
def long_training(project: Path, workers: Path):
    """Start the train stage through the launcher, with a million steps; returns once step 0 is
    logged. Whatever a failed test leaves running is killed (the stage stops with its launcher)."""
    started: list[subprocess.Popen] = []

    def start() -> tuple[subprocess.Popen, Lines]:
        edit_params(project, steps=1_000_000, validation_every=100)
        env = stage_env(PIPELINE_WORKER_DIR=str(workers))
        proc = subprocess.Popen(
            launcher_cmd(project), cwd=project, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(proc)
        stderr = Lines(proc.stderr)
        stderr.wait_for("step     0/", timeout=STAGE_TIMEOUT)
        return proc, stderr

    yield start
    for proc in started:
        kill_group(proc)
        proc.stderr.close()


def test_a_stage_run_by_the_worker_matches_one_run_in_process(project: Path, tmp_path: Path, workers: Path):
    in_process = tmp_path / "in-process"
    shutil.copytree(project, in_process)
    # PIPELINE_WORKER=0: the launcher runs the stage itself, and starts no worker in the directory
    # it would use otherwise
    env = stage_env(PIPELINE_WORKER="0", PIPELINE_WORKER_DIR=str(workers))
    alone = run(launcher_cmd(in_process), cwd=in_process, env=env, timeout=STAGE_TIMEOUT)
    assert alone.returncode == 0, alone.stderr
    assert "note:" not in alone.stderr
    assert not list(workers.iterdir())

    env = stage_env(PIPELINE_WORKER_DIR=str(workers))
    first = run(launcher_cmd(project), cwd=project, env=env, timeout=STAGE_TIMEOUT)
    assert first.returncode == 0, first.stderr
    assert "note:" not in first.stderr
    (worker,) = (int(p.read_text()) for p in workers.glob("*.pid"))
    assert os.listdir(f"/proc/{worker}/task") == [str(worker)]  # TensorFlow, MLflow, ... imported: one thread
    assert "baseline/seed-1: trained 60 steps" in first.stderr  # the child's output reaches our stderr
    log = worker_log(workers)
    assert f"pipeline.stages.train in {project}" in log
    for name in ("history.csv", "spec.json"):
        assert (model_dir(project) / name).read_text() == (model_dir(in_process) / name).read_text()
    # the stage's own peak memory, without the worker's preloaded libraries: close to the in-process
    # one, which also counts the modules the stage imports lazily (MLflow's store, about 40 MB here)
    peaks = [json.loads((model_dir(p) / "run.json").read_text())["peak_memory_mb"] for p in (project, in_process)]
    assert abs(peaks[0] - peaks[1]) < 0.25 * peaks[1] + 20, peaks
    (tracked,) = runs(project)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.metrics["train_seconds"] > 0

    # a second stage is served by the same worker process (one "ready" line, two children)
    shutil.rmtree(model_dir(project))
    second = run(launcher_cmd(project), cwd=project, env=env, timeout=STAGE_TIMEOUT)
    assert second.returncode == 0, second.stderr
    log = worker_log(workers)
    assert log.count(" ready on ") == 1
    assert log.count(f"pipeline.stages.train in {project}") == 2


def test_code_edits_reach_the_next_stage_run_and_errors_keep_their_exit_status(tmp_path: Path, workers: Path):
    """The worker preloads libraries only: this project's modules are imported afresh by each stage."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = clean_env(PYTHONPATH=str(source), PIPELINE_WORKER_DIR=str(workers))
    command = launcher_cmd(tmp_path, "--variant", "nope")

    before = run(command, cwd=tmp_path, env=env, timeout=STAGE_TIMEOUT)
    assert before.returncode == 2
    assert "error: variant 'nope' is not in params.yaml" in before.stderr
    assert "Traceback" not in before.stderr

    config = source / "pipeline" / "config.py"
    edited = config.read_text().replace("is not in {source}", "is missing from {source}")
    assert edited != config.read_text()
    config.write_text(edited)
    after = run(command, cwd=tmp_path, env=env, timeout=STAGE_TIMEOUT)
    assert after.returncode == 2
    assert "error: variant 'nope' is missing from params.yaml" in after.stderr
    log = worker_log(workers)
    assert log.count(" ready on ") == 1
    assert log.count("pipeline.stages.train in") == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_reach_the_stage_in_the_worker(project: Path, workers: Path, long_training, signum: int):
    proc, stderr = long_training()
    proc.send_signal(signum)
    rest = stderr.rest(timeout=120)
    assert proc.wait(timeout=60) == 130
    assert "interrupted: no stage outputs were written" in rest
    assert "Traceback" not in rest
    assert "pipeline.stages.train exit 130" in worker_log(workers)
    (tracked,) = runs(project)
    assert tracked.info.status == "KILLED"
    assert no_outputs(project)


def test_killing_the_client_stops_the_stage_in_the_worker(project: Path, workers: Path, long_training):
    proc, _ = long_training()
    (child,) = stage_children(workers)
    proc.kill()  # kill -9: the client cannot forward anything
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists(), "the stage kept running without its client"
    (tracked,) = runs(project)
    assert tracked.info.status == "KILLED"
    assert no_outputs(project)


def test_a_stage_process_killed_from_outside_fails_the_stage_with_a_message(
    project: Path, workers: Path, long_training
):
    proc, stderr = long_training()
    (child,) = stage_children(workers)
    os.kill(int(child), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    rest = stderr.rest(timeout=120)
    assert proc.wait(timeout=60) == 1
    assert f"error: the stage worker process {child} died before the stage finished" in rest
    assert not model_dir(project).exists()


def test_without_a_usable_worker_directory_the_stage_runs_in_process(project: Path, tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others could plant a socket here: not used
    env = stage_env(PIPELINE_WORKER_DIR=str(shared))
    result = run(launcher_cmd(project), cwd=project, env=env, timeout=STAGE_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert f"note: no stage worker ({shared} is not a private directory of this user);" in result.stderr
    assert (model_dir(project) / "model.keras").exists()
    assert not list(shared.iterdir())
    assert os.stat(shared).st_mode & 0o777 == 0o777


@pytest.mark.parametrize(
    ("platform", "setting", "expected"),
    [("linux", None, True), ("linux", "0", False), ("darwin", None, False), ("darwin", "1", True)],
)
def test_the_worker_is_on_by_default_on_linux_only(monkeypatch, platform: str, setting: str | None, expected: bool):
    from pipeline.runtime import worker

    monkeypatch.setattr(sys, "platform", platform)
    if setting is None:
        monkeypatch.delenv("PIPELINE_WORKER", raising=False)
    else:
        monkeypatch.setenv("PIPELINE_WORKER", setting)
    assert worker.enabled() is expected
