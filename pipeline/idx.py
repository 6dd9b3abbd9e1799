"""The IDX file format (gzipped or raw): read, write, and a dataset's four raw files read and
cross-checked. Files are only ever parsed as IDX, never unpickled."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.datasets import IDX_FILES
from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.datasets import Dataset

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) into an array in native byte order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (run the fetch stage first)") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    elif path.suffix == ".gz":
        raise DataError(f"{path}: not a gzip file (its name ends in .gz)")
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file: wrong magic number 0x{data[:4].hex()} "
            "(expected 0x0000TTNN, e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(data)} bytes, but dimensions {'x'.join(map(str, dims))} need {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array as an IDX file, gzipped (reproducibly, mtime 0) when the name ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    matches = [
        (code, dtype)
        for code, dtype in _IDX_DTYPES.items()
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize
    ]
    if not matches:
        raise ValueError(f"cannot write dtype {array.dtype} as IDX")
    code, dtype = matches[0]
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot write a {array.ndim}-d array as IDX")
    payload = (
        bytes([0, 0, code, array.ndim])
        + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        + np.ascontiguousarray(array, dtype=dtype).tobytes()
    )
    if path.suffix == ".gz":
        with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(payload)
    else:
        path.write_bytes(payload)


def load_raw(directory: Path, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check the four files: (train_images, train_labels, test_images, test_labels)."""
    directory = Path(directory)
    arrays = {key: read_idx(directory / name) for key, name in IDX_FILES.items()}
    shape = None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_file = directory / IDX_FILES[f"{split}_images"]
        label_file = directory / IDX_FILES[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{image_file}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(f"{label_file}: expected uint8 labels N, got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{label_file}: {len(labels)} labels, but {image_file} holds {len(images)} images")
        if shape is not None and images.shape[1:] != shape:
            raise DataError(
                f"{image_file}: images are {images.shape[1]}x{images.shape[2]}, "
                f"but the training images are {shape[0]}x{shape[1]}"
            )
        shape = images.shape[1:]
        if dataset.classes and labels.size and int(labels.max()) >= len(dataset.classes):
            raise DataError(
                f"{label_file}: label {int(labels.max())} out of range for {len(dataset.classes)} "
                f"classes of {dataset.name}"
            )
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
