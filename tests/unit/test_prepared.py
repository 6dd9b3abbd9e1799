"""The prepared-data format: saved atomically, loaded memory-mapped, equal to what was saved."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline import prepared
from pipeline.errors import DataError


def sample(n_valid: int = 3) -> prepared.Prepared:
    rng = np.random.default_rng(0)
    return prepared.Prepared(
        x_train=rng.random((7, 28, 28, 1), dtype=np.float32),
        y_train=np.arange(7, dtype=np.int32),
        x_valid=rng.random((n_valid, 28, 28, 1), dtype=np.float32),
        y_valid=np.arange(n_valid, dtype=np.int32),
        x_test=rng.random((4, 28, 28, 1), dtype=np.float32),
        y_test=np.array([3, 1, 0, 2], dtype=np.int32),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress"),
        dataset="fashion_mnist",
        source_sha256=("a" * 64, "b" * 64, "c" * 64, "d" * 64),
        scaling="centered",
    )


@pytest.mark.parametrize("n_valid", [3, 0])
def test_load_returns_what_save_wrote_memory_mapped(tmp_path: Path, n_valid: int):
    data = sample(n_valid)
    prepared.save(tmp_path / "fashion_mnist", data)
    loaded = prepared.load(tmp_path / "fashion_mnist")
    for name in prepared.ARRAYS:
        expected, got = getattr(data, name), getattr(loaded, name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected)
    assert (loaded.classes, loaded.dataset, loaded.source_sha256, loaded.scaling) == (
        data.classes,
        data.dataset,
        data.source_sha256,
        "centered",
    )
    assert loaded.input_shape == (28, 28, 1) and loaded.num_classes == 4
    # each split's SHA-256 is of its images' then its labels' bytes, as MLflow's dataset digests show it
    for split, (x, y) in {
        "train": ("x_train", "y_train"),
        "validation": ("x_valid", "y_valid"),
        "test": ("x_test", "y_test"),
    }.items():
        expected_digest = hashlib.sha256(getattr(data, x).tobytes() + getattr(data, y).tobytes()).hexdigest()
        assert loaded.split_sha256[split] == expected_digest, split
    assert loaded.split_sha256["train"] != loaded.split_sha256["test"]
    assert isinstance(loaded.x_train, np.memmap) and not loaded.x_train.flags.writeable  # mapped, read-only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist"]  # no scratch folder left


def test_an_interrupted_save_keeps_the_previous_folder(tmp_path: Path, monkeypatch):
    prepared.save(tmp_path / "d", sample())
    broken = sample()
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepared.save(tmp_path / "d", broken)
    monkeypatch.undo()
    np.testing.assert_array_equal(prepared.load(tmp_path / "d").x_test, sample().x_test)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_object_arrays_are_refused(tmp_path: Path):
    prepared.save(tmp_path / "d", sample())
    np.save(tmp_path / "d" / "y_test.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="is not a prepared dataset.*rerun `dvc repro prepare`"):
        prepared.load(tmp_path / "d")


def test_a_truncated_array_is_a_clear_data_error(tmp_path: Path):
    prepared.save(tmp_path / "d", sample())
    path = tmp_path / "d" / "x_train.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="is not a prepared dataset.*rerun `dvc repro prepare`"):
        prepared.load(tmp_path / "d")


def test_missing_or_old_format_says_what_to_run(tmp_path: Path):
    with pytest.raises(DataError, match=r"not found: run the prepare stage first \(dvc repro prepare\)"):
        prepared.load(tmp_path / "mnist")
    np.savez(tmp_path / "mnist.npz", x=np.zeros(1))  # the format before pipeline.prepared
    with pytest.raises(DataError, match="is not a prepared dataset.*rerun `dvc repro prepare`"):
        prepared.load(tmp_path / "mnist")
