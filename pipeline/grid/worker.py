"""What a grid worker process does: run one variant x seed with `Runner.run` into a scratch folder and
hand back its files, so that the driver writes them (no shared file system). The process keeps its
Runner (TensorFlow imported, data on the device, one traced Trainer per variant) for the next task.

Ray calls `run_task` as a remote function; it is plain Python, so the tests call it in-process too.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.record import MetricsRecord, RunRecord

# packages whose versions must match between the driver and every worker: they decide the numbers
# (tensorflow, keras, numpy), the files (mlflow, pandas) or whether a task can run at all
CHECKED_PACKAGES = ("tensorflow", "keras", "numpy", "mlflow", "pandas", "pydantic", "ray")

# this worker process's Runner, for the grid it serves: (grid id, params) -> Runner
_runner: tuple[tuple[str, str], Any] | None = None


@dataclass(frozen=True)
class TaskResult:
    """A finished run as it travels back to the driver: what its run.json and metrics JSON hold, its
    files ({path relative to the output root: bytes}), where it ran and how long the task took."""

    record: RunRecord
    metrics: MetricsRecord
    files: dict[str, bytes]
    node: str
    pid: int
    task_seconds: float


def versions() -> dict[str, str]:
    """Python and the CHECKED_PACKAGES' versions in this process."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in CHECKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else platform.node()
    except Exception:  # noqa: BLE001 (identification only)
        return platform.node()


def _get_runner(grid: str, params_json: str, data: Any, tracking_uri: str, experiment_id: str) -> Any:
    """This process's Runner for the grid, made on its first task: TensorFlow's threads are pinned
    before its first op, and the MLflow store is the driver's."""
    global _runner
    if _runner is not None and _runner[0] == (grid, params_json):
        return _runner[1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline import training
    from pipeline.config import Params
    from pipeline.runner import Runner
    from pipeline.runtime.stage import import_tensorflow_quietly, mark_stage_start

    params = Params.model_validate_json(params_json)
    import_tensorflow_quietly()
    training.set_threads(params.train.threads)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # also MLFLOW_TRACKING_URI, for whatever reads it later
    mark_stage_start()
    runner = Runner(params, data, experiment_id)
    _runner = ((grid, params_json), runner)
    return runner


def run_task(
    variant: str,
    seed: int,
    *,
    grid: str,
    params_json: str,
    data: Any,
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str],
) -> TaskResult:
    """One grid run: `Runner.run` into a scratch folder, after retiring what an earlier attempt at
    the same run left in MLflow (pipeline.grid.ledger); its files come back as bytes."""
    import time

    from pipeline.grid import ledger
    from pipeline.runner import OutputRoots

    started = time.perf_counter()
    runner = _get_runner(grid, params_json, data, tracking_uri, experiment_id)
    scratch = Path(tempfile.mkdtemp(prefix="grid-run-"))
    try:
        roots = OutputRoots(scratch / "models", scratch / "metrics", scratch / "plots")
        record, metrics = runner.run(
            variant,
            seed,
            roots,
            tags={"grid": grid, **tags},
            stage="grid",
            before_start=lambda key: ledger.retire(experiment_id, grid, key),
        )
        files = {
            path.relative_to(scratch).as_posix(): path.read_bytes()
            for path in sorted(scratch.rglob("*"))
            if path.is_file()
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.stderr.flush()
    return TaskResult(record, metrics, files, _node_id(), os.getpid(), time.perf_counter() - started)
