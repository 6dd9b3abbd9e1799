"""prepare_arrays on generated raw files: shapes, scaling, a seeded disjoint split."""

from __future__ import annotations

import numpy as np
import pytest
from idx_server import make_idx_dataset

from pipeline.errors import ConfigError
from pipeline.preparation import prepare_arrays


@pytest.fixture
def raw(tmp_path):
    return make_idx_dataset(tmp_path / "raw" / "tiny", n_train=50, n_test=20)


def split(raw, validation_size=10, seed=0, scaling="unit"):
    a = raw["arrays"]
    return prepare_arrays(
        a["train_images"],
        a["train_labels"],
        a["test_images"],
        a["test_labels"],
        validation_size=validation_size,
        seed=seed,
        scaling=scaling,
    )


def rows(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images}


def test_shapes_dtypes_and_range(raw):
    out = split(raw)
    assert set(out) == {"x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"}
    assert out["x_train"].shape == (40, 28, 28, 1)
    assert out["x_valid"].shape == (10, 28, 28, 1)
    assert out["x_test"].shape == (20, 28, 28, 1)
    for key in ("x_train", "x_valid", "x_test"):
        assert out[key].dtype == np.float32
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    for key, n in (("y_train", 40), ("y_valid", 10), ("y_test", 20)):
        assert out[key].dtype == np.int32 and out[key].shape == (n,)
    # Scaling is k/255 exactly, labels unchanged.
    np.testing.assert_array_equal(out["x_test"][..., 0], raw["arrays"]["test_images"] / np.float32(255))
    np.testing.assert_array_equal(out["y_test"], raw["arrays"]["test_labels"])
    assert out["x_test"].max() == 1.0 and out["x_test"].min() == 0.0


def test_split_is_disjoint_and_complete_with_labels_kept(raw):
    out = split(raw, validation_size=15, seed=3)
    source = raw["arrays"]["train_images"].astype(np.float32) / 255
    train, valid = rows(out["x_train"]), rows(out["x_valid"])
    assert len(train) == 35 and len(valid) == 15  # unique images: no duplicates within a split
    assert not train & valid
    assert train | valid == rows(source[..., np.newaxis])
    # Each image keeps its own label.
    labels = raw["arrays"]["train_labels"]
    label_of = {img[..., np.newaxis].tobytes(): y for img, y in zip(source, labels, strict=True)}
    for x, y in zip(out["x_valid"], out["y_valid"], strict=True):
        assert label_of[x.tobytes()] == y


def test_split_is_deterministic_per_seed(raw):
    a, b, c = split(raw, seed=7), split(raw, seed=7), split(raw, seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert rows(a["x_valid"]) != rows(c["x_valid"])


def test_zero_validation_size(raw):
    out = split(raw, validation_size=0)
    assert out["x_valid"].shape == (0, 28, 28, 1) and out["x_valid"].dtype == np.float32
    assert out["y_valid"].shape == (0,) and out["y_valid"].dtype == np.int32
    assert out["x_train"].shape == (50, 28, 28, 1)


@pytest.mark.parametrize("size", [50, 51])
def test_validation_size_must_leave_training_rows(raw, size):
    with pytest.raises(ConfigError, match=rf"data.validation_size \({size}\).*smaller than the 50 training"):
        split(raw, validation_size=size)


def test_prepared_splits_follow_data_scaling(raw):
    unit, centered = split(raw, scaling="unit"), split(raw, scaling="centered")
    for key in ("x_train", "x_valid", "x_test"):
        np.testing.assert_allclose(centered[key], unit[key] - 0.5, atol=1e-7)
    assert centered["x_test"].min() == -0.5 and centered["x_test"].max() == 0.5
    for key in ("y_train", "y_valid", "y_test"):  # the split itself does not depend on the scaling
        np.testing.assert_array_equal(centered[key], unit[key])
