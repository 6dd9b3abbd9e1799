"""What a training run logs to MLflow: its params, its training and validation datasets, its
per-step metrics while it trains, then its model, its single values (run.json's timings) and its test
results; the run ends FINISHED, or FAILED for a diverged run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import TrackingError
from pipeline.paths import run_name
from pipeline.run_logging import StepLogger, flatten, log_metrics, run_tags, tracked_run
from pipeline.tracking import project_root

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.prepared import Prepared
    from pipeline.record import RunRecord


def model_name(variant: str, seed: int) -> str:
    """A logged model's name: `<variant>-seed<n>` (MLflow's model names take no '/')."""
    return f"{variant}-seed{seed}"


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


# the fields of run.json (pipeline.record.RunRecord) logged as metrics at the end of training
# (val_accuracy is already a series)
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


def final_step(record: RunRecord) -> int:
    """The step a trained model's metrics are logged at: its last training step."""
    return max(int(record.steps) - 1, 0)


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

    def finish(self, network: Any, result: Any, record: RunRecord, model_dir: Path, data: Prepared) -> None:
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
            singles = {name: getattr(record, name) for name in TRAINING_METRICS}
            log_metrics(singles, step=SINGLE_VALUE_STEP, model_id=self.model_id)
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


def training_params(
    variant: str, seed: int, params: Params, *, trainable_params: int, flops_per_image: int
) -> dict[str, Any]:
    """A training run's MLflow params: the same names as in params.yaml, plus variant, seed, layers,
    the variant's size (trainable_params, flops_per_image: counted once, by the caller, for run.json
    too) and evaluate.batch_size."""
    from pipeline.models import summarize_layers

    return {
        "variant": variant,
        "seed": seed,
        "variant.layers": summarize_layers(params.variants[variant]),
        "trainable_params": trainable_params,
        "flops_per_image": flops_per_image,
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
    *,
    trainable_params: int,
    flops_per_image: int,
    tags: Mapping[str, str] | None = None,
    stage: str | None = None,
) -> Iterator[TrainingRun]:
    """The MLflow run of one seed of train@<variant> (or of `stage`), named and tagged (plus `tags`),
    with its params (`training_params`) and its training and validation datasets logged. It ends when
    the block ends (after the seed's testing): FINISHED, or FAILED for a diverged run (and on an
    error), or KILLED on Ctrl-C."""
    import mlflow

    tags = run_tags(
        variant=variant,
        seed=seed,
        stage=stage or f"train@{variant}",
        dataset=data.dataset,
        dataset_sha256=",".join(data.source_sha256),
    ) | dict(tags or {})
    with tracked_run(experiment_id, name=run_name(variant, seed), tags=tags) as run:
        logged = training_params(
            variant, seed, params, trainable_params=trainable_params, flops_per_image=flops_per_image
        )
        mlflow.log_params(logged)
        for split in ("train", "validation"):
            log_dataset(data, split)
        training = TrainingRun(run, experiment_id, variant, seed)
        yield training
        if training.diverged:
            mlflow.end_run("FAILED")
