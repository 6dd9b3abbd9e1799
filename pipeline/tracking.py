"""The MLflow store: where it is (also from DVC's temporary copies of the project), connecting to it
(the experiment made if missing, a server that is down found before any training) and the link that
opens its runs in the MLflow UI."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path

from pipeline.errors import TrackingError

EXPERIMENT_NAME = "deconvolution"
# the compare stage's summary runs live in their own experiment, "<experiment>-reports": their
# per-variant figures would otherwise fill every metric picker and chart of the training runs
REPORTS_SUFFIX = "-reports"
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
