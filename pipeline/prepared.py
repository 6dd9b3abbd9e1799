"""The prepared-data format: what the prepare stage writes and every later stage reads.

A folder with one NumPy .npy file per array (x_train, y_train, x_valid, y_valid, x_test, y_test)
and meta.json (dataset, classes, the raw files' SHA-256, the pixel scaling). Saved atomically (the folder appears
whole or not at all); loaded memory-mapped with np.load(mmap_mode="r"), so a stage reads only the
pages it uses straight from the page cache (evaluate: the test split), and no pickle is allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_dir
from pipeline.errors import DataError

ARRAYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")
META = "meta.json"


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


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
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DataError(f"{directory} is not a prepared dataset ({exc}): rerun `dvc repro prepare`") from None
