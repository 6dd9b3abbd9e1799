"""Where a grid runs: a Ray started here for the purpose (one worker per core), or an existing
cluster (`--address` or RAY_ADDRESS). Ray's token authentication stays on, as Ray 2.60 sets it.

The project's code travels to the workers with the job (Ray's `py_modules`); the packages must be
installed on every node, and `check_versions` names any that differ from the driver's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before saying it cannot be reached


def cluster_address(address: str | None) -> str | None:
    """`--address`, else RAY_ADDRESS, else None (a local Ray). `auto` and `local` are Ray's own words."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A TCP connection to HOST:PORT within `timeout` seconds, or a UserError: Ray itself would wait
    for minutes on an address where nothing answers."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--address {address!r}: write HOST:PORT, the head node's GCS address (`ray start --head` prints it)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address} within {timeout:.0f} s ({exc.strerror or exc}): start its"
            " head with `ray start --head --port PORT` (docs/scale.md), check the address and the firewall,"
            " or leave out --address and RAY_ADDRESS to run on this machine"
        ) from None


@contextmanager
def connect(address: str | None, workers: int, threads: int) -> Iterator[dict[str, Any]]:
    """Ray for the grid: joined at `address`, or started here with `workers` x `threads` CPUs and
    shut down at the end. Yields what the progress line reports: {"nodes": the nodes alive now}."""
    import ray

    require_token_auth(joining=address is not None)
    package = Path(__file__).resolve().parents[1]
    runtime_env = {
        "py_modules": [str(package)],
        "env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")},
        "excludes": ["__pycache__"],
    }
    options: dict[str, Any] = dict(
        log_to_driver=False, configure_logging=False, include_dashboard=False, runtime_env=runtime_env
    )
    if address is not None:
        check_reachable(address)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}") from None
    else:
        # "local": a new Ray of its own, never one found running here (ray.init() alone joins that)
        # and advertised on loopback: its workers are all here (Ray still binds every interface)
        ray.init(address="local", num_cpus=workers * threads, _node_ip_address="127.0.0.1", **options)
    try:
        if address is None:
            protect_token()
        yield {"nodes": len(ray.nodes())}
    finally:
        ray.shutdown()


def require_token_auth(*, joining: bool) -> None:
    """Ray's token authentication, on; `RAY_AUTH_MODE=disabled` is refused, since anyone who can
    reach an unauthenticated cluster's ports can run code on it. A local Ray left to Ray 2.60's
    default turns it on and makes its token (~/.ray/auth_token); a driver joining a cluster must ask
    for it (RAY_AUTH_MODE=token) and finds the token there or in RAY_AUTH_TOKEN(_PATH)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        raise UserError(
            f"RAY_AUTH_MODE={mode}: the grid runs Ray with token authentication only. Unset RAY_AUTH_MODE or"
            " set it to token, and give every node the cluster's token (docs/scale.md)"
        )
    if joining:
        os.environ["RAY_AUTH_MODE"] = "token"


def protect_token() -> None:
    """The token Ray wrote for a local cluster (~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH) readable
    by its owner alone: Ray 2.60 writes it with the default umask (0644)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with suppress(OSError):
        if path.is_file() and path.stat().st_uid == os.getuid():
            path.chmod(0o600)


def check_versions(driver: Mapping[str, str], workers: list[Mapping[str, str]]) -> None:
    """A UserError naming each package whose version differs between the driver and a worker node."""
    differ = sorted(
        {
            f"{name} {driver.get(name)} here, {found.get(name)} on a worker"
            for found in workers
            for name in driver
            if found.get(name) != driver.get(name)
        }
    )
    if differ:
        raise UserError(
            "the cluster's workers run other versions than this driver, so their runs would not give"
            f" the same numbers: {'; '.join(differ)}. Install requirements.lock on every node (docs/scale.md)"
        )
