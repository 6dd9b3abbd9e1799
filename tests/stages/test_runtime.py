"""pipeline.runtime.stage and `python -m pipeline`: how every stage process starts and ends (a user
error, Ctrl-C and SIGTERM give one line and an exit status, never a traceback) and the peak memory a
stage records. Stand-in stages are modules written into the test's folder and run as DVC runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT, Lines, clean_env, kill_group, run

from pipeline.runtime.stage import INTERRUPTED

TIMEOUT = 60  # seconds: for every process and every read; none should come near it


def stage(tmp_path: Path, source: str) -> list[str]:
    """A stand-in stage module `fake_stage` in tmp_path; the command that runs it."""
    (tmp_path / "fake_stage.py").write_text(textwrap.dedent(source))
    return [sys.executable, "-m", "fake_stage"]


def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")


def test_a_user_error_is_one_line_and_exit_2(tmp_path: Path):
    command = stage(
        tmp_path,
        """
        from pipeline.errors import ConfigError
        from pipeline.runtime.stage import run_stage

        def main(argv):
            raise ConfigError("params.yaml: train.steps must be positive")

        run_stage(main, lambda argv: argv, tensorflow=False)
        """,
    )
    result = run(command, cwd=tmp_path, env=env(tmp_path), timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: train.steps must be positive"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_end_a_stage_with_one_line_and_exit_130(tmp_path: Path, signum: int):
    command = stage(
        tmp_path,
        """
        import time
        from pipeline.runtime.stage import run_stage

        def main(argv):
            print("ready", flush=True)
            time.sleep(120)

        run_stage(main, lambda argv: argv, tensorflow=False)
        """,
    )
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        Lines(proc.stdout).wait_for("ready", timeout=TIMEOUT)
        proc.send_signal(signum)
        assert proc.wait(timeout=TIMEOUT) == 130
        stderr = proc.stderr.read()
    finally:
        kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
    assert stderr.strip() == INTERRUPTED
    assert "Traceback" not in stderr


def test_the_stage_peak_memory_counts_what_the_stage_allocated(tmp_path: Path):
    """pandas is imported before the stage's main: the process's own peak (ru_maxrss) counts it,
    stage_peak_memory_mb counts only the 160 MiB the stage touched."""
    command = stage(
        tmp_path,
        """
        import numpy as np
        import pandas  # noqa: F401
        from pipeline.runtime.stage import run_stage, stage_peak_memory_mb

        def main(argv):
            block = np.ones(160 * 2**20 // 8)  # 160 MiB, every page touched
            del block
            print("peak", stage_peak_memory_mb())

        run_stage(main, lambda argv: argv, tensorflow=False)
        """,
    )
    result = run(command, cwd=tmp_path, env=env(tmp_path), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert 155 < float(result.stdout.split()[-1]) < 185


def test_the_launcher_names_its_stages_on_a_wrong_one(tmp_path: Path):
    command = [sys.executable, "-m", "pipeline", "trian"]
    result = run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip() == "usage: python -m pipeline {fetch,prepare,train,compare,predict,grid} [arguments]"


def test_the_launcher_runs_the_stage_module_with_its_arguments(tmp_path: Path):
    """`python -m pipeline prepare --help` is `python -m pipeline.stages.prepare --help`."""
    launched = run([sys.executable, "-m", "pipeline", "prepare", "--help"], cwd=tmp_path, env=env(tmp_path))
    direct = run([sys.executable, "-m", "pipeline.stages.prepare", "--help"], cwd=tmp_path, env=env(tmp_path))
    assert launched.returncode == direct.returncode == 0
    assert launched.stdout.replace("pipeline.stages.prepare", "X") == direct.stdout.replace(
        "pipeline.stages.prepare", "X"
    )
    assert "--raw" in launched.stdout


@pytest.mark.parametrize("name", ["train", "compare", "predict"])
def test_a_stage_that_uses_tensorflow_answers_help_before_importing_it(tmp_path: Path, name: str):
    """`python -m pipeline <stage> --help` with a `tensorflow` package that fails on import first on
    PYTHONPATH: the help comes all the same (run_stage parses the arguments before it imports
    TensorFlow), at once rather than after seconds of import. (That TensorFlow's start-up lines reach
    no user: tests/stages/test_predict.py, the command as a user types it.)"""
    poisoned = tmp_path / "poisoned" / "tensorflow"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    result = run(
        [sys.executable, "-m", "pipeline", name, "--help"],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=f"{poisoned.parent}{os.pathsep}{ROOT}"),
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m pipeline {name} ")
    assert result.stderr == ""


def test_a_stage_leaves_its_objects_out_of_the_exit_collection_and_its_atexit_handlers_run(tmp_path: Path):
    # the interpreter's last garbage collection at exit walks every object the libraries made
    # (about 2 s with TensorFlow loaded) to free memory the exit frees anyway: run_stage freezes them
    command = stage(
        tmp_path,
        """
        import atexit, gc
        from pipeline.runtime.stage import run_stage

        atexit.register(lambda: print("atexit ran", flush=True))

        def main(argv):
            global objects
            objects = [[index] for index in range(50_000)]  # tracked by the collector

        run_stage(main, lambda argv: argv, tensorflow=False)
        print("frozen", gc.get_freeze_count() >= 50_000, flush=True)
        """,
    )
    result = run(command, cwd=tmp_path, env=env(tmp_path), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["frozen True", "atexit ran"]
