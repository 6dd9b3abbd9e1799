"""A warm stage worker: the heavy libraries imported once, each stage run in a fork of it.

A DVC stage is one process; importing TensorFlow and MLflow costs about 5 s of every stage, more
than many trainings take. So the stage launcher (`python -m pipeline <stage>`, what dvc.yaml runs)
hands the stage to a worker (a "zygote", as in Android or Spring) that has those libraries imported
and forks one child per stage. The child takes over the launcher's stdin/stdout/stderr (passed
over a Unix socket), working directory, environment, CPU affinity and `sys.path`, imports this
project's code afresh (edits are never stale) and runs the stage module as `__main__`, exactly as
`python -m` would. DVC still sees one command per stage instance, with its exit status, so
per-variant caching is unchanged.

Safe forking:
- The worker forks only while it has one thread. It imports the libraries with their thread pools
  set to one thread (BLAS, OpenMP, Arrow's jemalloc: SINGLE_THREADED_ENV), and checks its live
  threads (/proc/self/task) before every fork; with more than one, it forks nothing and the
  launcher runs the stage itself, saying so in one line.
- In the child, the BLAS/OpenMP pools get the thread counts the launcher's environment asks for
  (or one per CPU), as in a process of its own (with threadpoolctl; without it they keep one).
- The worker's `atexit` handlers do not run in the children. At the child's exit run those that
  importing the preloaded libraries registered (MLflow's end of the active run, logging's flush:
  what importing them in the stage's own process would register) and those the stage registered;
  not those the worker registered for itself after its imports, nor the worker objects' finalizers
  (a temporary directory's removal, say).

The launcher's side:
- Ctrl-C, SIGTERM and SIGHUP are forwarded to the child. A second one kills the child (SIGKILL)
  and exits 130; so does a child still running PIPELINE_WORKER_KILL_AFTER_SECONDS (10) after the
  first (a stage stuck in native code that ignores signals must not hang `dvc repro`).
- No wait is unbounded: the worker must answer within PIPELINE_WORKER_HANDSHAKE_SECONDS (30), else
  the stage runs in the launcher; and the launcher watches the child's pid (pidfd) as well as its
  socket, so a child that died, even one whose socket a grandchild still holds, fails the stage
  with a message naming its pid.
- When the launcher dies (kill -9), the child sees its socket close and stops as if it got SIGTERM.

The worker is started on first use, keyed by the interpreter, the installed packages, this file
and the environment variables that act at import time; it exits after PIPELINE_WORKER_IDLE_SECONDS
(120) without a request. Its log lists each stage it ran, with exit status, time and peak memory.
On by default on Linux; PIPELINE_WORKER=0 turns it off, PIPELINE_WORKER=1 turns it on elsewhere.
Sockets, pid and log files live in PIPELINE_WORKER_DIR (default: <tmp>/pipeline-worker-<uid>).
PIPELINE_WORKER_PRELOAD (comma-separated module names) replaces PRELOAD, for tests.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import select
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
    "threadpoolctl",
)
# read when those libraries are imported, set in the worker before it imports them: pools of one
# thread, which start no thread at import (OpenBLAS starts its pool then, Arrow's jemalloc a
# background purging thread), so the worker can fork
SINGLE_THREADED_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
JEMALLOC_NO_THREAD = ("JE_ARROW_MALLOC_CONF", "background_thread:false")
# which environment variables give a BLAS/OpenMP library its thread count, first found wins
THREAD_COUNT_ENV = {
    "openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
    "openmp": ("OMP_NUM_THREADS",),
}
# environment variables read when those libraries are imported: a different value needs another worker
IMPORT_TIME_ENV = (
    "TF_",
    "CUDA",
    "XLA_",
    "KERAS",
    "MPL",
    "OMP_",
    "KMP_",
    "MKL",
    "OPENBLAS",
    "PYTHON",
    "LD_",
    "PIPELINE_WORKER_PRELOAD",
)
START_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2  # how often the launcher looks at signals and the child's pid while it waits
_HEADER = struct.Struct("!I")
# the worker's answer to a connection: b"R" + the pid of the child forked for it, or b"T" + its thread
# count (it did not fork); then that child's b"X" + the stage's exit status
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


def handshake_seconds() -> float:
    """How long the launcher waits for the worker's answer (a child's pid, or a refusal)."""
    return float(os.environ.get("PIPELINE_WORKER_HANDSHAKE_SECONDS", "30"))


def kill_after_seconds() -> float:
    """How long a child may run on after the first forwarded interrupt before it is killed."""
    return float(os.environ.get("PIPELINE_WORKER_KILL_AFTER_SECONDS", "10"))


def stop_workers(directory: Path) -> None:
    """Stop the workers whose pid files are in directory (tests and benchmarks that own one)."""
    for pid_file in Path(directory).glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


# ---------------------------------------------------------------- client: the process DVC started


def delegate(module: str) -> int | None:
    """Run `python -m <module> <sys.argv[1:]>` in the worker; its exit status, or None when no
    worker could take it (nothing has run then: the caller runs the stage itself, after this has
    printed one line saying why)."""
    try:
        conn = _connect_or_start()
    except (OSError, TimeoutError) as exc:
        return _fall_back(f"no stage worker ({exc})")
    with conn:
        try:  # before we send anything: a worker that never answers must hold none of our descriptors
            kind, value = _recv_reply(conn, handshake_seconds())
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            return _fall_back(f"the stage worker did not take the stage ({exc or type(exc).__name__})")
        if kind == b"T":
            return _fall_back(f"the stage worker has {value} threads, so it must not fork (its log: {worker_dir()})")
        if kind != b"R":
            return _fall_back(f"the stage worker answered {kind!r}")
        request = {
            "module": module,
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
            "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        }
        payload = json.dumps(request).encode()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
            conn.sendall(payload)
        except OSError as exc:  # the child cannot have started the stage without all of it
            return _fall_back(f"the stage worker's child {value} went away ({exc})")
        return _wait_for_child(conn, value)


def _fall_back(reason: str) -> None:
    print(f"note: {reason}; running the stage in this process", file=sys.stderr, flush=True)
    return None


def _wait_for_child(conn: socket.socket, pid: int) -> int:
    """The child's exit status, once it sends it; forwards signals meanwhile and notices a dead child."""
    interrupts: list[float] = []  # when each forwarded signal came

    def forward(signum: int, frame: object) -> None:
        interrupts.append(time.monotonic())
        _kill_quietly(pid, signum if len(interrupts) == 1 else signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    grace = kill_after_seconds()
    pidfd = _open_pidfd(pid)
    try:
        while True:
            watched = [conn] if pidfd is None else [conn, pidfd]
            readable, _, _ = select.select(watched, [], [], POLL_SECONDS)
            if len(interrupts) > 1:
                _kill_and_wait(pid, pidfd)
                print(f"interrupted again: killed the stage process {pid}", file=sys.stderr)
                return 130
            if interrupts and time.monotonic() - interrupts[0] > grace:
                _kill_and_wait(pid, pidfd)
                print(
                    f"error: the stage process {pid} did not stop within {grace:g}s of the interrupt; killed it",
                    file=sys.stderr,
                )
                return 130
            if conn in readable or not _alive(pid, pidfd, readable):
                try:  # the exit status, sent just before the child exits, or end of file
                    kind, code = _recv_reply(conn, POLL_SECONDS)
                    if kind == b"X":
                        return code
                except (OSError, EOFError):
                    pass
                print(f"error: the stage worker process {pid} died before the stage finished", file=sys.stderr)
                return 1
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when the process exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _alive(pid: int, pidfd: int | None, readable: list) -> bool:
    if pidfd is not None:
        return pidfd not in readable
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_and_wait(pid: int, pidfd: int | None, timeout: float = 5.0) -> None:
    """SIGKILL the child and wait (a little) until it is gone, so nothing runs on after we exit."""
    _kill_quietly(pid, signal.SIGKILL)
    if pidfd is not None:
        select.select([pidfd], [], [], timeout)
        return
    deadline = time.monotonic() + timeout
    while _alive(pid, None, []) and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _recv_reply(conn: socket.socket, timeout: float) -> tuple[bytes, int]:
    conn.settimeout(timeout)
    try:
        return _REPLY.unpack(_recv_exactly(conn, _REPLY.size))
    finally:
        conn.settimeout(None)


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
    directory = _private_dir()
    key = worker_key()
    path = directory / f"{key}.sock"
    try:
        return _connect(path)
    except OSError:
        pass
    from filelock import FileLock  # 20 ms: only to start a worker

    with FileLock(directory / f"{key}.lock", timeout=START_TIMEOUT_SECONDS):
        try:
            return _connect(path)  # another stage started it meanwhile
        except OSError:
            pass
        import subprocess

        with open(directory / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", f"import sys; from {__name__} import serve; serve(sys.argv[1])", str(path)],
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
    os.environ.update(SINGLE_THREADED_ENV)
    name, setting = JEMALLOC_NO_THREAD
    os.environ[name] = f"{os.environ[name]},{setting}" if os.environ.get(name) else setting
    preload = os.environ.get("PIPELINE_WORKER_PRELOAD")
    exit_handlers = _import_recording_exit_handlers(preload.split(",") if preload is not None else PRELOAD)
    thread_pools = _thread_pools()
    with contextlib.suppress(Exception):  # a private cache: 0.5 s of every mlflow.keras.log_model otherwise
        if "mlflow" in sys.modules:
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
        threads = _live_threads()
        if len(threads) > 1:  # fork copies one thread, and no lock another one holds would ever be freed
            print(
                f"{time.strftime('%F %T')} worker {os.getpid()} has {len(threads)} threads"
                f" ({', '.join(threads)}): not forking, the stage runs in its launcher",
                flush=True,
            )
            with contextlib.suppress(OSError), conn:
                conn.sendall(_REPLY.pack(b"T", len(threads)))
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: the launcher runs the stage itself
            print(f"{time.strftime('%F %T')} worker {os.getpid()} cannot fork: {exc}", flush=True)
            conn.close()
            continue
        if pid == 0:
            listener.close()
            _child(conn, exit_handlers, thread_pools)  # never returns
        conn.close()
    listener.close()
    if socket_path.exists() and socket_path.stat().st_ino == inode:
        socket_path.unlink()
    print(f"{time.strftime('%F %T')} worker {os.getpid()} idle for {idle:.0f}s, exiting", flush=True)


def _live_threads() -> list[str]:
    """This process's threads, by name (Python's, else the kernel's): all of them on Linux, those
    Python started elsewhere."""
    import threading

    python_names = {thread.native_id: thread.name for thread in threading.enumerate()}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return list(python_names.values())
    names = []
    for task in sorted(tasks, key=int):
        with contextlib.suppress(OSError):  # it ended meanwhile
            names.append(python_names.get(int(task)) or Path(f"/proc/self/task/{task}/comm").read_text().strip())
    return names


def _import_recording_exit_handlers(modules: list[str] | tuple[str, ...]) -> list[tuple]:
    """Import the modules; the atexit handlers their imports registered, (function, args, kwargs)."""
    import atexit
    import importlib

    handlers: list[tuple] = []
    register, unregister = atexit.register, atexit.unregister

    def record(func, *args, **kwargs):
        handlers.append((func, args, kwargs))
        return register(func, *args, **kwargs)

    def forget(func) -> None:
        handlers[:] = [handler for handler in handlers if handler[0] != func]
        unregister(func)

    atexit.register, atexit.unregister = record, forget
    try:
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name.strip())
    finally:
        atexit.register, atexit.unregister = register, unregister
    return handlers


def _keep_exit_handlers(handlers: list[tuple]) -> None:
    """In a child: drop the worker's atexit handlers but those its imports registered, and the
    worker objects' finalizers, so that what runs at the child's exit is what would in a process
    of its own that imported those libraries."""
    import atexit
    import weakref

    atexit._clear()
    for func, args, kwargs in handlers:
        if func != getattr(weakref.finalize, "_exitfunc", None):
            atexit.register(func, *args, **kwargs)
    with contextlib.suppress(AttributeError):  # private, in CPython 3.8 to 3.13
        for finalizer in list(weakref.finalize._registry):
            finalizer.atexit = False  # the worker's object: its finalizer is not ours to run
        weakref.finalize._registered_with_atexit = False  # the child's first finalizer registers anew


def _thread_pools() -> list:
    """The BLAS/OpenMP libraries loaded now, as threadpoolctl controls them (none without it: BLAS
    in a stage run by the worker then keeps the one thread it was imported with)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    return ThreadpoolController().lib_controllers


def _use_requested_threads(cpus: list[int] | None, thread_pools: list) -> None:
    """In a child, after the launcher's environment is in place: the CPUs and BLAS/OpenMP thread
    counts a process of its own would have (the worker imported those libraries single-threaded;
    libraries the stage loads itself read the launcher's environment)."""
    if cpus:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.sched_setaffinity(0, cpus)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for library in thread_pools:
        wanted = available
        for name in THREAD_COUNT_ENV.get(library.internal_api, ()):
            value = os.environ.get(name, "").split(",")[0].strip()
            if value.isdigit() and int(value) > 0:
                wanted = int(value)
                break
        with contextlib.suppress(Exception):
            library.set_num_threads(min(wanted, available))


def _child(conn: socket.socket, exit_handlers: list[tuple], thread_pools: list) -> None:
    code, started, module = 1, time.monotonic(), "?"
    log = os.dup(1)  # the worker's log, before the client's stdout takes fd 1
    try:
        _keep_exit_handlers(exit_handlers)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn.sendall(_REPLY.pack(b"R", os.getpid()))
        conn.settimeout(handshake_seconds())  # the client sends its request at once
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        request = json.loads(_recv_exactly(conn, size))
        conn.settimeout(None)
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
        _use_requested_threads(request.get("cpus"), thread_pools)
        package = __name__.split(".")[0]
        for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[name]  # this project's code is imported afresh from the stage's checkout
        _stop_when_client_goes_away(conn)
        code = _run_module(module)
    except BaseException as exc:  # noqa: BLE001  (reported like an uncaught error in `python -m`)
        import traceback

        traceback.print_exc()
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
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
