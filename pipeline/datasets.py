"""The dataset registry (file names, checksums, mirrors), checksum-pinned download, IDX parsing.

Nothing here does I/O at import time. Files are only ever parsed as IDX (never unpickled).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse
from urllib.request import url2pathname

import numpy as np

from pipeline.errors import ConfigError, DataError, FetchError

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


def _check(path: Path, pinned: PinnedFile) -> str | None:
    """None when the file matches a pin, else why not."""
    got = file_sha256(path)
    if got == pinned.sha256:
        return None
    if pinned.content_sha256 is not None and _content_sha256(path) == pinned.content_sha256:
        return None
    also = f" (or decompressed content {pinned.content_sha256})" if pinned.content_sha256 else ""
    return f"checksum mismatch: got {got} expected {pinned.sha256}{also}"


# --- mirrors -----------------------------------------------------------------------------

_ACCEPTED = "an http:// or https:// base URL, a file:// URL of a directory, or a local directory path"

# Seconds to wait before retry n (1-based) of a transient failure; tests may lower it.
RETRY_BACKOFF_S = 0.5


@dataclass(frozen=True)
class _Mirror:
    label: str  # as the user wrote it
    url: str | None = None  # http(s) base URL
    directory: Path | None = None  # local directory


def _parse_mirror(mirror: str) -> _Mirror:
    text = str(mirror).strip()
    if not text:
        raise ConfigError(f"data.mirrors: an empty mirror; each must be {_ACCEPTED}")
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise ConfigError(f"data.mirrors: {text!r} has no host; each mirror must be {_ACCEPTED}")
        return _Mirror(text, url=text if text.endswith("/") else text + "/")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"data.mirrors: {text!r} names a remote host; use file:///absolute/path")
        directory = Path(url2pathname(unquote(parsed.path)))
    elif len(scheme) > 1:  # "ftp://", "s3://", ... (a one-letter scheme would be a Windows drive)
        raise ConfigError(f"data.mirrors: {text!r}: unsupported scheme {scheme!r}; each mirror must be {_ACCEPTED}")
    else:
        directory = Path(text).expanduser()
    directory = directory.resolve()
    if not directory.is_dir():
        raise ConfigError(
            f"data.mirrors: {text!r} is not an existing directory ({directory}); each mirror must be {_ACCEPTED}"
        )
    return _Mirror(text, directory=directory)


def _describe_http_error(exc: Exception, timeout: float) -> tuple[str, bool]:
    """A short reason for a failed HTTP download, and whether retrying may help."""
    import requests  # lazily: only needed when downloading

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        retry = status >= 500 or status in (408, 429)
        return f"HTTP {status}" + (f" {exc.response.reason}" if exc.response.reason else ""), retry
    if isinstance(exc, requests.TooManyRedirects):
        return "too many redirects", False
    if isinstance(exc, requests.Timeout):
        return f"timed out after {timeout:g}s", True
    text = str(exc)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in text:
        match = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
        if match:
            read, more = int(match[1]), int(match[2])
            return f"truncated: connection closed after {read} of {read + more} bytes", True
        return "truncated: connection closed before the whole file arrived", True
    if isinstance(exc, requests.ConnectionError):
        if "Read timed out" in text or "ReadTimeout" in text:
            return f"timed out after {timeout:g}s", True
        if "refused" in text.lower():
            return "connection refused", True
        if "resolve" in text.lower() or "Name or service not known" in text:
            return "could not resolve host", True
        return f"connection failed: {text}", True
    return f"{type(exc).__name__}: {exc}", False


def _download_http(url: str, target: Path, *, timeout: float, retries: int, progress: bool) -> tuple[str | None, int]:
    """Download url into target with pooch; (None, attempts) on success, (reason, attempts) on failure."""
    import pooch  # lazily: keeps import of this module light

    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    attempt = 0
    while True:
        attempt += 1
        try:
            downloader(url, str(target), None)
            return None, attempt
        except Exception as exc:  # noqa: BLE001 - classified below, never swallowed silently
            target.unlink(missing_ok=True)
            reason, retry = _describe_http_error(exc, timeout)
            if not retry or attempt > retries:
                if attempt > 1:
                    reason += f" (after {attempt} attempts)"
                return reason, attempt
            _say(f"  {reason}; retrying ({attempt}/{retries})")
            time.sleep(RETRY_BACKOFF_S * attempt)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_dataset(
    dataset: Dataset,
    mirrors: Sequence[str],
    dest: Path,
    *,
    timeout: float = 60.0,
    retries: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Make dest hold the dataset's four files, each verified against its pins.

    Files already in place that verify are kept. Others are fetched from the mirrors in order
    into dest/.partial/, verified, then moved into place, so a failed or interrupted download
    never leaves a file at the final name and never replaces a good one. Returns the paths,
    keyed like IDX_FILES.
    """
    dest = Path(dest)
    parsed = [_parse_mirror(m) for m in (mirrors or dataset.mirrors)]  # validate all before any I/O
    staging = dest / ".partial"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # debris from an earlier killed run
    keys = {name: key for key, name in IDX_FILES.items()}
    paths: dict[str, Path] = {}
    try:
        for pinned in dataset.files:
            final = dest / pinned.name
            paths[keys.get(pinned.name, pinned.name)] = final
            if final.is_file():
                problem = _check(final, pinned)
                if problem is None:
                    _say(f"{pinned.name}: already present, checksum verified")
                    continue
                _say(f"{pinned.name}: the file in place fails verification ({problem}); fetching again")
            if not parsed:
                raise ConfigError(
                    f"data.mirrors: dataset {dataset.name!r} has no default mirrors; list at least one "
                    f"under data.mirrors ({_ACCEPTED})"
                )
            staging.mkdir(exist_ok=True)
            _fetch_one(pinned, parsed, staging, final, timeout=timeout, retries=retries, progress=progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _fetch_one(
    pinned: PinnedFile,
    mirrors: list[_Mirror],
    staging: Path,
    final: Path,
    *,
    timeout: float,
    retries: int,
    progress: bool,
) -> None:
    failures: list[str] = []
    for mirror in mirrors:
        part = staging / pinned.name
        part.unlink(missing_ok=True)
        if mirror.url is not None:
            source = mirror.url + quote(pinned.name)
            _say(f"{pinned.name}: downloading {source}")
            reason, _ = _download_http(source, part, timeout=timeout, retries=retries, progress=progress)
        else:
            assert mirror.directory is not None
            source = str(mirror.directory / pinned.name)
            _say(f"{pinned.name}: copying {source}")
            reason = None
            try:
                shutil.copyfile(source, part)
            except FileNotFoundError:
                reason = "file not found"
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or exc}"
        if reason is None:
            reason = _check(part, pinned)
        if reason is None:
            size = part.stat().st_size
            os.replace(part, final)
            _say(f"{pinned.name}: ok, {size} bytes, checksum verified")
            return
        part.unlink(missing_ok=True)
        _say(f"{pinned.name}: failed from {mirror.label}: {reason}")
        failures.append(f"  - {mirror.label}: {reason}")
    raise FetchError(
        f"could not fetch {pinned.name}: every mirror failed:\n"
        + "\n".join(failures)
        + "\nCheck data.mirrors in params.yaml, or point it at a directory that holds the four files "
        f"({', '.join(IDX_FILES.values())})."
    )


# --- IDX files -----------------------------------------------------------------------------

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
