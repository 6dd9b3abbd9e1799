"""pipeline.runtime on stand-in stages: a safe stage worker (single-threaded forks, signals, dead or
stuck children, atexit) and a peak memory that means the same in both modes.

The stand-in stages are modules of a package `fakestages` written into the test's folder; the
worker preloads only light libraries (PIPELINE_WORKER_PRELOAD), so each test starts its own in
about a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import ROOT, Lines, clean_env, kill_group, run

from pipeline.runtime.worker import stop_workers

TIMEOUT = 60  # seconds: for every process and every read; none should come near it


class Stages:
    """Stand-in stages in `fakestages`, run through the launcher as dvc.yaml runs the real ones."""

    def __init__(self, root: Path, workers: Path) -> None:
        self.root = root
        self.workers = workers
        self.started: list[subprocess.Popen] = []
        (root / "fakestages").mkdir()
        (root / "fakestages" / "__init__.py").write_text("")
        # the launcher's defaults, whatever the caller's environment says
        env = {k: v for k, v in clean_env().items() if not k.startswith(("PIPELINE_", "OPENBLAS", "OMP_"))}
        self.env = {
            **env,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{root}",
            "PIPELINE_WORKER_DIR": str(workers),
            "PIPELINE_WORKER_PRELOAD": "numpy,threadpoolctl",
        }

    def write(self, name: str, source: str) -> None:
        (self.root / "fakestages" / f"{name}.py").write_text(textwrap.dedent(source))

    def command(self, stage: str, *args: str) -> list[str]:
        launch = "import sys; from pipeline.runtime.launcher import main; main('fakestages', sys.argv[1:2])"
        return [sys.executable, "-c", launch, stage, *args]

    def run(self, stage: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run(self.command(stage, *args), cwd=self.root, env={**self.env, **env}, timeout=TIMEOUT)

    def start(self, stage: str, *args: str, **env: str) -> tuple[subprocess.Popen, Lines, Lines]:
        """The stage's launcher, running; its stdout and stderr."""
        proc = subprocess.Popen(
            self.command(stage, *args),
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc, Lines(proc.stdout), Lines(proc.stderr)

    def log(self) -> str:
        return "".join(p.read_text() for p in self.workers.glob("*.log"))

    def worker_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.workers.glob("*.pid")]


@pytest.fixture
def stages(tmp_path: Path):
    workers = tmp_path / "workers"
    workers.mkdir(mode=0o700)
    stages = Stages(tmp_path, workers)
    yield stages
    for proc in stages.started:  # a failed test's
        kill_group(proc)
    stop_workers(workers)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process pid is gone (or a zombie) within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


PID_STAGE = """
    import os
    print("stage pid", os.getpid(), flush=True)
"""

# a stage that ignores SIGINT and SIGTERM, as one stuck in native code does
STUBBORN_STAGE = """
    import os, signal, time
    def ignore(signum, frame):
        print("ignoring", signum, flush=True)
    signal.signal(signal.SIGINT, ignore)
    signal.signal(signal.SIGTERM, ignore)
    print("ready", os.getpid(), flush=True)
    time.sleep(120)  # ends by itself, should the test fail to stop it (a signal does not cut it short)
"""


def test_the_worker_forks_single_threaded_after_preloading_blas(stages: Stages):
    """NumPy's OpenBLAS starts its threads when imported: the worker imports it with one."""
    stages.write("pids", PID_STAGE)
    result = stages.run("pids")
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    (worker,) = stages.worker_pids()
    child = int(result.stdout.split()[-1])
    assert child != worker
    assert f"child {child}: fakestages.pids exit 0" in stages.log()
    assert len(os.listdir(f"/proc/{worker}/task")) == 1


def test_a_stage_in_the_worker_gets_the_blas_threads_of_a_process_of_its_own(stages: Stages):
    pytest.importorskip("threadpoolctl")
    stages.write(
        "blas",
        """
        import numpy
        from threadpoolctl import threadpool_info
        print(sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info()))
        """,
    )
    in_worker = stages.run("blas")
    in_process = stages.run("blas", PIPELINE_WORKER="0")
    assert in_worker.returncode == in_process.returncode == 0, in_worker.stderr + in_process.stderr
    assert "fakestages.blas exit 0" in stages.log()
    assert in_worker.stdout == in_process.stdout
    assert f"('openblas', {len(os.sched_getaffinity(0))})" in in_worker.stdout


def test_a_worker_with_a_second_thread_forks_nothing_and_the_launcher_says_so(stages: Stages):
    (stages.root / "straggler.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='straggler', daemon=True).start()\n"
    )
    stages.write("pids", PID_STAGE)
    proc, out, err = stages.start("pids", PIPELINE_WORKER_PRELOAD="numpy,straggler")
    assert proc.wait(timeout=TIMEOUT) == 0
    notes = [line for line in err.rest(timeout=TIMEOUT).splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: the stage worker has 2 threads, so it must not fork (its log: {stages.workers});"
        " running the stage in this process"
    ]
    assert out.rest(timeout=TIMEOUT) == f"stage pid {proc.pid}\n"  # the launcher's own process ran it
    log = stages.log()
    assert " child " not in log
    assert "has 2 threads (MainThread, straggler): not forking" in log


def test_without_a_usable_worker_directory_the_launcher_says_so_in_one_line(stages: Stages, tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others could plant a socket here: not used
    stages.write("pids", PID_STAGE)
    result = stages.run("pids", PIPELINE_WORKER_DIR=str(shared))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"note: no stage worker ({shared} is not a private directory of this user); running the stage in this process\n"
    )
    assert result.stdout.startswith("stage pid")
    assert not list(shared.iterdir())


def test_worker_off_runs_the_stage_in_process_silently(stages: Stages):
    stages.write("pids", PID_STAGE)
    result = stages.run("pids", PIPELINE_WORKER="0")
    assert result.returncode == 0
    assert result.stderr == ""
    assert not list(stages.workers.iterdir())


def test_a_worker_that_does_not_answer_is_not_waited_for_forever(stages: Stages, tmp_path: Path):
    """A worker that accepts the connection but never answers: the launcher gives up and runs the stage."""
    stages.write("pids", PID_STAGE)
    command = [sys.executable, "-c", "from pipeline.runtime.worker import worker_key; print(worker_key())"]
    key = run(command, env=stages.env, timeout=TIMEOUT, check=True).stdout.strip()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(stages.workers / f"{key}.sock"))
        hung.listen(1)  # connections queue up, and nobody accepts them
        result = stages.run("pids", PIPELINE_WORKER_HANDSHAKE_SECONDS="1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("note: the stage worker did not take the stage (")
    assert result.stderr.endswith("); running the stage in this process\n")
    assert result.stdout.startswith("stage pid")


def test_a_second_ctrl_c_kills_the_stage_and_exits_130(stages: Stages):
    stages.write("stubborn", STUBBORN_STAGE)
    proc, out, err = stages.start("stubborn", PIPELINE_WORKER_KILL_AFTER_SECONDS="600")
    child = int(out.wait_for("ready").split()[1])
    assert child != proc.pid
    proc.send_signal(signal.SIGINT)
    out.wait_for(f"ignoring {signal.SIGINT.value}")  # forwarded to the stage, which carries on
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=TIMEOUT) == 130
    assert f"interrupted again: killed the stage process {child}" in err.rest(timeout=TIMEOUT)
    assert gone(child)


def test_a_stage_that_ignores_the_interrupt_is_killed_after_the_grace_period(stages: Stages):
    stages.write("stubborn", STUBBORN_STAGE)
    proc, out, err = stages.start("stubborn", PIPELINE_WORKER_KILL_AFTER_SECONDS="1")
    child = int(out.wait_for("ready").split()[1])
    proc.send_signal(signal.SIGTERM)  # what DVC sends when it is stopped
    assert proc.wait(timeout=TIMEOUT) == 130
    message = f"error: the stage process {child} did not stop within 1s of the interrupt; killed it"
    assert message in err.rest(timeout=TIMEOUT)
    assert gone(child)


def test_a_dead_stage_process_fails_the_stage_even_when_a_grandchild_holds_its_socket(stages: Stages):
    """The stage forked a process that inherited its socket to the launcher, then died: the socket
    stays open, so the launcher must watch the stage's pid too."""
    stages.write(
        "orphaner",
        """
        import os, time
        grandchild = os.fork()
        if grandchild == 0:  # keeps every inherited descriptor but stdin, stdout and stderr
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(120)
            os._exit(0)
        print("ready", os.getpid(), grandchild, flush=True)
        time.sleep(120)
        """,
    )
    proc, out, err = stages.start("orphaner")
    child, grandchild = (int(pid) for pid in out.wait_for("ready").split()[1:])
    try:
        os.kill(child, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        assert proc.wait(timeout=TIMEOUT) == 1
        assert f"error: the stage worker process {child} died before the stage finished" in err.rest(timeout=TIMEOUT)
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_the_worker_atexit_handlers_and_finalizers_stay_out_of_the_stage(stages: Stages):
    """A preloaded library's import-time handler runs at the stage's exit, as it would in a process of
    its own, and so does the stage's; the worker's objects' finalizers (here a temporary directory's
    removal) do not."""
    (stages.root / "library.py").write_text(
        textwrap.dedent(
            """
            import atexit, os, sys, tempfile
            atexit.register(lambda: print("library handler in", os.getpid(), flush=True))
            CACHE = tempfile.TemporaryDirectory(prefix="worker-cache-")
            """
        )
    )
    stages.write(
        "handlers",
        """
        import atexit, os
        import library
        print("cache", library.CACHE.name, os.path.isdir(library.CACHE.name), flush=True)
        atexit.register(lambda: print("stage handler in", os.getpid(), flush=True))
        """,
    )
    for _ in range(2):
        result = stages.run("handlers", PIPELINE_WORKER_PRELOAD="numpy,library")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        _, cache, exists = lines[0].split()
        assert exists == "True"  # the worker's cache, left alone by the child before
        (child,) = {line.split()[-1] for line in lines[1:]}
        assert lines[1:] == [f"stage handler in {child}", f"library handler in {child}"]
    assert "fakestages.handlers exit 0" in stages.log()
    assert Path(cache).is_dir()


def test_mlflow_ends_a_run_the_stage_left_open_in_the_worker(stages: Stages):
    """MLflow registers its end-of-run handler when imported, in the worker: it must still run."""
    stages.write(
        "tracked",
        """
        import mlflow
        mlflow.set_tracking_uri("sqlite:///mlflow.db")
        print("run", mlflow.start_run().info.run_id, flush=True)
        """,
    )
    result = stages.run("tracked", PIPELINE_WORKER_PRELOAD="mlflow")
    assert result.returncode == 0, result.stderr
    assert "fakestages.tracked exit 0" in stages.log()
    run_id = result.stdout.split()[-1]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{stages.root / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_stage_peak_memory_is_the_same_in_the_worker_and_in_process(stages: Stages):
    """The worker preloads pandas, which the stage does not import: the process's own peak (ru_maxrss)
    counts it in a fork of the worker and not in a process of its own; stage_peak_memory_mb does not."""
    stages.write(
        "memory",
        """
        import numpy as np
        from pipeline.runtime.stage import run_stage, stage_peak_memory_mb

        def main(argv):
            block = np.ones(160 * 2**20 // 8)  # 160 MiB, every page touched
            del block
            print("peak", stage_peak_memory_mb())

        run_stage(main, tensorflow=False)
        """,
    )
    peaks = {}
    for mode in ("1", "0"):
        result = stages.run("memory", PIPELINE_WORKER=mode, PIPELINE_WORKER_PRELOAD="numpy,pandas")
        assert result.returncode == 0, result.stderr
        peaks[mode] = float(result.stdout.split()[-1])
    assert "fakestages.memory exit 0" in stages.log()
    assert 155 < peaks["0"] < 185
    assert 155 < peaks["1"] < 185
    assert abs(peaks["1"] - peaks["0"]) < 10


def test_the_launcher_names_its_stages_on_a_wrong_one(tmp_path: Path):
    command = [sys.executable, "-m", "pipeline", "trian"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run(command, cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "usage: python -m pipeline {fetch,prepare,train,evaluate,compare,predict}" in result.stderr
