"""What the grid tests start, always inside a loopback-only network namespace (`netns_command`): a
project folder with a tiny IDX dataset, `ray start` nodes, an MLflow server, the grid itself.

Every process is started here and stopped by its PID (and its descendants' PIDs, read before the
stop): never `ray stop`, which stops every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from model_store import learnable_images
from support import BIN, ROOT, clean_env, free_port, wait_for_server, write_idx_mirror


def netns_available() -> bool:
    """`unshare --net` works here (root, or an unprivileged user namespace)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(netns_command(["true"]), capture_output=True, timeout=30)
    return probe.returncode == 0


def netns_command(command: Sequence[str]) -> list[str]:
    """`command` in a new network namespace that holds only loopback, brought up: nothing it opens
    can be reached from, or reach, any other interface."""
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", "--net", *user, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *map(str, command)]


def make_project(path: Path, *, steps: int = 41, variants: Sequence[str] = ("baseline", "transposed")) -> Path:
    """A project folder (params.yaml, pipeline/) whose dataset `tiny` is 600 + 200 generated images
    in a local mirror, pinned by their checksums."""
    path.mkdir(parents=True)
    shutil.copytree(ROOT / "pipeline", path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    mirror = path / "mirror"
    rng = np.random.default_rng(0)
    arrays = (*learnable_images(600, rng), *learnable_images(200, rng))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        dataset="tiny", mirrors=[str(mirror)], sha256=write_idx_mirror(mirror, arrays), validation_size=100
    )
    params["train"].update(steps=steps, validation_every=20, seeds=[1, 2], initializer="keras", threads=1)
    params["evaluate"]["batch_size"] = 50
    params["variants"] = {name: params["variants"][name] for name in variants}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def env(home: Path, **extra: str) -> dict[str, str]:
    """The tests' environment, with HOME (where Ray keeps its token) in the test's folder."""
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)  # as `ray get-auth-token --generate` would make; `ray start` needs one given
    return clean_env(HOME=str(home), PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **extra)


def grid_command(out: str, *args: str) -> list[str]:
    return [str(BIN / "python"), "-m", "pipeline", "grid", "--out", out, "--no-progress", *args]


def descendants(pid: int) -> list[Any]:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process this module started and every process below it, by PID."""
    import psutil

    below = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    for child in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=15)


class LocalCluster:
    """A head node and worker nodes, each `ray start --block --num-cpus 1` on 127.0.0.1."""

    def __init__(self, folder: Path, environment: dict[str, str]) -> None:
        self.folder, self.env = folder, environment
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"ray-node-{len(self.nodes)}.log", "wb")  # noqa: SIM115 (the node keeps it)
        common = ["--block", "--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        node = subprocess.Popen([str(BIN / "ray"), "start", *args, *common], stdout=log, stderr=log, env=self.env)
        self.nodes.append(node)
        return node

    def start(self, workers: int = 1) -> LocalCluster:
        self._start("--head", "--port", str(self.port), "--include-dashboard", "false")
        self.wait(1)
        for _ in range(workers):
            self._start("--address", self.address)
        self.wait(1 + workers)
        return self

    def alive(self) -> int:
        probe = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False);"
            " print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        answer = subprocess.run([str(BIN / "python"), "-c", probe], capture_output=True, text=True, env=self.env)
        return int(answer.stdout.strip() or 0) if answer.returncode == 0 else 0

    def wait(self, nodes: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() < nodes:
            if time.monotonic() > deadline or any(node.poll() is not None for node in self.nodes):
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.folder.glob("ray-node-*.log"))
                raise AssertionError(f"the Ray cluster did not reach {nodes} nodes:\n{logs}")
            time.sleep(1)

    def kill_node(self, index: int) -> None:
        """Kill a worker node without grace: its raylet and everything below it, SIGKILL."""
        stop(self.nodes[index], signal.SIGKILL)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            stop(node)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a SQLite file, for grids on a cluster (they refuse SQLite).
    It starts at once; `ready()` waits until it answers (meanwhile the cluster can start)."""

    def __init__(self, folder: Path, environment: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "mlflow-server.log"
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
        command += ["--default-artifact-root", (folder / "server-artifacts").as_uri(), "--no-serve-artifacts"]
        command += ["--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1], "--workers", "1"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, env=environment, start_new_session=True)

    def ready(self) -> MlflowServer:
        wait_for_server(self.url, self.proc, self.log)
        return self

    def stop(self) -> None:
        stop(self.proc)


@contextlib.contextmanager
def cluster_and_server(folder: Path, environment: dict[str, str]) -> Iterator[tuple[LocalCluster, MlflowServer]]:
    """A head and a worker node, and an MLflow server for them to log to, started side by side and
    both stopped at the end."""
    server, cluster = MlflowServer(folder, environment), None
    try:
        cluster = LocalCluster(folder, environment).start(workers=1)
        yield cluster, server.ready()
    finally:
        server.stop()
        if cluster is not None:
            cluster.stop()


def listening() -> tuple[list[str], list[str]]:
    """This namespace's network interfaces and the addresses every listening TCP socket is bound to."""
    import psutil

    addresses = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN})
    return sorted(psutil.net_if_addrs()), addresses


def tasks_log(out: Path) -> list[dict]:
    path = out / "tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for(condition: Any, timeout: float, what: str, proc: subprocess.Popen) -> None:
    """Poll `condition` until it holds; fail when `proc` (what should make it hold) exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def mlflow_runs(uri: str) -> list[Any]:
    """Every active run of the training experiment, in the store at `uri`."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("deconvolution")
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


# --- scenarios: `python tests/grid_cluster.py SCENARIO FOLDER`, run by the tests inside netns_command;
# each leaves its project under FOLDER/project and writes what the test asserts to FOLDER/result.json


def same_numbers(folder: Path) -> dict:
    """One grid (2 variants x 2 seeds) three ways: on a local Ray (one worker), in-process by the train
    stage pinned to one core (`taskset -c N`, a variant per core), and on a 2-node cluster of
    `ray start` nodes."""
    project = make_project(folder / "project")
    environment = env(folder / "home")
    run = dict(cwd=project, env=environment, capture_output=True, text=True, timeout=600)
    local = subprocess.run(grid_command("g-local", "--workers", "1"), **run)
    assert local.returncode == 0, local.stderr
    (prepared_dir,) = (project / "data" / "grid").iterdir()
    stages = []
    for core, variant in enumerate(("baseline", "transposed")):  # side by side, each on a core of its own
        stage = ["taskset", "-c", str(core % os.cpu_count()), str(BIN / "python"), "-m", "pipeline", "train"]
        stage += ["--variant", variant, "--data", str(prepared_dir)]
        stage += [f"--{kind}=in-process/{kind}" for kind in ("models", "metrics", "plots")]
        stages.append(subprocess.Popen(stage, cwd=project, env=environment, stderr=subprocess.PIPE, text=True))
    try:
        for stage in stages:
            _, errors = stage.communicate(timeout=600)
            assert stage.returncode == 0, errors
    finally:
        for stage in stages:
            stop(stage)  # a no-op for one that exited; the other, when one failed
    with cluster_and_server(folder, environment) as (cluster, server):
        exposed = listening()
        remote = subprocess.run(
            grid_command("g-cluster", "--address", cluster.address),
            **{**run, "env": {**environment, "MLFLOW_TRACKING_URI": server.url}},
        )
        assert remote.returncode == 0, remote.stderr
    return {"interfaces": exposed[0], "listening": exposed[1], "server": server.url}


def node_dies(folder: Path) -> dict:
    """A grid on a head and a worker node; the worker node is killed (SIGKILL) once the first run has
    finished, while others are in flight."""
    project = make_project(folder / "project", steps=1001)  # runs of seconds: one is in flight at the kill
    environment = env(folder / "home")
    with cluster_and_server(folder, environment) as (cluster, server):
        command = grid_command("g", "--address", cluster.address, "--seeds", "1-2")
        with open(folder / "grid.log", "wb") as log:
            grid = subprocess.Popen(
                command,
                cwd=project,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**environment, "MLFLOW_TRACKING_URI": server.url},
            )
        try:
            wait_for(lambda: any("run_id" in t for t in tasks_log(project / "g")), 300, "the first finished run", grid)
            time.sleep(1.0)  # both nodes have their next run by now
            cluster.kill_node(1)
            returncode = grid.wait(timeout=600)
        finally:
            stop(grid)
    return {
        "returncode": returncode,
        "log": (folder / "grid.log").read_text()[-3000:],
        "server_db": str(folder / "server.db"),
    }


def interrupt_resume(folder: Path) -> dict:
    """A local grid interrupted (SIGINT to its process group, as Ctrl-C) after its first finished run,
    then the same command again."""
    project = make_project(folder / "project", steps=401, variants=("baseline",))
    environment = env(folder / "home")
    command = grid_command("g", "--workers", "1", "--seeds", "1-3")
    with open(folder / "first.log", "wb") as log:
        grid = subprocess.Popen(
            command, cwd=project, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        wait_for(lambda: any("run_id" in t for t in tasks_log(project / "g")), 300, "the first finished run", grid)
        finished_before = [t for t in tasks_log(project / "g") if "run_id" in t]
        os.killpg(grid.pid, signal.SIGINT)
        first = grid.wait(timeout=120)
    finally:
        stop(grid)
    running_after_interrupt = [
        r.info.run_id for r in mlflow_runs(f"sqlite:///{project / 'mlflow.db'}") if r.info.status == "RUNNING"
    ]
    second = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, timeout=600)
    return {
        "first": first,
        "first_log": (folder / "first.log").read_text()[-3000:],
        "finished_before": finished_before,
        "running_after_interrupt": running_after_interrupt,
        "second": second.returncode,
        "second_log": second.stderr[-3000:],
    }


SCENARIOS = {"same_numbers": same_numbers, "node_dies": node_dies, "interrupt_resume": interrupt_resume}

if __name__ == "__main__":
    name, where = sys.argv[1], Path(sys.argv[2])
    result = SCENARIOS[name](where)
    (where / "result.json").write_text(json.dumps(result))
