"""Test helpers for the team server (`make server`, scripts/mlflow-server.sh: MLflow on PostgreSQL):
start one on 127.0.0.1 and stop it with a signal, find every process it started, call its REST API.
tests/e2e/conftest.py starts one per session (`team_server`) for the tests that only use it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import BIN, clean_env, kill_group, wait_for_server

ADMIN = "admin"
PASSWORD = secrets.token_urlsafe(18)  # this session's admin password; MLflow wants 12 characters or more
MARKER = "MLFLOW_SERVER_TEST_ID"  # in the environment of every process a server of these tests starts
STAMP = ".venv/.installed"  # `make -o STAMP server`: never reinstall the virtualenv from a test


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def call(url: str, path: str, *, method: str = "GET", body: dict | None = None, user: tuple[str, str] | None = None):
    """(HTTP status, JSON body or {}) of one REST call, with basic auth when `user` is given."""
    request = urllib.request.Request(
        url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body.startswith(b"{") else {}
    except urllib.error.HTTPError as error:
        return error.code, {}


@dataclass
class Server:
    url: str
    port: int
    pg_port: int
    state: Path  # MLFLOW_SERVER_DIR
    pgdata: Path  # where the script put PostgreSQL's data (printed at start)
    log: Path
    marker: str

    def pg_password(self) -> str:
        return (self.state / "pgpass").read_text().strip().split(":", 4)[4]


def start_env(state: Path | None, port: int, pg_port: int, marker: str, **extra: str) -> dict[str, str]:
    """The environment of a server these tests start: its ports, one MLflow worker unless `extra`
    says otherwise, `marker` (see server_processes), its state folder when given, then `extra`."""
    env = clean_env(
        MLFLOW_PORT=str(port), MLFLOW_PG_PORT=str(pg_port), MLFLOW_BIN=str(BIN / "mlflow"), MLFLOW_WORKERS="1"
    )
    env.update({MARKER: marker}, **extra)
    if state is not None:
        env["MLFLOW_SERVER_DIR"] = str(state)
    return env


@contextlib.contextmanager
def started(command: list[str], cwd: Path, env: dict[str, str], log: Path, sig: int = signal.SIGTERM) -> Iterator:
    """Start `command` (make server, or the script) in a session of its own; once /health answers,
    yield (process, Server); then send `sig` to its process group, as a supervisor or Ctrl-C does."""
    port = int(env["MLFLOW_PORT"])
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        # SIGINT as at a terminal: a runner that starts the tests in the background (`cmd &` in a
        # script) leaves SIGINT ignored, and a shell cannot trap a signal ignored when it started
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for_server(url, proc, log)
        (line,) = [x for x in log.read_text().splitlines() if x.startswith("PostgreSQL on 127.0.0.1")]
        pgdata = Path(line.split("(data in ", 1)[1].split(")", 1)[0])
        state = Path(line.split("(artifacts in ", 1)[1].split(")", 1)[0]).parent
        yield proc, Server(url, port, int(env["MLFLOW_PG_PORT"]), state, pgdata, log, env[MARKER])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=120)
        finally:
            kill_group(proc)  # SIGKILL only when the signal did not stop it in time


def server_processes(server: Server) -> dict[int, tuple[str, str]]:
    """The live processes of this server: every process carrying its marker in its environment
    (make, the script, MLflow, uvicorn and its workers, the job runner), and PostgreSQL's postmaster
    with its children (PostgreSQL overwrites its environment with the process title). Each as
    pid -> (start time, command line), so that a later look does not mistake a reused pid."""
    postmaster = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, ppid, started_at = fields[0], int(fields[1]), fields[19]
            if state == "Z":
                continue  # dead: nothing left but its exit status
            pid = int(entry.name)
            ours = pid == postmaster or ppid == postmaster
            if not ours:
                with contextlib.suppress(OSError):
                    ours = f"{MARKER}={server.marker}".encode() in (entry / "environ").read_bytes().split(b"\0")
            if ours:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[pid] = (started_at, command)
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return found


def survivors(before: dict[int, tuple[str, str]], server: Server, grace: float = 5.0) -> list[str]:
    """The processes of `before` (and any new one of this server) still alive after up to `grace` seconds."""
    deadline = time.monotonic() + grace
    while True:
        now = server_processes(server)
        left = [cmd for pid, (started_at, cmd) in now.items() if pid not in before or before[pid][0] == started_at]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def kill_leftovers(server: Server) -> None:
    """A failed test leaves no server behind for the next."""
    for pid in server_processes(server):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
