"""The prepared-data format: what the prepare stage writes and every later stage reads.

A folder with one NumPy .npy file per array (x_train, y_train, x_valid, y_valid, x_test, y_test)
and meta.json (dataset, classes, the raw files' SHA-256, the pixel scaling, each split's SHA-256).
Saved atomically (the folder appears whole or not at all); loaded memory-mapped with
np.load(mmap_mode="r"), so a stage reads only the pages it uses straight from the page cache
(evaluate: the test split), and no pickle is allowed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_dir
from pipeline.errors import DataError

ARRAYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")
META = "meta.json"
# a split's name (as MLflow's datasets and the reports say it) and its arrays
SPLITS = {"train": ("x_train", "y_train"), "validation": ("x_valid", "y_valid"), "test": ("x_test", "y_test")}


@dataclass(frozen=True)
class Prepared:
    """The prepared splits, images N x H x W x 1 float32 and labels int32, plus where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    dataset: str
    source_sha256: tuple[str, ...]
    scaling: str  # data.scaling the pixels were scaled with: "centered" or "unit"
    # SHA-256 of each split's arrays as saved (images then labels): {"train": ..., "validation": ..., "test": ...}
    split_sha256: Mapping[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def split_sha256(data: Prepared) -> dict[str, str]:
    """The SHA-256 of each split: its images' bytes then its labels' bytes, as saved (C order)."""
    digests = {}
    for split, names in SPLITS.items():
        digest = hashlib.sha256()
        for name in names:
            digest.update(np.ascontiguousarray(getattr(data, name)).tobytes())
        digests[split] = digest.hexdigest()
    return digests


def save(directory: Path, data: Prepared) -> None:
    """Write the folder atomically: an interrupted prepare leaves the previous one (or none)."""
    with atomic_dir(Path(directory)) as scratch:
        for name in ARRAYS:
            np.save(scratch / f"{name}.npy", np.ascontiguousarray(getattr(data, name)), allow_pickle=False)
        meta = {
            "dataset": data.dataset,
            "classes": list(data.classes),
            "source_sha256": list(data.source_sha256),
            "scaling": data.scaling,
            "split_sha256": split_sha256(data),
        }
        (scratch / META).write_text(json.dumps(meta, indent=2) + "\n")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # an empty array (data.validation_size: 0) cannot be mapped
        return np.load(path, allow_pickle=False)


def load(directory: Path) -> Prepared:
    """Read a prepared folder, its arrays memory-mapped read-only."""
    directory = Path(directory)
    if not (directory / META).is_file():
        if directory.exists() or directory.with_suffix(".npz").exists():
            raise DataError(f"{directory} is not a prepared dataset (no {META}): rerun `dvc repro prepare`")
        raise DataError(f"{directory} not found: run the prepare stage first (dvc repro prepare)")
    try:
        meta = json.loads((directory / META).read_text())
        return Prepared(
            **{name: _load_array(directory / f"{name}.npy") for name in ARRAYS},
            classes=tuple(str(c) for c in meta["classes"]),
            dataset=str(meta["dataset"]),
            source_sha256=tuple(str(s) for s in meta["source_sha256"]),
            scaling=str(meta["scaling"]),
            split_sha256={str(k): str(v) for k, v in meta["split_sha256"].items()},
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DataError(f"{directory} is not a prepared dataset ({exc}): rerun `dvc repro prepare`") from None


def in_memory(data: Prepared) -> Prepared:
    """The same splits as arrays in memory rather than memory maps (to send them to other processes)."""
    import dataclasses

    return dataclasses.replace(data, **{name: np.array(getattr(data, name)) for name in ARRAYS})
