"""The dataset registry: each dataset's name, file names, pinned checksums, mirrors and classes,
and the check of a file against its pins.

Nothing here does I/O at import time.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

# The four files of an MNIST-style dataset, under their canonical names.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class PinnedFile:
    """A file and its pins: sha256 of the .gz bytes, and optionally of the decompressed IDX bytes.

    A file is accepted when either pin matches: re-packaged copies (e.g. Debian's) are re-gzipped,
    so their .gz bytes differ while the IDX content is identical.
    """

    name: str
    sha256: str
    content_sha256: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset as data.dataset names it: its four pinned files, default mirrors and class names
    (none for a custom dataset: class_names numbers them)."""

    name: str
    files: tuple[PinnedFile, ...]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]


# Pins. The .gz sha256 values are the ones torchvision and TensorFlow Datasets pin for the
# canonical releases (MNIST by LeCun & Cortes; Fashion-MNIST by Zalando Research). The
# content_sha256 values are sha256 of the decompressed IDX bytes (`zcat FILE | sha256sum`),
# computed from the byte-identical MNIST files in shared/data/mnist (train-images was not
# available offline, so its content pin is unknown) and from Debian's dataset-fashion-mnist
# package (/usr/share/datasets/fashion-mnist), whose .gz files are re-gzipped copies.
_MNIST = Dataset(
    name="mnist",
    files=(
        PinnedFile(
            IDX_FILES["train_images"],
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            None,
        ),
        PinnedFile(
            IDX_FILES["train_labels"],
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        PinnedFile(
            IDX_FILES["test_images"],
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        PinnedFile(
            IDX_FILES["test_labels"],
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    mirrors=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # CVDF, used by TensorFlow Datasets
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # used by torchvision
    ),
    classes=tuple(str(i) for i in range(10)),
)

_FASHION_MNIST = Dataset(
    name="fashion_mnist",
    files=(
        PinnedFile(
            IDX_FILES["train_images"],
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        PinnedFile(
            IDX_FILES["train_labels"],
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        PinnedFile(
            IDX_FILES["test_images"],
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        PinnedFile(
            IDX_FILES["test_labels"],
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (_MNIST, _FASHION_MNIST)}

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- registry ----------------------------------------------------------------------------


def resolve_dataset(name: str, sha256: Mapping[str, str] | None = None) -> Dataset:
    """A registered dataset by name, or a custom IDX dataset declared by its four .gz checksums."""
    sha256 = dict(sha256 or {})
    if name in DATASETS:
        if sha256:
            raise ConfigError(
                f"data.sha256: the checksums of the registered dataset {name!r} are pinned and cannot be "
                "overridden; remove data.sha256, or give your own dataset a new name under data.dataset"
            )
        return DATASETS[name]
    if not sha256:
        hint = difflib.get_close_matches(name, list(DATASETS), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(
            f"data.dataset: unknown dataset {name!r}{did_you_mean}; known: {', '.join(DATASETS)}; "
            "or declare your own IDX dataset's checksums under data.sha256"
        )
    if not _NAME_RE.match(name):
        raise ConfigError(f"data.dataset: {name!r} is not a usable dataset name: use letters, digits, '_', '-' or '.'")
    expected = list(IDX_FILES.values())
    missing = [f for f in expected if f not in sha256]
    extra = [f for f in sha256 if f not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown file name(s) {', '.join(map(str, extra))}")
        raise ConfigError(
            f"data.sha256: {'; '.join(parts)}; a custom dataset needs the sha256 of exactly these "
            f"four files: {', '.join(expected)}"
        )
    files = []
    for file_name in expected:
        digest = str(sha256[file_name]).strip().lower()
        if not _SHA256_RE.match(digest):
            raise ConfigError(f"data.sha256.{file_name}: {sha256[file_name]!r} is not a sha256 (64 hex digits)")
        files.append(PinnedFile(file_name, digest))
    return Dataset(name=name, files=tuple(files), mirrors=(), classes=())


def class_names(dataset: Dataset, *labels: np.ndarray) -> tuple[str, ...]:
    """The dataset's class names; for a custom dataset "0".."9" (or up to the largest label)."""
    if dataset.classes:
        return dataset.classes
    top = max((int(a.max()) for a in labels if a.size), default=9)
    return tuple(str(i) for i in range(max(10, top + 1)))


# --- checksums ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    import pooch  # lazily: keeps import of this module light

    return pooch.file_hash(str(path))


def _content_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's decompressed bytes; None if it is not a valid gzip file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def pin_mismatch(path: Path, pinned: PinnedFile) -> str | None:
    """None when the file matches one of its pins, else why not (the fetch stage's check)."""
    got = file_sha256(path)
    if got == pinned.sha256:
        return None
    if pinned.content_sha256 is not None and _content_sha256(path) == pinned.content_sha256:
        return None
    also = f" (or decompressed content {pinned.content_sha256})" if pinned.content_sha256 else ""
    return f"checksum mismatch: got {got} expected {pinned.sha256}{also}"
