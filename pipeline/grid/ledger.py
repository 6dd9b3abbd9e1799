"""Nothing lost, nothing doubled: the MLflow side of a grid's retries and resumes.

Every grid run carries the tags `grid` (the grid's id: its output folder) and `run_key` (what its
numbers depend on, pipeline.runner.run_key). Before a run starts, `retire` ends what an earlier attempt
at the same grid x key left: a run still RUNNING (its worker died, or the driver was stopped) is
marked FAILED, and a FINISHED one whose files never reached the driver is deleted (MLflow keeps it
in the trash), so one FINISHED run per grid x variant x seed remains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def grid_id(out: Path) -> str:
    """A grid's id: its output folder, resolved, hashed (a tag value that needs no quoting)."""
    return hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]


def _filter(grid: str, keys: Iterable[str] | None = None) -> str:
    text = f"tags.grid = '{grid}'"
    keys = list(keys or [])
    if len(keys) == 1:
        text += f" and tags.run_key = '{keys[0]}'"
    elif keys:
        text += " and tags.run_key IN (" + ", ".join(f"'{key}'" for key in keys) + ")"
    return text


def runs(experiment_id: str, grid: str, keys: Iterable[str] | None = None) -> list:
    """The grid's active (not deleted) MLflow runs, of `keys` only when given."""
    from mlflow import MlflowClient

    return MlflowClient().search_runs([experiment_id], filter_string=_filter(grid, keys), max_results=50000)


def retire(experiment_id: str, grid: str, key: str) -> None:
    """End an earlier attempt's runs of this grid x run key before a new attempt starts."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for run in runs(experiment_id, grid, [key]):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
        elif run.info.status == "FINISHED":
            client.delete_run(run.info.run_id)


def fail_running(experiment_id: str, grid: str, keys: Iterable[str]) -> int:
    """Mark FAILED the runs of `keys` still RUNNING (the driver stopped, their workers with it)."""
    from mlflow import MlflowClient

    keys = list(keys)
    if not keys:
        return 0
    client = MlflowClient()
    running = [run for run in runs(experiment_id, grid, keys) if run.info.status == "RUNNING"]
    for run in running:
        client.set_terminated(run.info.run_id, "FAILED")
    return len(running)
