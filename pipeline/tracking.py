"""Everything MLflow: where the store is, run names and tags, what gets logged."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.models import LayerInfo
    from pipeline.prepared import Prepared

from pipeline.errors import TrackingError
from pipeline.paths import run_name  # noqa: F401  (a run's one name; re-exported for callers of tracking)

EXPERIMENT_NAME = "deconvolution"
# the compare stage's summary runs live in their own experiment, "<experiment>-reports": their
# per-variant figures would otherwise fill every metric picker and chart of the training runs
REPORTS_SUFFIX = "-reports"
# registered models: "deconvolution-<variant>", the best seed of the latest compare under CHAMPION
REGISTERED_PREFIX = "deconvolution-"
CHAMPION = "champion"
# the experiment type, as MLflow's UI offers it (Experiment type: custom model development). MLflow
# 3.17.2 does not use it to choose the landing page: that follows the link's workflowType
# (experiment_url, docs/ui.md)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
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
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store in the project root.

    A relative SQLite path (`sqlite:///mlflow.db`) is taken from the project root, not from wherever
    DVC runs the stage (a temporary copy under .dvc/tmp/exps), so it names the same store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root(root) / STORE_FILE}"
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        query = uri.partition("?")[1] + uri.partition("?")[2]
        return f"sqlite:///{project_root(root) / path}{query}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (as written: maybe relative); None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path else None


def artifacts_location(uri: str) -> Path | None:
    """Where a SQLite store's artifacts go: `mlartifacts/` beside its database file (for the
    project's store, beside mlflow.db), however the URI was given. None for a server, which decides."""
    path = sqlite_path(uri)
    return None if path is None else path.parent / ARTIFACTS_DIR


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


def connect(root: Path | None = None, *, reports: bool = False) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the experiment id.

    `reports`: the experiment of the compare stage's summary runs ("<experiment>-reports").
    """
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(root)
    artifacts = artifacts_location(uri)  # None: a server, which keeps artifacts where it is told
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)  # note: this also sets MLFLOW_TRACKING_URI in os.environ
    _system_metrics_defaults()
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME) + (REPORTS_SUFFIX if reports else "")
    # parallel experiments (dvc queue start -j N) may open a new SQLite store at the same moment:
    # one process creates its tables and the experiment, the others wait
    store = sqlite_path(uri)
    lock = FileLock(str(store.parent / f".{store.name}.lock")) if store is not None else nullcontext()
    try:
        with lock:
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                # a SQLite store keeps artifacts beside it (MLflow's default: ./mlruns of the
                # working directory, wherever DVC runs the stage)
                location = artifacts.as_uri() if artifacts is not None else None
                try:
                    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
                except MlflowException:
                    experiment = mlflow.get_experiment_by_name(name)  # created by another client meanwhile
                    if experiment is None:
                        raise
            for key, value in EXPERIMENT_KIND.items():
                if key not in experiment.tags:  # an experiment from an older version; a user's choice stays
                    mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"the MLflow store at {uri} cannot be used: {exc.message}") from None


def _system_metrics_defaults() -> None:
    """Opt-in system metrics (MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true): sampled every
    second and sent at once, so runs of a few seconds get some; MLflow's default waits 10 s."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("true", "1"):
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")


def experiment_url(ui: str, root: Path | None = None) -> str:
    """The link that opens the experiment's runs table in the MLflow UI at `ui`.

    MLflow 3.17's UI picks its pages (GenAI or model training) from the link's `workflowType`, else
    from what the browser last chose, else GenAI: a plain experiment link opens an empty traces
    page in a new browser, whatever the experiment's kind tag says (docs/ui.md).
    """
    import mlflow

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return ui  # no store yet: nothing to link to (and opening it would create one)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME))
    if experiment is None:
        return ui
    return f"{ui.rstrip('/')}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"


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
        from pipeline.training import windowed_history

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


def model_name(variant: str, seed: int) -> str:
    """A logged model's name: `<variant>-seed<n>` (MLflow's model names take no '/')."""
    return f"{variant}-seed{seed}"


def registered_name(variant: str) -> str:
    """The registry's name for a variant's champion model."""
    return f"{REGISTERED_PREFIX}{variant}"


class _KerasFlavor:
    """`mlflow.keras` as `Model.log` calls it (what `mlflow.keras.log_model` does), with mlflow#16183
    worked around: its save_model writes the input example before it creates the model folder."""

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(
    network: Any,
    sample_pixels: Any,
    *,
    name: str,
    scaling: str,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log the trained network as users call it (pipeline.inference.classifier: raw pixels 0-255 in,
    class probabilities out) with its signature and an input example of raw pixels. The signature
    takes images as files hold them, N x 28 x 28 (MLflow's tensor specs have a fixed rank, so it
    cannot take N x 28 x 28 x 1 as well); `sample_pixels` may have the channel axis or not. `step` is
    the step whose metrics MLflow links to the model: the last trained step, not 0. Returns the model
    id. (pip requirements given, not inferred: faster.)"""
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import Model, infer_signature

    from pipeline.inference import classifier

    model = classifier(network, scaling)
    sample_pixels = np.asarray(sample_pixels, np.float32)
    sample_pixels = sample_pixels.reshape((len(sample_pixels), *model.input_shape[1:]))
    signature = infer_signature(sample_pixels, model(sample_pixels, training=False).numpy())
    info = Model.log(
        artifact_path=None,
        name=name,
        flavor=_KerasFlavor,
        flavor_name="mlflow.keras",
        model=model,
        signature=signature,
        input_example=sample_pixels,
        step=step,
        metadata={"data.scaling": scaling, **(metadata or {})},
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        # MLflow would reload the saved model and predict the example (a second or so per stage, and
        # a TensorFlow error line on stderr); tests/e2e/test_serving.py serves the model for real
        validate_serving_input=False,
    )
    return info.model_id


def logged_model_id(run: Any) -> str | None:
    """The id of the model a training run (an MLflow Run, or its id) logged: its last, if it logged
    more than one."""
    import mlflow

    if isinstance(run, str):
        run = mlflow.MlflowClient().get_run(run)
    models = run.outputs.model_outputs if run.outputs else []
    return models[-1].model_id if models else None


def dataset(data: Prepared, split: str) -> Any:
    """One prepared split as an MLflow dataset: named `<dataset>-<split>`, its digest the split's
    SHA-256 (the first 36 hex digits: MLflow's limit for a digest; the whole is an input tag)."""
    import mlflow.data

    from pipeline.paths import prepared_dir
    from pipeline.prepared import SPLITS

    x, y = (getattr(data, name) for name in SPLITS[split])
    with warnings.catch_warnings():  # MLflow registers its local source class twice and says so
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways", category=UserWarning)
        return mlflow.data.from_numpy(
            x,
            targets=y,
            source=str(project_root() / prepared_dir(data.dataset)),
            name=f"{data.dataset}-{split}",
            digest=data.split_sha256[split][:36],
        )


# the context MLflow shows each split under
DATASET_CONTEXT = {"train": "training", "validation": "validation", "test": "testing"}


def log_dataset(data: Prepared, split: str) -> Any:
    """Log a split as an input of the active run; returns the dataset (metrics computed on it name
    it, so the logged model's page lists it under "Datasets used")."""
    import mlflow
    from mlflow.exceptions import MlflowException

    logged = dataset(data, split)
    try:
        mlflow.log_input(logged, context=DATASET_CONTEXT[split], tags={"sha256": data.split_sha256[split]})
    except MlflowException as exc:
        # runs logging one new dataset at once (grid workers, `dvc queue` on a server): one inserts it,
        # the others' inserts fail on its unique key; a second try finds it in place
        if "UNIQUE constraint" not in str(exc) and "duplicate key" not in str(exc):
            raise
        mlflow.log_input(logged, context=DATASET_CONTEXT[split], tags={"sha256": data.split_sha256[split]})
    return logged


# --- the runs the stages log ------------------------------------------------------------------

# run.json values logged as metrics at the end of training (val_accuracy is already a series)
TRAINING_METRICS = (
    "train_seconds",
    "trace_seconds",
    "validation_seconds",
    "train_images_per_second",
    "peak_memory_mb",
)
# the step of metrics with one value per run (TRAINING_METRICS, the test metrics). MLflow 3.17's chart
# view draws a metric as a line over steps if any run's latest value of it has a step >= 1, else as
# bars (one per run): at the last step they were one dot per run on a one-step axis (docs/ui.md).
# They reach the logged model by its id (`log_metrics(model_id=...)`), not by the model's step.
SINGLE_VALUE_STEP = 0


def final_step(record: Mapping[str, Any]) -> int:
    """The step a trained model's metrics are logged at: its last training step (run.json `steps`)."""
    return max(int(record["steps"]) - 1, 0)


class TrainingRun:
    """The MLflow run of one train stage while it trains: per-step metrics in the background
    (`log_steps`, a training progress callback), then the record and the model (`finish`)."""

    def __init__(self, run: Any, experiment_id: str, variant: str, seed: int) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        self.variant, self.seed = variant, seed
        self.name = run_name(variant, seed)
        self.diverged = False
        self.model_id: str | None = None
        self.step = 0
        self._steps = StepLogger()

    def log_steps(self, result: Any) -> None:
        self._steps.log(result)

    def finish(self, network: Any, result: Any, record: Mapping[str, Any], model_dir: Path, data: Prepared) -> None:
        """Log what is left once the trained model and run.json are on disk: the model, linked to the
        last step's metrics, then run.json's single values (at SINGLE_VALUE_STEP, linked to the model by
        its id); a failure here is a TrackingError that says the results are safe."""
        import mlflow

        from pipeline.scaling import pixels_from_scaled

        step = final_step(record)
        sample = data.x_valid[:2] if len(data.x_valid) else data.x_train[:2]
        try:
            self._steps.close(result)
            mlflow.log_artifact(str(model_dir / "spec.json"))
            mlflow.log_artifact(str(model_dir / "history.csv"))  # every step: MLflow's curves are windowed
            if result.diverged_at is not None:
                mlflow.set_tag("diverged_at_step", result.diverged_at)
            self.model_id = log_keras_model(
                network,
                pixels_from_scaled(sample, data.scaling),
                name=model_name(self.variant, self.seed),
                scaling=data.scaling,
                step=step,
                metadata={"variant": self.variant, "seed": self.seed, "classes": list(data.classes)},
            )
            log_metrics({k: record.get(k) for k in TRAINING_METRICS}, step=SINGLE_VALUE_STEP, model_id=self.model_id)
        except Exception as exc:
            raise TrackingError(
                f"{self.name}: training finished and its model and metrics are saved in {model_dir}, but logging"
                f" to MLflow failed ({exc}). Fix the tracking store and rerun `dvc repro`."
            ) from None
        self.diverged = result.diverged_at is not None
        self.step = step

    def log_evaluation(self, evaluation: Any, data: Prepared, confusion_png: Path, per_class: Any) -> None:
        """The test results into this run (still open: its end time is the end of its testing): the
        test split as a dataset of the run, the test metrics linked to it and to the logged model (at
        SINGLE_VALUE_STEP: bars in MLflow's chart view), the confusion matrix and per-class accuracies
        as artifacts (as metrics they were ten more rows in every metric picker)."""
        import mlflow

        try:
            test = log_dataset(data, "test")
            log_metrics(
                {
                    "test_accuracy": evaluation.test_accuracy,
                    "test_loss": evaluation.test_loss,
                    "inference_images_per_second": evaluation.images_per_second,
                },
                step=SINGLE_VALUE_STEP,
                model_id=self.model_id,
                dataset=test,
            )
            mlflow.log_artifact(str(confusion_png))
            mlflow.log_text(per_class.to_csv(index=False), "per_class_accuracy.csv")
        except Exception as exc:
            raise TrackingError(
                f"{self.name}: trained and tested, its files are saved, but logging its test results to MLflow"
                f" failed ({exc}). Fix the tracking store and rerun `dvc repro`."
            ) from None


def training_params(variant: str, seed: int, params: Params, layers: Sequence[LayerInfo]) -> dict[str, Any]:
    """A training run's MLflow params: the same names as in params.yaml, plus variant, seed, layers,
    the variant's size (trainable_params, flops_per_image) and evaluate.batch_size."""
    from pipeline.models import flops_per_image, summarize_layers, trainable_params

    spec = params.variants[variant]
    return {
        "variant": variant,
        "seed": seed,
        "variant.layers": summarize_layers(spec),
        "trainable_params": trainable_params(list(layers)),
        "flops_per_image": flops_per_image(list(layers)),
        **flatten("data", params.data.model_dump(exclude={"mirrors", "sha256"})),
        **flatten("train", params.train.model_dump(exclude={"seeds"})),
        **flatten("evaluate", params.evaluate.model_dump()),
    }


@contextmanager
def training_run(
    experiment_id: str,
    variant: str,
    seed: int,
    params: Params,
    data: Prepared,
    layers: Sequence[LayerInfo],
    *,
    tags: Mapping[str, str] | None = None,
    stage: str | None = None,
) -> Iterator[TrainingRun]:
    """The MLflow run of one seed of train@<variant> (or of `stage`), named and tagged (plus `tags`),
    with its params and its training and validation datasets logged. It ends when the block ends
    (after the seed's testing): FINISHED, or FAILED for a diverged run (and on an error), or KILLED
    on Ctrl-C."""
    import mlflow

    tags = run_tags(
        variant=variant,
        seed=seed,
        stage=stage or f"train@{variant}",
        dataset=data.dataset,
        dataset_sha256=",".join(data.source_sha256),
    ) | dict(tags or {})
    with tracked_run(experiment_id, name=run_name(variant, seed), tags=tags) as run:
        mlflow.log_params(training_params(variant, seed, params, layers))
        for split in ("train", "validation"):
            log_dataset(data, split)
        training = TrainingRun(run, experiment_id, variant, seed)
        yield training
        if training.diverged:
            mlflow.end_run("FAILED")


def log_summary_run(experiment_id: str, params: Params, metrics: Mapping, reports: Path, run_ids: list[str]) -> str:
    """The compare stage's `summary` run, in the reports experiment: the report as artifacts, its
    figures as metrics, and a `summary_run_id` tag on every run it summarizes. Returns its run id."""
    import mlflow

    from pipeline.artifacts import json_safe

    with tracked_run(experiment_id, name="summary", tags={"summary": "true", **context_tags()}) as run:
        mlflow.log_params(
            {"variants": ",".join(params.variants), "train.seeds": ",".join(map(str, params.train.seeds))}
        )
        log_metrics(_flat_metrics(json_safe(metrics)))
        mlflow.log_artifacts(str(reports), artifact_path="reports")
        mlflow.set_tag("summary.runs", ",".join(run_ids))
        client = mlflow.MlflowClient()
        for run_id in run_ids:
            client.set_tag(run_id, "summary_run_id", run.info.run_id)
        return run.info.run_id


def _flat_metrics(metrics: Mapping) -> dict[str, float]:
    """{'baseline': {'test_accuracy': 0.9}} -> {'baseline.test_accuracy': 0.9}; numbers only."""
    return {k: v for k, v in flatten("", metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}


# --- the registry -----------------------------------------------------------------------------


def champion(records: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """A variant's best run by final *validation* accuracy (never test), among the runs that trained;
    the lowest seed wins a tie. None when no run has a finite validation accuracy."""
    candidates = [
        r
        for r in records
        if r.get("diverged_at_step") is None and r.get("val_accuracy") is not None and math.isfinite(r["val_accuracy"])
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-r["val_accuracy"], r["seed"]))


def register_champion(variant: str, record: Mapping[str, Any], dataset_name: str) -> Any:
    """Register a variant's champion run's logged model as `deconvolution-<variant>` (a new version
    only if this model has none yet) and point the `champion` alias at it. Returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    name = registered_name(variant)
    training = client.get_run(record["run_id"])
    model_id = logged_model_id(training)
    if model_id is None:
        raise TrackingError(f"{run_name(variant, record['seed'])} has no logged model: rerun its train stage")
    versions = client.search_model_versions(f"name = '{name}'")  # none yet: an empty list
    existing = [v for v in versions if model_id in (v.model_id, v.source.removeprefix("models:/"))]
    if existing:
        version = existing[0]
    else:
        version = mlflow.register_model(
            f"models:/{model_id}",
            name,
            tags={
                "variant": variant,
                "seed": str(record["seed"]),
                "val_accuracy": str(record["val_accuracy"]),
                "dataset": dataset_name,
                "git.commit": training.data.tags.get("git.commit", "unknown"),
                "dvc.experiment": training.data.tags.get("dvc.experiment", "workspace"),
            },
        )
        client.update_registered_model(
            name, description=f"The {variant!r} variant: its best seed by validation accuracy, alias {CHAMPION!r}."
        )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version


def register_champions(records: list[Mapping[str, Any]], params: Params) -> dict[str, str]:
    """Register each variant's champion (see `champion`, `register_champion`); says what each got."""
    said = {}
    for variant in params.variants:
        best = champion([r for r in records if r["variant"] == variant])
        if best is None:
            said[variant] = "no run trained; nothing registered"
            continue
        version = register_champion(variant, best, params.data.dataset)
        said[variant] = f"version {version.version} ({run_name(variant, best['seed'])})"
    return said
