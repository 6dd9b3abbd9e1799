"""Test helpers: a small classifier that has learned, logged to a temporary MLflow store the way the
train stage logs one, and registered the way the compare stage registers a variant (alias champion)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

NAME = "deconvolution-baseline"  # the registered name the compare stage gives variant `baseline`
RUN_NAME = "baseline-seed1"
SCALINGS = ("centered", "unit")  # data.scaling's values: `train_network` learns under both


def learnable_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images N x 28 x 28 and labels: class k is a bright bar at rows 2k..2k+3 plus noise, so a
    small CNN learns it in seconds (the idea of tests/e2e/test_pipeline_e2e.py)."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2 : 2 * k + 6, 4:24] = 230
    return images, labels


def train_network(seed: int = 0, n: int = 1000) -> Any:
    """A logits network (conv, dense) trained for a few seconds on `learnable_images` in both of the
    pipeline's pixel scalings (`data.scaling`: centered and unit), so that it has learned under
    either: the predict tests use it centered, the serving tests unit (conftest's `learned_network`)."""
    import keras

    from pipeline.scaling import scale_pixels

    keras.utils.set_random_seed(seed)
    images, labels = learnable_images(n, np.random.default_rng(seed))
    network = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 5, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    network.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pixels = np.concatenate([scale_pixels(images, scaling) for scaling in SCALINGS])[..., np.newaxis]
    network.fit(pixels, np.concatenate([labels] * len(SCALINGS)), batch_size=32, epochs=2, verbose=0)
    return network


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """MLflow calls in this block go to the store at `uri`, and nowhere else after it."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


def log_champion(model: Any, artifacts: Path, scaling: str) -> str:
    """Log `model` (a pipeline.inference.classifier) to the current store, artifacts under `artifacts`
    (not MLflow's default, ./mlruns of the working directory), and register it as NAME with alias
    champion; returns the run id."""
    import mlflow
    from mlflow.models import infer_signature

    experiment = mlflow.create_experiment("deconvolution", artifact_location=Path(artifacts).as_uri())
    sample = np.zeros((2, 28, 28, 1), np.float32)
    with mlflow.start_run(experiment_id=experiment, run_name=RUN_NAME) as active:
        # no input_example: mlflow.keras.log_model fails with one in MLflow 3.17 (FileNotFoundError)
        info = mlflow.keras.log_model(
            model,
            name=RUN_NAME,
            signature=infer_signature(sample, model.predict(sample, verbose=0)),
            metadata={"data.scaling": scaling, "classes": [str(k) for k in range(10)]},
        )
    version = mlflow.register_model(info.model_uri, NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version.version)
    return active.info.run_id
