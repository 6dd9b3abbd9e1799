"""How any MLflow run of the project is logged: started and ended with a status that says how it
ended, tagged with where it came from, its params under params.yaml's names, its metrics (finite
values only, retried on a key collision) and a training history's per-step series (in batches, in
the background)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def git_commit(cwd: Path | None = None) -> str:
    """The commit checked out in `cwd` (default: the working folder); "unknown" outside a git repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def context_tags() -> dict[str, str]:
    """Where a run came from: the git commit and, under `dvc exp run`, the DVC experiment's name."""
    commit = git_commit()
    tags = {"git.commit": commit, "mlflow.source.git.commit": commit}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def run_tags(*, variant: str, seed: int, stage: str, dataset: str, dataset_sha256: str) -> dict[str, str]:
    """Tags that let a user find and group runs; nothing from the environment but DVC's own names."""
    return {
        "variant": variant,
        "seed": str(seed),
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "dataset": dataset,
        "dataset.sha256": dataset_sha256,
        **context_tags(),
    }


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'train': {'batch_size': 16}} -> {'train.batch_size': 16}: the same names as in params.yaml."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, list | tuple):
        return {prefix: ",".join(str(v) for v in value)}
    return {prefix: value}


@contextmanager
def tracked_run(
    experiment_id: str,
    *,
    run_id: str | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    failed: bool = False,
) -> Iterator[Any]:
    """An MLflow run that ends FINISHED on success (FAILED if `failed`: a diverged run stays marked
    so when its evaluation is logged), KILLED on Ctrl-C/SIGTERM and FAILED on an error."""
    import mlflow

    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name, tags=dict(tags or {}))
    try:
        yield run
    except KeyboardInterrupt:
        _end_run_quietly("KILLED")
        raise
    except BaseException:
        _end_run_quietly("FAILED")
        raise
    else:
        mlflow.end_run("FAILED" if failed else "FINISHED")


def _end_run_quietly(status: str) -> None:
    """End the run with a status, without hiding the error that ended it if the store fails too."""
    import mlflow

    with suppress(Exception):
        mlflow.end_run(status)


def finite(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The metrics MLflow is given: NaN, inf and None are left out (a diverged run says so in its
    `diverged_at_step` tag). A NaN at the step a model is logged at made `log_model` fail
    (mlflow#26108: it re-logs the step's metrics for the model), and NaN metrics break the run page
    of MLflow 3's UI (mlflow#16555)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def log_metrics(
    metrics: Mapping[str, float | None],
    *,
    step: int | None = None,
    model_id: str | None = None,
    dataset: Any = None,
    attempts: int = 5,
) -> None:
    """mlflow.log_metrics (finite values only) on the active run, optionally linked to a logged model
    and a dataset, retried at a later millisecond on a key collision.

    Two experiments that re-evaluate the same trained run in parallel (a queued grid over
    `evaluate.*` params) log the same metric names to one run. The store's primary key for a logged
    model's metrics is (model, name, timestamp in ms, step, run), without the value, so two writers
    in the same millisecond collide and MLflow fails the whole batch ("duplicate key value violates
    unique constraint" on PostgreSQL, "UNIQUE constraint failed" on SQLite).
    """
    import time

    import mlflow
    from mlflow.exceptions import MlflowException

    values = finite(metrics)
    for attempt in range(attempts):
        try:
            mlflow.log_metrics(values, step=step, timestamp=int(time.time() * 1000), model_id=model_id, dataset=dataset)
            return
        except MlflowException as exc:
            if "unique constraint" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.002 * (attempt + 1))


def log_steps(metrics: Mapping[str, list[float]], steps: list[int], run_id: str) -> None:
    """Log per-step series to a run in batches (one call per 1000 values), not one call per value.
    Non-finite values (a diverged run's last step) are left out, as in `finite`."""
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    batch: list[Metric] = []
    for key, values in metrics.items():
        for step, value in zip(steps, values, strict=True):
            if not math.isfinite(value):
                continue
            batch.append(Metric(key, float(value), now, int(step)))
            if len(batch) == 1000:
                client.log_batch(run_id, metrics=batch)
                batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)


class StepLogger:
    """Logs a growing training history to the active run, only what is new each time, in a background
    thread: a slow tracking store never stalls a training step.

    While one send is in flight, new values wait for the next call. A failed send is retried with the
    next call, so a flaky tracking server loses no step and never stops training; `close()` sends what
    is left in the calling thread and raises if that fails. (MLflow's own async logging is not used: its
    queue polls with a 1 s timeout, so every flush and end of run waited up to a second for nothing.)
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import mlflow

        self.run_id = mlflow.active_run().info.run_id  # the active run is thread-local in MLflow
        self.logged = self.val_logged = 0
        self.warned = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-steps")
        self._pending: Any = None

    def _send(self, result: Any, logged: int, val_logged: int, steps: int, val_steps: int) -> tuple[int, int]:
        """Log the history between the given lengths (taken by the training thread, between chunks):
        the training metrics as windowed means (`windowed_history`), the validations as they are."""
        from pipeline.windows import windowed_history

        log_steps(*windowed_history(result, logged, steps), self.run_id)
        log_steps(
            {
                "val_loss": result.val_loss[val_logged:val_steps],
                "val_accuracy": result.val_accuracy[val_logged:val_steps],
            },
            result.val_steps[val_logged:val_steps],
            self.run_id,
        )
        return steps, val_steps

    def _collect(self) -> bool:
        """Take in the outcome of the send in flight; False while it is still running."""
        if self._pending is None:
            return True
        if not self._pending.done():
            return False
        try:
            self.logged, self.val_logged = self._pending.result()
        except Exception as exc:
            if not self.warned:
                print(f"warning: MLflow logging failed ({exc}); training goes on, will retry", file=sys.stderr)
                self.warned = True
        self._pending = None
        return True

    def log(self, result: Any) -> None:
        """Send what is new since the last send, in the background; never waits for the store."""
        if self._collect():
            # the lengths are taken here, between chunks: the background thread would race the
            # training loop, which extends result.steps before result.loss
            lengths = len(result.steps), len(result.val_steps)
            self._pending = self._pool.submit(self._send, result, self.logged, self.val_logged, *lengths)

    def close(self, result: Any) -> None:
        """Wait for the send in flight, then send the rest here; raises when the store still fails."""
        if self._pending is not None:
            self._pending.exception()  # wait; a failure is retried below
            self._collect()
        self._pool.shutdown(wait=True)
        lengths = len(result.steps), len(result.val_steps)
        self.logged, self.val_logged = self._send(result, self.logged, self.val_logged, *lengths)
