"""A warm stage worker: TensorFlow, Keras and MLflow imported once, each stage run in a fork of it.

A DVC stage is one process; importing TensorFlow and MLflow costs about 5 s of every stage, more
than many trainings take. So the stage launcher (`python -m pipeline <stage>`, what dvc.yaml runs)
hands the stage to a worker (a "zygote", as in Android or Spring) that has those libraries imported
and forks one child per stage. The child takes over the launcher's stdin/stdout/stderr (passed
over a Unix socket), working directory, environment and `sys.path`, imports this project's code
afresh (edits are never stale) and runs the stage module as `__main__`, exactly as `python -m`
would. DVC still sees one command per stage instance, with its exit status, so per-variant caching
is unchanged.

- The launcher forwards Ctrl-C, SIGTERM and SIGHUP to the child; when the launcher dies (kill -9),
  the child sees its socket close and stops as if it got SIGTERM.
- The worker is started on first use, keyed by the interpreter, the installed packages, this file
  and the environment variables that act at import time; it exits after
  PIPELINE_WORKER_IDLE_SECONDS (120) without a request. Its log lists each stage it ran, with exit
  status, time and peak memory.
- On by default on Linux; PIPELINE_WORKER=0 turns it off, PIPELINE_WORKER=1 turns it on elsewhere.
  Any failure to reach a worker falls back to running in-process.
- Sockets, pid and log files live in PIPELINE_WORKER_DIR (default: <tmp>/pipeline-worker-<uid>).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

# libraries whose import dominates a stage's start-up; this project's own modules are not preloaded
PRELOAD = (
    "numpy",
    "pandas",
    "yaml",
    "pydantic",
    "filelock",
    "scipy.stats",
    "matplotlib.figure",
    "tensorflow",
    "keras",
    "mlflow",
    "mlflow.keras",
    "mlflow.models",
    "mlflow.store.tracking.sqlalchemy_store",
    # imported lazily by a stage's first MLflow calls (found by diffing sys.modules around a stage)
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    "mlflow.pyfunc",
    "mlflow.models.display_utils",
    "mlflow.tracing.export",
    "mlflow.tracing.processor",
    "mlflow.types.responses",
    "mlflow.utils.model_utils",
    "alembic.command",
    "alembic.config",
    "sqlalchemy.dialects.sqlite",
    "git",
    "opentelemetry.sdk.metrics",
    "pyarrow.pandas_compat",
    "pandas.io.formats.csvs",
    "matplotlib.backends.backend_agg",
)
# environment variables read when those libraries are imported: a different value needs another worker
IMPORT_TIME_ENV = ("TF_", "CUDA", "XLA_", "KERAS", "MPL", "OMP_", "KMP_", "MKL", "OPENBLAS", "PYTHON", "LD_")
START_TIMEOUT_SECONDS = 120.0
_HEADER = struct.Struct("!I")
_REPLY = struct.Struct("!ci")


def enabled() -> bool:
    """On by default on Linux; elsewhere (macOS: fork after importing system frameworks is unsafe)
    only with PIPELINE_WORKER=1."""
    setting = os.environ.get("PIPELINE_WORKER", "").lower()
    if setting in ("0", "off", "false", "no"):
        return False
    return sys.platform == "linux" or setting in ("1", "on", "true", "yes")


def worker_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"pipeline-worker-{os.getuid()}"
    return Path(os.environ.get("PIPELINE_WORKER_DIR") or default)


def worker_key() -> str:
    """Which worker may serve this process: same interpreter, packages and import-time environment."""
    parts = [sys.executable, sys.version, f"{__file__}:{os.stat(__file__).st_mtime_ns}"]  # this code, too
    for entry in sys.path:
        if entry.endswith("-packages") and os.path.isdir(entry):
            parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")  # pip install/uninstall changes it
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(IMPORT_TIME_ENV))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def stop_workers(directory: Path) -> None:
    """Stop the workers whose pid files are in directory (tests and benchmarks that own one)."""
    for pid_file in Path(directory).glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


# ---------------------------------------------------------------- client: the process DVC started


def delegate(module: str) -> int | None:
    """Run `python -m <module> <sys.argv[1:]>` in the worker; its exit status, or None when no
    worker could take it (nothing has run then: the caller runs the stage itself)."""
    try:
        conn = _connect_or_start()
    except (OSError, TimeoutError):
        return None
    with conn:
        request = {
            "module": module,
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
        }
        payload = json.dumps(request).encode()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
            conn.sendall(payload)
            _, pid = _REPLY.unpack(_recv_exactly(conn, _REPLY.size))
        except (OSError, struct.error, EOFError):
            return None  # the worker went away before starting the stage
        forward = lambda signum, frame: _kill_quietly(pid, signum)  # noqa: E731
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        try:
            _, code = _REPLY.unpack(_recv_exactly(conn, _REPLY.size))
        except (OSError, EOFError):
            print(f"error: the stage worker process {pid} died before the stage finished", file=sys.stderr)
            return 1
    return code


def _kill_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def _private_dir() -> Path:
    directory = worker_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{directory} is not a private directory of this user")
    return directory


def _connect_or_start() -> socket.socket:
    from filelock import FileLock

    directory = _private_dir()
    key = worker_key()
    path = directory / f"{key}.sock"
    try:
        return _connect(path)
    except OSError:
        pass
    with FileLock(directory / f"{key}.lock", timeout=START_TIMEOUT_SECONDS):
        try:
            return _connect(path)  # another stage started it meanwhile
        except OSError:
            pass
        import subprocess

        with open(directory / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from pipeline.worker import serve; serve(sys.argv[1])", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # not in the terminal's process group: Ctrl-C goes through us
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OSError(f"the stage worker exited with status {proc.returncode}")
            try:
                return _connect(path)
            except OSError:
                time.sleep(0.05)
        _kill_quietly(proc.pid, signal.SIGTERM)
        raise TimeoutError("the stage worker did not start")


# ---------------------------------------------------------------- the worker and its children


def serve(path: str) -> None:
    """Preload the libraries, then fork a child per connection until idle for a while."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # a private cache: 0.5 s of every mlflow.keras.log_model otherwise
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()  # scans every installed distribution
    os.chdir("/")  # pin no project folder (DVC deletes its temporary experiment copies)
    # everything preloaded is permanent: the children's garbage collector must not walk (and so
    # write to, un-sharing the pages of) these objects at every full collection
    gc.freeze()
    idle = float(os.environ.get("PIPELINE_WORKER_IDLE_SECONDS", "120"))
    socket_path = Path(path)
    socket_path.unlink(missing_ok=True)  # a dead worker's socket: we hold the start lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(idle)
    inode = socket_path.stat().st_ino
    socket_path.with_suffix(".pid").write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print(f"{time.strftime('%F %T')} worker {os.getpid()} ready on {path}", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            break
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn)  # never returns
        conn.close()
    listener.close()
    if socket_path.exists() and socket_path.stat().st_ino == inode:
        socket_path.unlink()
    print(f"{time.strftime('%F %T')} worker {os.getpid()} idle for {idle:.0f}s, exiting", flush=True)


def _child(conn: socket.socket) -> None:
    code, started, module = 1, time.monotonic(), "?"
    log = os.dup(1)  # the worker's log, before the client's stdout takes fd 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        request = json.loads(_recv_exactly(conn, size))
        module = request["module"]
        print(f"{time.strftime('%F %T')} child {os.getpid()}: {module} in {request['cwd']}", flush=True)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # the worker's own stdout was a log file (block-buffered); on a terminal, flush every line
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
            del sys.modules[name]  # this project's code is imported afresh from the stage's checkout
        conn.sendall(_REPLY.pack(b"P", os.getpid()))
        _stop_when_client_goes_away(conn)
        code = _run_module(module)
    except BaseException:  # noqa: BLE001  (reported like an uncaught error in `python -m`)
        import traceback

        traceback.print_exc()
    finally:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the client closing its end is no interrupt now
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            import atexit

            atexit._run_exitfuncs()  # MLflow and others end runs and flush here, as at a normal exit
            sys.stdout.flush()
            sys.stderr.flush()
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            os.write(
                log,
                f"{time.strftime('%F %T')} child {os.getpid()}: {module} exit {code}"
                f" after {time.monotonic() - started:.1f}s, peak RSS {peak:,.0f} MB\n".encode(),
            )
        finally:
            try:
                conn.sendall(_REPLY.pack(b"X", code))
            finally:
                os._exit(code)


def _run_module(module: str) -> int:
    """Run the stage as `python -m` would; under cProfile when PIPELINE_PROFILE names a folder."""
    import runpy

    profile_dir = os.environ.get("PIPELINE_PROFILE")
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        if profiler is not None:
            profiler.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(Path(profile_dir) / f"{module.rsplit('.', 1)[-1]}-{os.getpid()}.prof")
    return 0


def _stop_when_client_goes_away(conn: socket.socket) -> None:
    """The client sends nothing more: end of file means it died (kill -9), so stop like on SIGTERM."""
    import threading

    def watch() -> None:
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="client-watch", daemon=True).start()
