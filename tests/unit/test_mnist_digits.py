"""scripts/mnist_digits.py on small synthetic t10k files: the split, reproducible bytes, the pin check, and
settings that DVC's -S parser and the fetch/prepare path accept. No test needs ../shared."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from support import ROOT

from pipeline.config import parse_params
from pipeline.datasets import IDX_FILES, PinnedFile, file_sha256, resolve_dataset
from pipeline.download import fetch_dataset
from pipeline.errors import DataError
from pipeline.idx import load_raw, read_idx, write_idx

_spec = importlib.util.spec_from_file_location("mnist_digits", ROOT / "scripts" / "mnist_digits.py")
mnist_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist_digits)

N, TEST = 50, 10


def synthetic_t10k(folder):
    """N 28x28 images whose every pixel is the image's index, labels index % 10; returns their pins."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None], (N, 28, 28)).copy()
    write_idx(folder / IDX_FILES["test_images"], images)
    write_idx(folder / IDX_FILES["test_labels"], (np.arange(N) % 10).astype(np.uint8))
    return {
        name: PinnedFile(name, file_sha256(folder / name))
        for name in (IDX_FILES["test_images"], IDX_FILES["test_labels"])
    }


def test_split_is_seeded_disjoint_complete_and_keeps_labels():
    images = np.arange(N, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    labels = (np.arange(N) % 10).astype(np.uint8)
    parts = mnist_digits.split(images, labels, seed=3, test_size=TEST)
    assert len(parts["train_images"]) == N - TEST and len(parts["test_images"]) == TEST
    train, test = parts["train_images"][:, 0, 0], parts["test_images"][:, 0, 0]
    assert not set(train) & set(test) and sorted([*train, *test]) == list(range(N))
    assert np.array_equal(parts["train_labels"], train % 10) and np.array_equal(parts["test_labels"], test % 10)
    again = mnist_digits.split(images, labels, seed=3, test_size=TEST)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = mnist_digits.split(images, labels, seed=4, test_size=TEST)
    assert not np.array_equal(other["test_images"], parts["test_images"])
    with pytest.raises(ValueError, match="test_size"):
        mnist_digits.split(images, labels, seed=0, test_size=N)


def test_the_defaults_are_the_issues_split():
    assert (mnist_digits.TEST_SIZE, mnist_digits.VALIDATION_SIZE) == (2_000, 1_000)
    assert set(mnist_digits.mnist_pins()) == {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert mnist_digits.SOURCE.as_posix() == "../shared/data/mnist"


def test_build_writes_the_four_canonical_files_reproducibly(tmp_path):
    pins = synthetic_t10k(tmp_path / "src")
    sha256 = mnist_digits.build(tmp_path / "src", tmp_path / "out", seed=0, test_size=TEST, pins=pins)
    assert list(sha256) == list(IDX_FILES.values())
    for name, digest in sha256.items():
        assert file_sha256(tmp_path / "out" / name) == digest
    assert (tmp_path / "out" / ".gitignore").read_text().splitlines()[-1] == "*"
    train_images, train_labels, test_images, test_labels = (
        read_idx(tmp_path / "out" / IDX_FILES[k])
        for k in ("train_images", "train_labels", "test_images", "test_labels")
    )
    assert train_images.shape == (N - TEST, 28, 28) and test_images.shape == (TEST, 28, 28)
    assert np.array_equal(train_images[:, 0, 0] % 10, train_labels)
    assert np.array_equal(test_images[:, 0, 0] % 10, test_labels)
    # the same seed gives the same bytes (gzip mtime 0), another seed other bytes
    assert mnist_digits.build(tmp_path / "src", tmp_path / "again", seed=0, test_size=TEST, pins=pins) == sha256
    other = mnist_digits.build(tmp_path / "src", tmp_path / "other", seed=1, test_size=TEST, pins=pins)
    assert other[IDX_FILES["test_images"]] != sha256[IDX_FILES["test_images"]]


def test_the_printed_settings_work_through_dvc_s_and_the_custom_dataset_path(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser  # what `dvc exp run -S` parses with

    pins = synthetic_t10k(tmp_path / "src")
    sha256 = mnist_digits.build(tmp_path / "src", tmp_path / "out", seed=0, test_size=TEST, pins=pins)
    overrides = OverridesParser.create().parse_overrides(mnist_digits.settings(tmp_path / "out", sha256))
    data = {o.key_or_group.split(".", 1)[1]: o.value() for o in overrides}
    assert data == {
        "dataset": "mnist_t10k_split",
        "mirrors": [str((tmp_path / "out").resolve())],
        "sha256": sha256,
        "validation_size": 1000,
    }
    config = parse_params({"data": data, "variants": {"v": {"layers": [{"type": "flatten"}]}}}).data
    dataset = resolve_dataset(config.dataset, config.sha256)
    fetched = fetch_dataset(dataset, config.mirrors, tmp_path / "raw", progress=False)
    assert set(fetched) == set(IDX_FILES)
    train_images, _, test_images, _ = load_raw(tmp_path / "raw", dataset)
    assert (len(train_images), len(test_images)) == (N - TEST, TEST)


def test_files_that_are_not_the_canonical_mnist_ones_are_refused(tmp_path, capsys):
    synthetic_t10k(tmp_path / "src")  # checked against the real MNIST pins: they cannot match
    with pytest.raises(DataError, match="checksum mismatch.*not the canonical MNIST file"):
        mnist_digits.build(tmp_path / "src", tmp_path / "out")
    assert mnist_digits.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "out" / IDX_FILES["train_images"]).exists()
    assert mnist_digits.main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "not found; --source must hold t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz" in (
        capsys.readouterr().err
    )
