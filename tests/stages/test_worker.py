"""The warm stage worker (pipeline.worker): same results, fresh code, signals and fallback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_stage_faults import ROOT, edit_params, make_project, runs, stage_env, train_cmd

from pipeline.worker import stop_workers


def launcher_cmd(*extra: str) -> list[str]:
    """The train stage as dvc.yaml starts it: `python -m pipeline train ...`."""
    command = train_cmd(*extra)
    return [*command[:2], "pipeline", "train", *command[3:]]


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


def start_long_training(project: Path, workers: Path) -> subprocess.Popen:
    """The train stage through the launcher, with a million steps; returns once step 0 is logged."""
    edit_params(project, steps=1_000_000, validation_every=100)
    env = stage_env(project, PIPELINE_WORKER_DIR=str(workers))
    proc = subprocess.Popen(launcher_cmd(), cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "step     0/" in line:
            break
    return proc


def test_a_stage_run_by_the_worker_matches_one_run_in_process(project: Path, tmp_path: Path, workers: Path):
    in_process = tmp_path / "in-process"
    shutil.copytree(project, in_process)
    # PIPELINE_WORKER=0: the launcher runs the stage itself
    subprocess.run(launcher_cmd(), cwd=in_process, env=stage_env(in_process, PIPELINE_WORKER="0"), check=True)
    assert not list(workers.iterdir())

    env = stage_env(project, PIPELINE_WORKER_DIR=str(workers))
    first = subprocess.run(launcher_cmd(), cwd=project, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "baseline/seed-1: trained 60 steps" in first.stderr  # the child's output reaches our stderr
    log = worker_log(workers)
    assert f"pipeline.stages.train in {project}" in log
    for name in ("history.csv", "spec.json"):
        assert (project / "models/baseline/seed-1" / name).read_text() == (
            in_process / "models/baseline/seed-1" / name
        ).read_text()
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train_seconds"] > 0

    # a second stage is served by the same worker process (one "ready" line, two children)
    shutil.rmtree(project / "models")
    second = subprocess.run(launcher_cmd(), cwd=project, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    log = worker_log(workers)
    assert log.count(" ready on ") == 1
    assert log.count(f"pipeline.stages.train in {project}") == 2


def test_code_edits_reach_the_next_stage_run_and_errors_keep_their_exit_status(tmp_path: Path, workers: Path):
    """The worker preloads libraries only: this project's modules are imported afresh by each stage."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = stage_env(tmp_path, PYTHONPATH=str(source), PIPELINE_WORKER_DIR=str(workers))
    command = launcher_cmd("--variant", "nope")

    before = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert before.returncode == 2
    assert "error: variant 'nope' is not in params.yaml" in before.stderr
    assert "Traceback" not in before.stderr

    stage = source / "pipeline" / "stages" / "train.py"
    stage.write_text(stage.read_text().replace("is not in {args.params}", "is missing from {args.params}"))
    after = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert after.returncode == 2
    assert "error: variant 'nope' is missing from params.yaml" in after.stderr
    log = worker_log(workers)
    assert log.count(" ready on ") == 1
    assert log.count("pipeline.stages.train in") == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_reach_the_stage_in_the_worker(project: Path, workers: Path, signum: int):
    proc = start_long_training(project, workers)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "interrupted: no stage outputs were written" in rest
    assert "Traceback" not in rest
    assert "pipeline.stages.train exit 130" in worker_log(workers)
    (run,) = runs(project)
    assert run.info.status == "KILLED"
    assert not (project / "models").exists() or not any((project / "models").rglob("*"))


def test_killing_the_client_stops_the_stage_in_the_worker(project: Path, workers: Path):
    proc = start_long_training(project, workers)
    (child,) = stage_children(workers)
    proc.kill()  # kill -9: the client cannot forward anything
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists(), "the stage kept running without its client"
    (run,) = runs(project)
    assert run.info.status == "KILLED"
    assert not (project / "models").exists() or not any((project / "models").rglob("*"))


def test_a_stage_process_killed_from_outside_fails_the_stage_with_a_message(project: Path, workers: Path):
    proc = start_long_training(project, workers)
    (child,) = stage_children(workers)
    os.kill(int(child), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert f"error: the stage worker process {child} died before the stage finished" in rest
    assert not (project / "models" / "baseline" / "seed-1").exists()


def test_without_a_usable_worker_directory_the_stage_runs_in_process(project: Path, tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others could plant a socket here: not used
    env = stage_env(project, PIPELINE_WORKER_DIR=str(shared))
    result = subprocess.run(launcher_cmd(), cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (project / "models/baseline/seed-1/model.keras").exists()
    assert not list(shared.iterdir())
    assert os.stat(shared).st_mode & 0o777 == 0o777


def test_the_launcher_names_its_stages_on_a_wrong_one(tmp_path: Path):
    command = [*launcher_cmd()[:2], "pipeline", "trian"]
    result = subprocess.run(command, cwd=tmp_path, env=stage_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: python -m pipeline {fetch,prepare,train,evaluate,compare}" in result.stderr


@pytest.mark.parametrize(
    ("platform", "setting", "expected"),
    [("linux", None, True), ("linux", "0", False), ("darwin", None, False), ("darwin", "1", True)],
)
def test_the_worker_is_on_by_default_on_linux_only(monkeypatch, platform: str, setting: str | None, expected: bool):
    from pipeline import worker

    monkeypatch.setattr(sys, "platform", platform)
    if setting is None:
        monkeypatch.delenv("PIPELINE_WORKER", raising=False)
    else:
        monkeypatch.setenv("PIPELINE_WORKER", setting)
    assert worker.enabled() is expected
