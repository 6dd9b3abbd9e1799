"""Shared test helpers: where the project is, commands with timeouts, git and DVC test repos.

Import them as `from support import ROOT, run, dvc_init` (pytest puts tests/ on sys.path).
Every command a test starts goes through `run` (or a `Popen` read through `Lines` and waited
on with a timeout), so a hung child fails its test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]  # the project root (tests/..)
SHARED = ROOT.parent / "shared"  # the team's shared folder beside the checkout (real MNIST files)
BIN = Path(sys.executable).parent  # this virtualenv's bin: python, dvc, mlflow
TIMEOUT = 600.0  # seconds: the default limit of a command started by `run`


class CommandTimeout(subprocess.TimeoutExpired):
    """A command ran past its limit; the message ends with the output it had written so far."""

    def __str__(self) -> str:
        def text(value: Any) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

        return f"{super().__str__()}; its output:\n{text(self.stdout)[-4000:]}\n{text(self.stderr)[-4000:]}"


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    timeout: float = TIMEOUT,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """subprocess.run that can never hang a test.

    stdout and stderr are captured unless stdout/stderr/capture_output is given, as text unless
    text=False; `input` is sent to stdin as with subprocess.run. The command runs
    in its own session; past `timeout` seconds (or on Ctrl-C) its whole process group is killed
    (`dvc repro` and the stages it starts) and CommandTimeout is raised with the output so far.
    With check=True a non-zero exit fails the test with the command's output in the message.
    """
    if not {"stdout", "stderr", "capture_output"} & kwargs.keys():
        kwargs["capture_output"] = True
    kwargs.setdefault("text", True)
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    data = kwargs.pop("input", None)
    if data is not None:
        kwargs["stdin"] = subprocess.PIPE
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        stdout, stderr = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = _leftovers(proc)
        raise CommandTimeout(cmd, timeout, stdout, stderr) from None
    except BaseException:  # KeyboardInterrupt, ...: leave no process behind
        kill_group(proc)
        raise
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything in its group, then reap it.

    A no-op for a process already reaped (its id may since belong to someone else)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _leftovers(proc: subprocess.Popen) -> tuple[Any, Any]:
    """What a killed process had written (a grandchild outside its group may hold the pipe: 10 s at most)."""
    try:
        return proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return None, None


class Lines:
    """Read a child's text stream line by line, with a timeout on every wait.

    A background thread drains the stream (so the child never blocks on a full pipe);
    `wait_for` returns the first line holding a text, `rest` what remains up to end of file.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []  # every line taken so far, for failure messages
        self._eof = False

        def drain() -> None:
            try:
                for line in stream:
                    self._queue.put(line)
            except (OSError, ValueError):  # the stream was closed under us
                pass
            finally:
                self._queue.put(None)

        threading.Thread(target=drain, daemon=True).start()

    def _next(self, deadline: float) -> str | None:
        if self._eof:
            return None
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("no more output within the timeout; so far:\n" + "".join(self.seen[-50:])) from None
        if line is None:
            self._eof = True
        else:
            self.seen.append(line)
        return line

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        """The first line containing `text`; fails on a timeout or at end of file."""
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) is not None:
            if text in line:
                return line
        raise AssertionError(f"the output ended without {text!r}:\n" + "".join(self.seen[-50:]))

    def rest(self, timeout: float = 120.0) -> str:
        """Everything up to end of file (the child closed the stream, usually by exiting)."""
        deadline = time.monotonic() + timeout
        lines = []
        while (line := self._next(deadline)) is not None:
            lines.append(line)
        return "".join(lines)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a command a test starts: no MLFLOW_* or DVC_* variables of the caller
    (a test never writes to the user's store), DVC analytics off, TensorFlow quiet, this
    virtualenv's bin first on PATH and a git identity for commits; then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for who in ("GIT_AUTHOR", "GIT_COMMITTER"):
        env[f"{who}_NAME"], env[f"{who}_EMAIL"] = "test", "test@localhost"
    env.update(extra)
    return env


def run_stage_here(stage: str, argv: Sequence[str | os.PathLike], capsys: Any) -> subprocess.CompletedProcess:
    """`python -m pipeline <stage> ARGV` run in this process: the stage runner (run_stage) with the
    stage module's parse_args and main, as the command runs them, so the exit status, stdout and
    stderr are the command's; without a new interpreter and TensorFlow's import (5-12 s here). The
    caller sets the working folder and environment (monkeypatch); `capsys` is pytest's fixture."""
    import gc
    import importlib

    from pipeline.runtime.stage import run_stage

    module = importlib.import_module(f"pipeline.stages.{stage}")
    argv = [str(a) for a in argv]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    try:
        run_stage(module.main, module.parse_args, argv)
        status = 0
    except SystemExit as exc:
        status = 0 if exc.code is None else exc.code
    finally:  # what run_stage sets up for the rest of a process's life: undone for the next test
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        gc.unfreeze()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "pipeline", stage, *argv], status, out, err)


def git_init(repo: Path) -> None:
    """`git init` in repo (created if missing)."""
    Path(repo).mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q"], cwd=repo, env=clean_env(), check=True, timeout=60)


def commit_all(repo: Path, message: str = "init") -> str:
    """Commit everything in repo; returns the new commit's full SHA."""
    env = clean_env()
    run(["git", "add", "-A"], cwd=repo, env=env, check=True, timeout=60)
    run(["git", "commit", "-qm", message], cwd=repo, env=env, check=True, timeout=60)
    return run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, timeout=60).stdout.strip()


def dvc_init(repo: Path, env: Mapping[str, str] | None = None) -> None:
    """`dvc init` in a git repo, then `dvc config core.analytics false`: a test repo never reports
    usage (DVC_NO_ANALYTICS is set for the init itself too)."""
    env = {**(env if env is not None else clean_env()), "DVC_NO_ANALYTICS": "1"}
    run(["dvc", "init", "-q"], cwd=repo, env=env, check=True, timeout=120)
    run(["dvc", "config", "core.analytics", "false"], cwd=repo, env=env, check=True, timeout=120)


def dvc_stage(stage: str, params: Mapping[str, Any], **item: Any) -> dict[str, Any]:
    """dvc.yaml's definition of a stage (cmd, deps, outs, ...) with every ${...} filled in from these
    params and this matrix item (e.g. variant="baseline", seed=1): a test runs a stage with the paths
    DVC would use, without spelling them itself."""
    import yaml

    definition = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    definition.pop("matrix", None)
    context = {**params, "item": item}

    def value(match: re.Match) -> str:
        out: Any = context
        for key in match[1].strip().split("."):
            out = out[key]
        return str(out)

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            return re.sub(r"\$\{([^}]+)\}", value, node)
        if isinstance(node, list):
            return [fill(n) for n in node]
        if isinstance(node, dict):
            return {fill(k): fill(v) for k, v in node.items()}
        return node

    return fill(definition)


def stage_args(stage: str, params: Mapping[str, Any], **item: Any) -> list[str]:
    """The arguments dvc.yaml gives `python -m pipeline <stage>` (see `dvc_stage`)."""
    cmd = dvc_stage(stage, params, **item)["cmd"]
    words = shlex.split(cmd)
    prefix = ["python", "-m", "pipeline", stage]
    assert words[:4] == prefix, f"dvc.yaml: {stage}'s cmd does not start with {shlex.join(prefix)}: {cmd}"
    return words[4:]


def stage_outs(stage: str, params: Mapping[str, Any], **item: Any) -> list[str]:
    """The paths of a stage's `outs` in dvc.yaml (see `dvc_stage`)."""
    outs = dvc_stage(stage, params, **item).get("outs", [])
    return [next(iter(out)) if isinstance(out, dict) else out for out in outs]


def stage_command(stage: str, params: Mapping[str, Any], **item: Any) -> list[str]:
    """`python -m pipeline.stages.<stage>` with the arguments dvc.yaml gives it (see `stage_args`);
    run it with cwd at a project folder and env=clean_env(PYTHONPATH=str(ROOT))."""
    return [sys.executable, "-m", f"pipeline.stages.{stage}", *stage_args(stage, params, **item)]


def arg_value(args: Sequence[str], flag: str) -> str:
    """The value after `flag` in an argument list (as `stage_args` returns)."""
    return args[list(args).index(flag) + 1]


def write_prepared(directory: Path, n: int = 400, *, dataset: str = "tiny", seed: int = 0) -> None:
    """A prepared dataset of n random 28x28 images (10 classes) in the prepare stage's own format
    (pipeline.prepared), its valid and test splits the first 50 training rows."""
    import numpy as np

    from pipeline import prepared

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    data = prepared.Prepared(
        x_train=x,
        y_train=y,
        x_valid=x[:50],
        y_valid=y[:50],
        x_test=x[:50],
        y_test=y[:50],
        classes=tuple(str(i) for i in range(10)),
        dataset=dataset,
        source_sha256=("0" * 64,) * 4,
        scaling="unit",
    )
    prepared.save(Path(directory), data)


def write_idx_mirror(mirror: Path, arrays: Sequence[Any]) -> dict[str, str]:
    """A local mirror for data.mirrors: the four IDX files of `arrays` (train images, train labels,
    test images, test labels) in `mirror`; returns their data.sha256 pins {file name: SHA-256}."""
    from pipeline.datasets import IDX_FILES, file_sha256
    from pipeline.idx import write_idx

    mirror.mkdir(parents=True, exist_ok=True)
    for key, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(mirror / IDX_FILES[key], array)
    return {name: file_sha256(mirror / name) for name in IDX_FILES.values()}


def copy_store(template: Path, db: Path) -> str:
    """A new, empty MLflow store at `db`: a copy of `template` (conftest's session fixture
    `migrated_store`, whose migrations have run), its Default experiment keeping artifacts in
    ./mlruns beside `db` as a store made there would. Returns its sqlite:/// URI."""
    import shutil
    import sqlite3

    Path(db).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [str(Path(db).parent / "mlruns/0")]
        )
    return f"sqlite:///{db}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_postgres() -> bool:
    """PostgreSQL's server binaries are installed (Debian's postgresql; .ci/run installs it)."""
    return any(Path(p).joinpath("initdb").exists() for p in Path("/usr/lib/postgresql").glob("*/bin"))


def wait_for_server(
    url: str, proc: subprocess.Popen, log: Path, timeout: float = 240, *, path: str = "/health"
) -> None:
    """Wait until the MLflow server at `url` answers `path` (/health; /ping for `mlflow models
    serve`); fail with its log when the process `proc` that starts it exits first, or after
    `timeout` seconds (PostgreSQL, `mlflow db upgrade`, then MLflow, on two busy cores)."""
    import urllib.request

    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server stopped ({proc.returncode}):\n{Path(log).read_text()}"
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the MLflow server did not answer {path} within {timeout} s:\n" + Path(log).read_text())


def run_record(**fields: Any) -> Any:
    """A pipeline.record.RunRecord with plausible values; `fields` replace any of them."""
    from pipeline.record import RunRecord

    values = {
        "variant": "baseline",
        "seed": 1,
        "run_id": "run1",
        "experiment_id": "1",
        "run_key": "key1",
        "steps": 5,
        "stopped_early_at": None,
        "diverged_at_step": None,
        "val_accuracy": 0.5,
        "train_seconds": 1.5,
        "trace_seconds": 0.5,
        "validation_seconds": 0.25,
        "train_images_per_second": 80.0,
        "threads": 1,
        "trainable_params": 10,
        "flops_per_image": 20,
        "data_scaling": "unit",
        "peak_memory_mb": 300.0,
    }
    return RunRecord(**(values | fields))
