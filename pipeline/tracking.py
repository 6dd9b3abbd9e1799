"""Everything MLflow: where the store is, run names and tags, what gets logged."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.prepared import Prepared

from pipeline.errors import TrackingError
from pipeline.paths import run_name  # noqa: F401  (a run's one name; re-exported for callers of tracking)

EXPERIMENT_NAME = "deconvolution"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# dvc exp run --temp / --queue run the pipeline in a copy of the repo under this folder
_DVC_EXP_TMP = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root(start: Path | None = None) -> Path:
    """The user's project folder, also when DVC runs us in a temporary copy of it.

    Runs from `dvc exp run --temp/--queue` must land in the same store as `dvc repro`. DVC sets
    DVC_ROOT to the user's repository for every stage command, temporary copies included; without it
    (a stage run by hand), a path inside <root>/.dvc/tmp/exps/ maps back to <root>.
    """
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    path = (start or Path.cwd()).resolve()
    text = str(path) + os.sep
    if _DVC_EXP_TMP in text:
        return Path(text.split(_DVC_EXP_TMP, 1)[0])
    return path


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store in the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root(root) / STORE_FILE}"


def use_scratch_store() -> None:
    """Send this process's logging to a throwaway store: for the non-chief workers of a
    multi-worker run, which train in lockstep with the chief but must not log the run twice."""
    import tempfile

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='mlflow-worker-')}/scratch.db"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise TrackingError(
                f"the MLflow tracking server at {uri} answered HTTP {exc.code}: check the server's log,"
                " or unset MLFLOW_TRACKING_URI to use the embedded store"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start it (make server),"
            " fix MLFLOW_TRACKING_URI, or unset it to use the embedded store"
        ) from None


def connect(root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the experiment id."""
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    embedded = not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)  # note: this also sets MLFLOW_TRACKING_URI in os.environ
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    # parallel experiments (dvc queue start -j N) may open a new embedded store at the same moment:
    # one process creates its tables and the experiment, the others wait
    lock = FileLock(str(project_root(root) / f".{STORE_FILE}.lock")) if embedded else nullcontext()
    try:
        with lock:
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                # the embedded store keeps artifacts beside it, wherever DVC runs the stage
                location = (project_root(root) / ARTIFACTS_DIR).as_uri() if embedded else None
                try:
                    return mlflow.create_experiment(name, artifact_location=location)
                except MlflowException:
                    experiment = mlflow.get_experiment_by_name(name)  # created by another client meanwhile
                    if experiment is None:
                        raise
            return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"the MLflow store at {uri} cannot be used: {exc.message}") from None


def git_commit(cwd: Path | None = None) -> str:
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


def log_metrics(metrics: Mapping[str, float], attempts: int = 5) -> None:
    """mlflow.log_metrics on the active run, retried at a later millisecond on a key collision.

    Two experiments that re-evaluate the same trained run in parallel (a queued grid over
    `evaluate.*` params) log the same metric names to one run. The store's primary key for a logged
    model's metrics is (model, name, timestamp in ms, step, run), without the value, so two writers
    in the same millisecond collide and MLflow fails the whole batch ("duplicate key value violates
    unique constraint" on PostgreSQL, "UNIQUE constraint failed" on SQLite).
    """
    import time

    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_metrics(dict(metrics), timestamp=int(time.time() * 1000))
            return
        except MlflowException as exc:
            if "unique constraint" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.002 * (attempt + 1))


def log_steps(metrics: Mapping[str, list[float]], steps: list[int], run_id: str) -> None:
    """Log per-step series to a run in batches (one call per 1000 values), not one call per value."""
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    batch: list[Metric] = []
    for key, values in metrics.items():
        for step, value in zip(steps, values, strict=True):
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
        """Log the history between the given lengths (taken by the training thread, between chunks)."""
        log_steps(
            {"loss": result.loss[logged:steps], "accuracy": result.accuracy[logged:steps]},
            result.steps[logged:steps],
            self.run_id,
        )
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


def log_keras_model(model: Any, sample: Any) -> None:
    """Log the model with its input/output signature (pip requirements given, not inferred: faster)."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(sample, model(sample, training=False).numpy())
    mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
    )


# --- the runs the stages log ------------------------------------------------------------------

# run.json values logged as metrics at the end of training (val_accuracy is already a series)
TRAINING_METRICS = (
    "train_seconds",
    "trace_seconds",
    "validation_seconds",
    "train_images_per_second",
    "trainable_params",
    "flops_per_image",
    "peak_memory_mb",
)


class TrainingRun:
    """The MLflow run of one train stage while it trains: per-step metrics in the background
    (`log_steps`, a training progress callback), then the record and the model (`finish`)."""

    def __init__(self, run: Any, experiment_id: str, name: str) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        self.name = name
        self.diverged = False
        self._steps = StepLogger()

    def log_steps(self, result: Any) -> None:
        self._steps.log(result)

    def finish(self, model: Any, result: Any, record: Mapping[str, Any], model_dir: Path, sample: Any) -> None:
        """Log what is left once the trained model and run.json are on disk; a failure here is a
        TrackingError that says the results are safe."""
        import mlflow

        try:
            self._steps.close(result)
            log_metrics({k: v for k, v in record.items() if k in TRAINING_METRICS and v is not None})
            mlflow.log_artifact(str(model_dir / "spec.json"))
            log_keras_model(model, sample)
            if result.diverged_at is not None:
                mlflow.set_tag("diverged_at_step", result.diverged_at)
        except Exception as exc:
            raise TrackingError(
                f"{self.name}: training finished and its model and metrics are saved in {model_dir}, but logging"
                f" to MLflow failed ({exc}). Fix the tracking store and rerun `dvc repro`."
            ) from None
        self.diverged = result.diverged_at is not None


def training_params(variant: str, seed: int, params: Params) -> dict[str, Any]:
    """A training run's MLflow params: the same names as in params.yaml, plus variant, seed and layers."""
    from pipeline.models import summarize_layers

    return {
        "variant": variant,
        "seed": seed,
        "variant.layers": summarize_layers(params.variants[variant]),
        **flatten("data", params.data.model_dump(exclude={"mirrors", "sha256"})),
        **flatten("train", params.train.model_dump(exclude={"seeds"})),
    }


@contextmanager
def training_run(experiment_id: str, variant: str, seed: int, params: Params, data: Prepared) -> Iterator[TrainingRun]:
    """The MLflow run of train@<variant>-<seed>, named and tagged, with its params logged. It ends
    FINISHED, or FAILED for a diverged run (and on an error), or KILLED on Ctrl-C."""
    import mlflow

    name = run_name(variant, seed)
    tags = run_tags(
        variant=variant,
        seed=seed,
        stage=f"train@{variant}-{seed}",
        dataset=data.dataset,
        dataset_sha256=",".join(data.source_sha256),
    )
    with tracked_run(experiment_id, name=name, tags=tags) as run:
        mlflow.log_params(training_params(variant, seed, params))
        training = TrainingRun(run, experiment_id, name)
        yield training
        if training.diverged:
            mlflow.end_run("FAILED")


def log_evaluation(evaluation: Any, confusion_png: Path, *, batch_size: int) -> None:
    """An evaluate stage's test metrics, per-class accuracies and confusion matrix, into the active run."""
    import mlflow

    mlflow.log_artifact(str(confusion_png))
    log_metrics(
        {
            "test_accuracy": evaluation.test_accuracy,
            "test_loss": evaluation.test_loss,
            "inference_images_per_second": evaluation.images_per_second,
            **{f"test_accuracy.class_{i}": v for i, v in enumerate(evaluation.per_class_accuracy)},
        }
    )
    # a tag, not a param: re-evaluating the same trained run with another batch size must not conflict
    mlflow.set_tag("evaluate.batch_size", batch_size)


def log_summary_run(experiment_id: str, params: Params, metrics: Mapping, reports: Path, run_ids: list[str]) -> str:
    """The compare stage's `summary` run: the report as artifacts, its figures as metrics, and a
    `summary_run_id` tag on every run it summarizes. Returns its run id."""
    import mlflow

    from pipeline.artifacts import json_safe

    with tracked_run(experiment_id, name="summary", tags={"summary": "true", **context_tags()}) as run:
        mlflow.log_params(
            {"variants": ",".join(params.variants), "train.seeds": ",".join(map(str, params.train.seeds))}
        )
        mlflow.log_metrics(
            {f"{v}.{k}": x for v, m in json_safe(metrics).items() for k, x in m.items() if x is not None}
        )
        mlflow.log_artifacts(str(reports), artifact_path="reports")
        mlflow.set_tag("summary.runs", ",".join(run_ids))
        client = mlflow.MlflowClient()
        for run_id in run_ids:
            client.set_tag(run_id, "summary_run_id", run.info.run_id)
        return run.info.run_id
