"""The dataset registry, IDX parsing and the real MNIST / Fashion-MNIST pins."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from idx_server import make_idx_dataset
from support import SHARED

from pipeline.datasets import DATASETS, IDX_FILES, class_names, file_sha256, resolve_dataset
from pipeline.errors import ConfigError, DataError
from pipeline.idx import load_raw, read_idx, write_idx

REAL_MNIST = SHARED / "data" / "mnist"
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --- IDX files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trip_images(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    raw = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == (7).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte.gz", "labels-idx1-ubyte"])
def test_idx_round_trip_labels(tmp_path, name):
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8)
    write_idx(tmp_path / name, labels)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)


def test_idx_round_trip_other_dtypes(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=np.float32)
    write_idx(tmp_path / "f.idx", values)
    back = read_idx(tmp_path / "f.idx")
    assert back.dtype == np.float32 and back.dtype.isnative
    np.testing.assert_array_equal(back, values)


def test_gz_is_reproducible(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", labels)
    write_idx(tmp_path / "b.gz", labels)
    assert file_sha256(tmp_path / "a.gz") == file_sha256(tmp_path / "b.gz")


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=re.escape(f"{path}: not an IDX file: wrong magic number 0x12340801")):
        read_idx(path)


@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_names_the_file(tmp_path, cut):
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(
        DataError, match=re.escape(f"{path}: truncated: {16 + 5 * 784 - cut} bytes, but dimensions 5x28x28")
    ):
        read_idx(path)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    write_idx(path, np.arange(200, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: corrupt or truncated gzip"):
        read_idx(path)


def test_not_gzip_names_the_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: not a gzip file"):
        read_idx(path)


def test_load_raw_returns_the_four_arrays(tmp_path):
    source = make_idx_dataset(tmp_path, n_train=30, n_test=12)
    dataset = resolve_dataset("tiny", source["sha256"])
    arrays = load_raw(tmp_path, dataset)
    for got, key in zip(arrays, IDX_FILES, strict=True):
        np.testing.assert_array_equal(got, source["arrays"][key])
        assert got.dtype == np.uint8


def test_load_raw_mismatched_counts_names_the_file(tmp_path):
    source = make_idx_dataset(tmp_path, n_train=30, n_test=12)
    write_idx(tmp_path / IDX_FILES["test_labels"], np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: 11 labels, but .*t10k-images.* 12 images"):
        load_raw(tmp_path, resolve_dataset("tiny", source["sha256"]))


def test_load_raw_rejects_labels_as_images(tmp_path):
    make_idx_dataset(tmp_path, n_train=30, n_test=12)
    write_idx(tmp_path / IDX_FILES["train_images"], np.zeros(30, dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected uint8 images N x H x W"):
        load_raw(tmp_path, DATASETS["mnist"])


def test_load_raw_label_out_of_range_for_registered_classes(tmp_path):
    make_idx_dataset(tmp_path, n_train=30, n_test=12)
    write_idx(tmp_path / IDX_FILES["test_labels"], np.full(12, 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 out of range for 10 classes"):
        load_raw(tmp_path, DATASETS["mnist"])


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_files_and_classes():
    assert list(DATASETS) == ["mnist", "fashion_mnist"]
    for dataset in DATASETS.values():
        assert [f.name for f in dataset.files] == list(IDX_FILES.values())
        assert all(len(f.sha256) == 64 for f in dataset.files)
        assert len(dataset.classes) == 10
    assert DATASETS["mnist"].classes == tuple("0123456789")
    assert DATASETS["mnist"].mirrors[0] == "https://storage.googleapis.com/cvdf-datasets/mnist/"
    assert DATASETS["fashion_mnist"].classes[0] == "T-shirt/top"
    assert DATASETS["fashion_mnist"].classes[-1] == "Ankle boot"


def test_resolve_registered():
    assert resolve_dataset("mnist") is DATASETS["mnist"]
    assert resolve_dataset("fashion_mnist", {}) is DATASETS["fashion_mnist"]


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(ConfigError) as info:
        resolve_dataset("minst")
    assert str(info.value) == (
        "data.dataset: unknown dataset 'minst' (did you mean 'mnist'?); known: mnist, fashion_mnist; "
        "or declare your own IDX dataset's checksums under data.sha256"
    )
    with pytest.raises(ConfigError, match=r"did you mean 'fashion_mnist'"):
        resolve_dataset("fashion-mnist")


def test_registered_pins_are_not_overridable():
    with pytest.raises(ConfigError, match=r"data.sha256: .*'mnist' are pinned and cannot be overridden"):
        resolve_dataset("mnist", {name: "0" * 64 for name in IDX_FILES.values()})


def test_custom_dataset_from_checksums():
    sha = {name: f"{i:064x}" for i, name in enumerate(IDX_FILES.values())}
    dataset = resolve_dataset("my_digits", sha)
    assert dataset.name == "my_digits" and dataset.mirrors == () and dataset.classes == ()
    assert [(f.name, f.sha256, f.content_sha256) for f in dataset.files] == [
        (name, sha[name], None) for name in IDX_FILES.values()
    ]
    assert class_names(dataset, np.array([0, 3], dtype=np.uint8)) == tuple("0123456789")
    assert class_names(dataset, np.array([11], dtype=np.uint8))[-1] == "11"


def test_custom_dataset_missing_and_extra_files():
    sha = {name: "a" * 64 for name in list(IDX_FILES.values())[:3]}
    sha["train-images.gz"] = "b" * 64
    with pytest.raises(ConfigError) as info:
        resolve_dataset("mine", sha)
    message = str(info.value)
    assert message.startswith("data.sha256: missing t10k-labels-idx1-ubyte.gz; unknown file name(s) train-images.gz")


def test_custom_dataset_bad_digest_and_bad_name():
    sha = {name: "a" * 64 for name in IDX_FILES.values()}
    with pytest.raises(ConfigError, match=r"data.sha256.t10k-labels-idx1-ubyte.gz: 'xyz' is not a sha256"):
        resolve_dataset("mine", {**sha, IDX_FILES["test_labels"]: "xyz"})
    with pytest.raises(ConfigError, match=r"not a usable dataset name"):
        resolve_dataset("../escape", sha)


# --- the real files, where this machine has them ------------------------------------------------


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"no real MNIST files at {REAL_MNIST}")
def test_real_mnist_matches_pins_and_parses():
    present = [f for f in DATASETS["mnist"].files if (REAL_MNIST / f.name).is_file()]
    assert present, "the shared MNIST directory holds none of the files"
    for pinned in present:
        path = REAL_MNIST / pinned.name
        assert file_sha256(path) == pinned.sha256, pinned.name
        content = read_idx(path)
        if pinned.content_sha256 is not None:
            import hashlib

            assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == pinned.content_sha256
        if "labels" in pinned.name:
            assert content.ndim == 1 and content.min() == 0 and content.max() == 9
            assert len(content) == (60000 if pinned.name.startswith("train") else 10000)
            assert set(np.unique(content)) == set(range(10))
        else:
            expected = (60000 if pinned.name.startswith("train") else 10000, 28, 28)
            assert content.shape == expected and content.dtype == np.uint8
            assert content.max() == 255 and content.min() == 0


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason=f"no Fashion-MNIST at {REAL_FASHION}")
def test_real_fashion_mnist_matches_content_pins(tmp_path):
    from pipeline.download import fetch_dataset

    dataset = DATASETS["fashion_mnist"]
    fetch_dataset(dataset, [str(REAL_FASHION)], tmp_path, progress=False)  # verifies each file
    train_x, train_y, test_x, test_y = load_raw(tmp_path, dataset)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
