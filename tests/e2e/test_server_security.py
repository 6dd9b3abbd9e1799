"""`make server` lets no one in where they don't belong, and stops everything it started on a signal.

Every server here listens on 127.0.0.1. The network case (MLFLOW_HOST=0.0.0.0) is checked by its
refusal alone, which happens before anything starts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import BIN, ROOT, clean_env, free_port, have_postgres, kill_group, run, wait_for_server

pytestmark = pytest.mark.slow

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
    env = clean_env(
        MLFLOW_PORT=str(port),
        MLFLOW_PG_PORT=str(pg_port),
        MLFLOW_BIN=str(BIN / "mlflow"),
        MLFLOW_WORKERS="1",
        **{MARKER: marker},
        **extra,
    )
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


@pytest.fixture(scope="module")
def auth_server() -> Iterator[Server]:
    """The script on 127.0.0.1 with an admin password: basic-auth on."""
    if not have_postgres():
        pytest.skip("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)")
    # not under pytest's private (0700) temp root: as root, PostgreSQL runs as the postgres user
    state = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    state.chmod(0o755)
    marker = uuid.uuid4().hex
    env = start_env(
        state,
        free_port(),
        free_port(),
        marker,
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
        MLFLOW_PG_DIR=str(state / "postgres"),
    )
    server = None
    try:
        with started(["bash", str(ROOT / "scripts" / "mlflow-server.sh")], ROOT, env, state / "server.log") as (
            _,
            server,
        ):
            yield server
    finally:
        if server is not None:
            kill_leftovers(server)
        shutil.rmtree(state, ignore_errors=True)


def test_a_network_address_without_credentials_is_refused_before_anything_starts(tmp_path: Path):
    port = free_port()
    for host in ("0.0.0.0", "::"):
        env = start_env(tmp_path / "state", port, free_port(), uuid.uuid4().hex, MLFLOW_HOST=host)
        result = run(["make", "--no-print-directory", "-o", STAMP, "server"], cwd=ROOT, env=env, timeout=120)
        assert result.returncode != 0
        message = result.stderr
        assert f"refusing to serve MLflow on {host}:{port} without authentication" in message
        # it says how to configure it, for the server and for its clients
        for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD_FILE", "MLFLOW_TRACKING_USERNAME"):
            assert name in message
        assert not (tmp_path / "state").exists()  # nothing was started or written
        assert not accepts(port)
    # an empty password is no password
    env = start_env(tmp_path / "state", port, free_port(), "x", MLFLOW_HOST="0.0.0.0", MLFLOW_AUTH_ADMIN_PASSWORD="")
    result = run(["bash", str(ROOT / "scripts" / "mlflow-server.sh")], cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and "without authentication" in result.stderr
    # a password MLflow would reject is refused with the reason, before anything starts
    env = start_env(
        tmp_path / "state", port, free_port(), "x", MLFLOW_HOST="0.0.0.0", MLFLOW_AUTH_ADMIN_PASSWORD="short"
    )
    result = run(["bash", str(ROOT / "scripts" / "mlflow-server.sh")], cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and "too short" in result.stderr and "12 characters" in result.stderr
    assert not (tmp_path / "state").exists()


def test_only_logged_in_clients_get_in(auth_server: Server, monkeypatch):
    import mlflow

    url, admin = auth_server.url, (ADMIN, PASSWORD)
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    assert call(url, "/health")[0] == 200  # what a load balancer probes stays open
    assert call(url, search)[0] == 401
    assert call(url, search, user=(ADMIN, "not-the-password"))[0] == 401
    assert call(url, search, user=admin)[0] == 200

    # a client logs in with MLflow's standard variables, creates an experiment and logs a run
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("security")
    run_ = client.create_run(experiment_id, run_name="logged-in")
    for step, loss in enumerate([2.3, 1.1, 0.4]):
        client.log_metric(run_.info.run_id, "loss", loss, step=step)
    client.log_param(run_.info.run_id, "variant", "baseline")
    client.set_terminated(run_.info.run_id)
    logged = client.get_run(run_.info.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"variant": "baseline"}
    assert [m.value for m in client.get_metric_history(run_.info.run_id, "loss")] == [2.3, 1.1, 0.4]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    # logged out, the server itself refuses: a 401 (a server that is down or failing answers otherwise)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"failed with error code 401 != 200") as refused:
        client.search_experiments()
    assert refused.value.get_http_status_code() == 401
    assert "You are not authenticated" in refused.value.message

    # a teammate the admin adds logs to the shared experiment (default permission EDIT) but may not delete it
    alice = ("alice", secrets.token_urlsafe(18))
    new_user = "/api/2.0/mlflow/users/create"
    assert call(url, new_user, method="POST", body={"username": alice[0], "password": alice[1]}, user=admin)[0] == 200
    created = call(url, "/api/2.0/mlflow/runs/create", method="POST", body={"experiment_id": experiment_id}, user=alice)
    assert created[0] == 200, created
    delete = {"experiment_id": experiment_id}
    assert call(url, "/api/2.0/mlflow/experiments/delete", method="POST", body=delete, user=alice)[0] == 403
    # no one signs up without logging in, and only an admin adds users
    eve = {"username": "eve", "password": secrets.token_urlsafe(18)}
    assert call(url, new_user, method="POST", body=eve)[0] == 401
    assert call(url, new_user, method="POST", body=eve, user=alice)[0] == 403


def test_postgresql_wants_its_password_and_secrets_stay_private(auth_server: Server):
    import psycopg2

    server = auth_server
    connect = dict(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow", connect_timeout=10)
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(**connect, passfile="/dev/null").close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**connect, password="not-the-password").close()
    with psycopg2.connect(**connect, password=server.pg_password()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        assert {row[0] for row in cursor.fetchall()} == {"scram-sha-256"}  # no trust, for any connection
        cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'experiments'")
        assert cursor.fetchone()[0] == 1  # MLflow's tables, in the database it reaches through PGPASSFILE
    conn.close()

    auth = server.state / "auth"
    for path, mode in [
        (server.state / "pgpass", 0o600),
        (auth, 0o700),
        (auth / "basic_auth.db", 0o600),
        (auth / "basic_auth.ini", 0o600),
        (auth / "flask-secret-key", 0o600),
        (server.pgdata, 0o700),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert PASSWORD not in (auth / "basic_auth.ini").read_text()

    # no secret on a command line, in the server's output or in its auth config
    secret_values = [PASSWORD, server.pg_password(), (auth / "flask-secret-key").read_text().strip()]
    processes = server_processes(server)
    assert any("mlflow server" in cmd for _, cmd in processes.values()), processes
    for _, cmd in processes.values():
        assert not any(value in cmd for value in secret_values), cmd
    output = server.log.read_text()
    assert not any(value in output for value in secret_values)


def test_sigterm_or_ctrl_c_stops_everything_every_time_even_as_root_from_a_private_clone(tmp_path: Path):
    """`setsid make server`, wait for /health, `kill -TERM -- -<pgid>`: five times, then Ctrl-C (SIGINT
    to the group). Each time no process of that server may be left. The clone is private (0700), as a
    clone under /root is; as root, PostgreSQL's data goes where the postgres user can reach it."""
    if not have_postgres():
        pytest.skip("PostgreSQL is not installed")
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    clone.chmod(0o700)
    tmp_path.chmod(0o700)
    shutil.copy2(ROOT / "scripts" / "mlflow-server.sh", clone / "scripts")
    shutil.copy2(ROOT / "Makefile", clone)
    for name in ("requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, clone)
    (clone / ".venv").symlink_to(BIN.parent)  # the Makefile's .venv, already set up
    env = start_env(None, free_port(), free_port(), uuid.uuid4().hex, MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD)
    pg_homes, server = set(), None
    try:
        for attempt, sig in enumerate([signal.SIGTERM] * 5 + [signal.SIGINT], 1):
            log = tmp_path / f"server-{attempt}.log"
            command = ["make", "--no-print-directory", "-o", STAMP, "server"]
            with started(command, clone, env, log, sig) as (proc, server):
                pg_homes.add(server.pgdata.parent)
                assert server.state == clone / ".mlflow-server"
                pg_home = server.pgdata.parent
                if os.geteuid() == 0:
                    # PostgreSQL's data where persistent state belongs, one folder per state folder,
                    # named after its path: never in a temporary folder that tmpfiles ages out
                    digest = hashlib.sha256(str(server.state).encode()).hexdigest()[:16]
                    assert pg_home == Path("/var/lib/mlflow-server") / digest
                    assert server.pgdata.owner() == "postgres"
                    assert stat.S_IMODE(pg_home.stat().st_mode) == 0o700
                    assert (pg_home / "state-folder").read_text().strip() == str(server.state)
                else:
                    assert pg_home == server.state
                # the state folder names its database
                assert (server.state / "postgres-location").read_text().strip() == str(pg_home)
                assert call(server.url, "/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
                before = server_processes(server)
                assert sum("postgres" in cmd for _, cmd in before.values()) >= 3, before
                assert any("uvicorn" in cmd for _, cmd in before.values()), before
            assert proc.returncode is not None
            left = survivors(before, server)
            assert not left, (
                f"attempt {attempt} ({signal.Signals(sig).name}) left:\n" + "\n".join(left) + log.read_text()
            )
            assert not (server.pgdata / "postmaster.pid").exists()  # PostgreSQL shut down, not killed
            assert not accepts(server.port) and not accepts(server.pg_port)
            assert not (server.state / "server.pid").exists()
            if attempt > 1:  # the database exists: the schema upgrade ran before MLflow started
                assert (server.state / "db-upgrade.log").exists()

        script = ["bash", str(clone / "scripts" / "mlflow-server.sh")]
        if os.geteuid() == 0:
            # a state folder deleted without its database: the next start refuses, and says how to
            # remove both (--remove finds the database from the state folder's path)
            shutil.rmtree(server.state)
            refused = run(script, cwd=clone, env=env, timeout=120)
            assert refused.returncode == 2, refused.stderr
            assert f"{server.pgdata} wants a password, but {server.state}/pgpass is gone" in refused.stderr
            assert f"MLFLOW_SERVER_DIR={server.state} " in refused.stderr and "--remove" in refused.stderr
            assert server.pgdata.is_dir()  # the team's data is never deleted by a start
        removed = run([*script, "--remove"], cwd=clone, env=env, timeout=120)
        assert removed.returncode == 0, removed.stderr
        assert not server.state.exists() and not server.pgdata.parent.exists()
        assert f"removed the state folder: {server.state}" in removed.stderr
    finally:
        if server is not None:
            kill_leftovers(server)
        for home in pg_homes:
            if not home.is_relative_to(clone):
                shutil.rmtree(home, ignore_errors=True)
