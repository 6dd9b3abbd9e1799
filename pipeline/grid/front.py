"""A local MLflow server in front of the project's SQLite store, for the grid's local workers.

MLflow's SQLite store is not made for several writing processes. The grid's workers log their runs
over HTTP to one MLflow server process (one uvicorn worker) that alone writes the database; the
artifacts go, as always, to the experiment's folder beside it. Started on 127.0.0.1 on a free port,
stopped by its PID (its process group) when the grid ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pipeline.errors import TrackingError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def sqlite_front(uri: str, artifacts: Path, log: Path, timeout: float = 60.0) -> Iterator[str]:
    """Yield the http:// URI of a server fronting the SQLite store `uri`; stop it afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", uri]
    command += ["--default-artifact-root", artifacts.resolve().as_uri(), "--no-serve-artifacts"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with open(log, "ab") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 (loopback)
                    answer.read(16)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise TrackingError(
                        f"the local MLflow server in front of {uri} did not start (its log: {log})"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and its uvicorn worker), then SIGKILL to
    whatever of the group is left."""
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        server.wait(timeout=10)
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
