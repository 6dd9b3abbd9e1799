"""The files stages hand to each other: prepared arrays, output folders written atomically, JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError


@dataclass(frozen=True)
class Prepared:
    """The prepare stage's output: splits scaled to [0, 1], plus what they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    dataset: str
    source_sha256: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_prepared(path: Path) -> Prepared:
    """Read data/prepared/<dataset>.npz (no pickle), its arrays memory-mapped: see `read_npz`."""
    try:
        npz = read_npz(path)
        return Prepared(
            **{key: npz[key] for key in ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")},
            classes=tuple(str(c) for c in npz["classes"]),
            dataset=str(npz["dataset"]),
            source_sha256=tuple(str(s) for s in npz["source_sha256"]),
        )
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)") from None
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a prepared dataset ({exc}): rerun `dvc repro prepare`") from None


READ_HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; those stored uncompressed (np.savez) are memory-mapped read-only.

    A stage then reads only the pages it uses (evaluate: the test split; train: the images its steps
    draw) straight from the page cache, instead of copying the whole file into fresh memory first.
    Compressed members are read normally. Object arrays are refused, as np.load(allow_pickle=False).
    """
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            version = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                header = raw.read(30)  # the local file header; its name and extra field lengths come last
                if header[:4] != b"PK\x03\x04":
                    raise ValueError(f"{info.filename}: bad zip member header")
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                raw.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(raw)
            if version not in READ_HEADER:  # compressed, or a format version we do not map
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            shape, fortran_order, dtype = READ_HEADER[version](raw)
            if dtype.hasobject:
                raise ValueError(f"{info.filename}: object arrays are not allowed (they need pickle)")
            if math.prod(shape) == 0:
                arrays[name] = np.empty(shape, dtype, order="F" if fortran_order else "C")
                continue
            arrays[name] = np.memmap(
                path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape, order="F" if fortran_order else "C"
            )
    return arrays


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces `final` only if the block completes.

    An interrupted or failed stage leaves no half-written output that DVC could mistake for a result.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):  # left by a killed (kill -9) earlier run
        shutil.rmtree(stale, ignore_errors=True)
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)


def json_safe(data: Any) -> Any:
    """NaN/inf are not JSON: null instead (DVC shows '-')."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): rerun the stage that writes it") from None


def write_trained(directory: Path, model: Any, result: Any, *, spec: dict, run: dict) -> None:
    """A train stage's outputs, all or nothing: model.keras, history.csv (every step),
    validation.csv, spec.json (the resolved variant) and run.json (timings, counts, run id)."""
    import pandas as pd

    with atomic_dir(directory) as out:
        model.save(out / "model.keras")
        pd.DataFrame({"step": result.steps, "loss": result.loss, "accuracy": result.accuracy}).to_csv(
            out / "history.csv", index=False
        )
        pd.DataFrame(
            {"step": result.val_steps, "val_loss": result.val_loss, "val_accuracy": result.val_accuracy}
        ).to_csv(out / "validation.csv", index=False)
        write_json(out / "spec.json", spec)
        write_json(out / "run.json", run)
