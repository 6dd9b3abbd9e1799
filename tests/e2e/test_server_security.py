"""`make server` refuses to start where it would let anyone in, and stops everything it started on a
signal.

Every server here listens on 127.0.0.1. The network case (MLFLOW_HOST=0.0.0.0) is checked by its
refusal alone, which happens before anything starts; the signal test starts and stops its own
servers. Who gets into a running server, and where its secrets stay: tests/e2e/test_team.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import uuid
from pathlib import Path

import pytest
from support import BIN, ROOT, free_port, have_postgres, run
from team_server import (
    PASSWORD,
    STAMP,
    accepts,
    call,
    kill_leftovers,
    server_processes,
    start_env,
    started,
    survivors,
)


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
    # a login cache that is not a number of seconds, likewise
    env = start_env(tmp_path / "state", port, free_port(), "x", MLFLOW_AUTH_CACHE_TTL_SECONDS="1m")
    result = run(["bash", str(ROOT / "scripts" / "mlflow-server.sh")], cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and "MLFLOW_AUTH_CACHE_TTL_SECONDS=1m: use a whole number" in result.stderr
    assert not (tmp_path / "state").exists()


def test_sigterm_or_ctrl_c_stops_everything_every_time_even_as_root_from_a_private_clone(tmp_path: Path):
    """`setsid make server`, wait for /health, `kill -TERM -- -<pgid>`: twice (a new database, then an
    existing one), then Ctrl-C (SIGINT to the group). Each time no process of that server may be
    left. The clone is private (0700), as a clone under /root is; as root, PostgreSQL's data goes
    where the postgres user can reach it."""
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
        for attempt, sig in enumerate([signal.SIGTERM] * 2 + [signal.SIGINT], 1):
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
