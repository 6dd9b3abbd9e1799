"""Reading the prepared arrays: memory-mapped .npz members, equal to what np.load reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import load_prepared, read_npz
from pipeline.errors import DataError

ARRAYS = {
    "images": np.random.default_rng(0).random((7, 28, 28, 1), dtype=np.float32),
    "labels": np.arange(7, dtype=np.int32),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "empty": np.zeros((0, 28, 28, 1), np.float32),
    "name": np.array("fashion_mnist"),
    "classes": np.array(["T-shirt/top", "Trouser"]),
}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_read_npz_equals_np_load(tmp_path: Path, save):
    path = tmp_path / "arrays.npz"
    save(path, **ARRAYS)
    arrays = read_npz(path)
    assert sorted(arrays) == sorted(ARRAYS)
    for name, expected in ARRAYS.items():
        assert arrays[name].dtype == expected.dtype, name
        assert arrays[name].shape == expected.shape, name
        np.testing.assert_array_equal(arrays[name], expected)
    if save is np.savez:  # uncompressed members are mapped, not read
        assert isinstance(arrays["images"], np.memmap)
        assert not arrays["images"].flags.writeable


def test_read_npz_refuses_object_arrays(tmp_path: Path):
    path = tmp_path / "objects.npz"
    np.savez(path, objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays are not allowed"):
        read_npz(path)


def test_a_truncated_prepared_file_is_a_clear_data_error(tmp_path: Path):
    path = tmp_path / "mnist.npz"
    np.savez(path, **ARRAYS)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="is not a prepared dataset.*rerun `dvc repro prepare`"):
        load_prepared(path)
