"""Turn raw IDX arrays into the train/valid/test splits a model trains on. Pure: no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.datasets import class_names
from pipeline.errors import ConfigError, DataError
from pipeline.prepared import Prepared
from pipeline.scaling import scale_pixels

if TYPE_CHECKING:
    from pipeline.data_config import DataConfig
    from pipeline.datasets import Dataset


def _images(images: np.ndarray, name: str, scaling: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{name}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
    return scale_pixels(images, scaling)[..., np.newaxis]


def _labels(labels: np.ndarray, images: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{name}: expected {len(images)} labels (one per image), got shape {labels.shape}")
    return labels.astype(np.int32)


def prepare_arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    validation_size: int,
    seed: int,
    scaling: str,
) -> dict[str, np.ndarray]:
    """Scale images to float32 (data.scaling: pipeline.scaling) shaped N x H x W x 1, labels to int32, and hold
    out a seeded random validation_size rows of the training set as the validation split.

    Rows keep their original order within each split; only membership depends on the seed.
    """
    n = len(train_images)
    if not 0 <= validation_size < n:
        raise ConfigError(
            f"data.validation_size ({validation_size}) must be at least 0 and smaller than the {n} training images"
        )
    x_train_all = _images(train_images, "train_images", scaling)
    y_train_all = _labels(train_labels, train_images, "train_labels")
    x_test = _images(test_images, "test_images", scaling)
    y_test = _labels(test_labels, test_images, "test_labels")
    if x_test.shape[1:] != x_train_all.shape[1:]:
        raise DataError(f"test images are {x_test.shape[1:3]}, training images {x_train_all.shape[1:3]}")
    order = np.random.default_rng(seed).permutation(n)
    valid_rows = np.sort(order[:validation_size])
    train_rows = np.sort(order[validation_size:])
    return {
        "x_train": x_train_all[train_rows],
        "y_train": y_train_all[train_rows],
        "x_valid": x_train_all[valid_rows],
        "y_valid": y_train_all[valid_rows],
        "x_test": x_test,
        "y_test": y_test,
    }


def prepare(
    dataset: Dataset,
    raw: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    source_sha256: tuple[str, ...],
    config: DataConfig,
) -> Prepared:
    """The prepared splits of a dataset from its four raw arrays (train images and labels, test
    images and labels), as configured by the data section of params.yaml."""
    arrays = prepare_arrays(
        *raw, validation_size=config.validation_size, seed=config.split_seed, scaling=config.scaling
    )
    return Prepared(
        **arrays,
        classes=class_names(dataset, raw[1], raw[3]),
        dataset=dataset.name,
        source_sha256=tuple(source_sha256),
        scaling=config.scaling,
    )
