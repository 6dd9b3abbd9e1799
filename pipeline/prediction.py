"""What `python -m pipeline predict` computes: images read from files, class probabilities, CSV rows.

Kept apart from pipeline.inference (the classifier the train stage logs) so that the train stage,
which imports that module, does not depend on the file readers here: editing them reruns no training.
Nothing here does I/O at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, TrackingError

IMAGE_SHAPE = (28, 28)  # height x width of the images the project's models take
CSV_HEADER = ("source", "index", "predicted_class", "probability")
SUPPORTED = "PNG or JPEG images, .npy arrays or IDX image files (.gz or raw)"

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"
_GZIP = b"\x1f\x8b"


def _size(shape: Sequence[int]) -> str:
    """(height, width) as the usual 'WIDTHxHEIGHT' of an image."""
    return f"{shape[1]}x{shape[0]}"


def file_format(path: Path, head: bytes) -> str:
    """'image', 'npy' or 'idx': by the file's first bytes, else by its name; DataError if neither says."""
    if head.startswith((_PNG, _JPEG)):
        return "image"
    if head.startswith(_NPY):
        return "npy"
    if head.startswith(_GZIP) or (len(head) >= 4 and head[:2] == b"\0\0"):
        return "idx"
    name = path.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        return "image"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".gz", ".idx", "-ubyte")):
        return "idx"
    raise DataError(f"{path} is not a file the model can read: give {SUPPORTED}")


def read_images(path: Path, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """The images in one file as uint8 pixels N x height x width, `shape` being (height, width).

    PNG and JPEG hold one image each (converted to grayscale); a .npy array holds N x H x W,
    N x H x W x 1 or a single H x W; an IDX file (gzipped or raw) holds N x H x W images. Pixel values must be 0-255.
    Any problem is a DataError that names the file, says what is wrong and what to do.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder: give the image files in it") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise DataError(f"{path} is empty (0 bytes): give {SUPPORTED}")
    reader = {"image": _read_picture, "npy": _read_npy, "idx": _read_idx}[file_format(path, head)]
    images = reader(path, shape)
    if len(images) == 0:
        raise DataError(f"{path} holds no images")
    return images


def _read_picture(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One PNG/JPEG image, converted to 8-bit grayscale, as 1 x H x W."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format not in ("PNG", "JPEG"):
                raise DataError(f"{path} is a {image.format} image: convert it to PNG first")
            if image.mode in ("I", "F") or image.mode.startswith("I;"):
                raise DataError(f"{path} has {image.mode} pixels (16-bit or float): save it as an 8-bit image")
            if (image.height, image.width) != tuple(shape):
                raise DataError(
                    f"{path} is {image.width}x{image.height}; the model takes {_size(shape)} grayscale images:"
                    " resize it first"
                )
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} is far too large ({exc}): resize it to {_size(shape)} first") from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not a PNG or JPEG image Pillow can read: re-export it as PNG") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DataError(f"{path} is a damaged image ({exc}): re-export it as PNG") from None
    return pixels[np.newaxis]


def _read_npy(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A .npy array of N x H x W (or N x H x W x 1, or one H x W) pixel values 0-255."""
    with open(path, "rb") as file:
        if not file.read(len(_NPY)) == _NPY:
            raise DataError(f"{path} is not a .npy file (no NPY header): save the images with np.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays (would need pickle), a bad header, a short file
        raise DataError(
            f"{path} is not a .npy array of numbers ({exc}): save the pixels as a numeric array, "
            "e.g. np.save(path, images.astype(np.uint8))"
        ) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is a damaged .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):  # np.load gives an NpzFile for .npz data
        raise DataError(f"{path} is not a single .npy array: save one array of images with np.save")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != tuple(shape):
        raise DataError(
            f"{path} holds an array of shape {array.shape}; the model takes {_size(shape)} grayscale images: "
            f"save N x {shape[0]} x {shape[1]} (or one {shape[0]} x {shape[1]}) pixel values, resized first"
        )
    return pixel_values(array, path)


def _read_idx(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An IDX image file (pipeline.idx.read_idx), N x H x W."""
    from pipeline.idx import read_idx

    try:
        array = read_idx(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except DataError as exc:
        raise DataError(f"{exc}: give {SUPPORTED}") from None
    if array.ndim == 1:
        raise DataError(
            f"{path} is an IDX labels file ({len(array)} labels), not images: "
            "give the images file (…-images-idx3-ubyte.gz)"
        )
    if array.ndim != 3 or array.shape[1:] != tuple(shape):
        raise DataError(
            f"{path} holds IDX data of shape {'x'.join(map(str, array.shape))}; the model takes "
            f"{_size(shape)} grayscale images (IDX images are N x {shape[0]} x {shape[1]})"
        )
    return pixel_values(array, path)


def pixel_values(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Numbers that must be pixel values 0-255 as uint8: integers as they are, floats rounded.

    NaN, infinities, values outside 0-255 and floats that look already scaled to [0, 1] are errors.
    """
    if array.dtype.kind not in "iuf":
        raise DataError(f"{path} holds {array.dtype} values: save pixel values 0-255 as numbers (uint8)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{path} holds NaN or infinite values: save pixel values 0-255")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise DataError(
            f"{path} holds values from {low} to {high}; the model takes raw pixel values 0-255 "
            "(unscaled, as in an 8-bit image)"
        )
    if array.dtype.kind == "f":
        if high <= 1 and not np.equal(np.mod(array, 1), 0).all():
            raise DataError(
                f"{path} holds values between 0 and 1: they look scaled; the model takes raw pixel "
                "values 0-255 (multiply by 255)"
            )
        array = np.rint(array)
    return array.astype(np.uint8)


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities N x classes of a classifier (pipeline.inference) for uint8 images N x H x W."""
    if len(images) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    pixels = np.asarray(images, dtype=np.float32)
    if len(model.input_shape) == pixels.ndim + 1:  # a model logged before it took plain images
        pixels = pixels[..., np.newaxis]
    return np.asarray(model.predict(pixels, batch_size=batch_size, verbose=0), dtype=np.float32)


def csv_rows(source: str, probabilities: np.ndarray) -> list[tuple[str, int, int, str]]:
    """One CSV row per image (CSV_HEADER): its file, its index in that file, the most probable class
    (0-9) and that class's probability with 6 decimals."""
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    return [(source, i, int(k), f"{float(probabilities[i, k]):.6f}") for i, k in enumerate(predicted)]


# --- the model ------------------------------------------------------------------------------

MODEL_FORMS = (
    "models:/<name>@<alias> (e.g. models:/deconvolution-baseline@champion), runs:/<run_id>/<name>, "
    "an MLflow model folder (it holds MLmodel) or a train output folder models/<variant>/seed-<n>"
)


def load_classifier(model: str) -> Any:
    """The classifier (raw pixels 0-255 in, probabilities out) that `model` names: an MLflow model URI,
    an MLflow model folder, or a train stage's output folder (model.keras wrapped with run.json's
    data_scaling by pipeline.inference.classifier). Errors are UserErrors naming what to fix."""
    from urllib.parse import urlparse

    if len(urlparse(model).scheme) > 1:  # models:/, runs:/, file:, ... (not a Windows drive letter)
        return _load_mlflow_model(model, from_store=True)
    folder = Path(model)
    if not folder.exists():
        raise DataError(f"no model at {model}: give {MODEL_FORMS}")
    if not folder.is_dir():
        raise DataError(f"{model} is a file: give its folder, or {MODEL_FORMS}")
    if (folder / "MLmodel").is_file():
        return _load_mlflow_model(str(folder), from_store=False)
    if (folder / "model.keras").is_file():
        return _load_trained_folder(folder)
    raise DataError(f"{model} holds neither MLmodel nor model.keras: give {MODEL_FORMS}")


def _load_trained_folder(folder: Path) -> Any:
    """models/<variant>/seed-<n>: the logits network with the scaling it was trained with."""
    from pipeline import artifacts
    from pipeline.inference import classifier

    run = artifacts.read_json(folder / "run.json")
    scaling = run.get("data_scaling") if isinstance(run, dict) else None
    if scaling is None:
        raise DataError(
            f"{folder / 'run.json'} does not say the pixel scaling the model was trained with (data_scaling):"
            " rerun its train stage (dvc repro), or use the model logged to MLflow (models:/...)"
        )
    try:
        network = artifacts.load_model(folder)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load {folder / 'model.keras'} ({exc}): rerun its train stage (dvc repro)") from None
    return classifier(network, scaling)


def _load_mlflow_model(uri: str, *, from_store: bool) -> Any:
    """mlflow.keras.load_model, with the project's tracking store for models:/ and runs:/ URIs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    store = ""
    if from_store:
        store = tracking.tracking_uri()
        tracking.check_reachable(store)
        if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
            raise TrackingError(
                f"there is no MLflow store at {store}: run the pipeline first (make run), run this from the "
                "project folder, or set MLFLOW_TRACKING_URI to the store that holds the model"
            )
        mlflow.set_tracking_uri(store)
    try:
        return mlflow.keras.load_model(uri)
    except MlflowException as exc:
        reason = exc.message.strip().splitlines()[0].rstrip(".") if exc.message.strip() else type(exc).__name__
        if not from_store:
            raise DataError(f"cannot load the MLflow model in {uri}: {reason}") from None
        raise TrackingError(
            f"cannot load the model {uri} in the MLflow store at {store}: {reason}. The registered models and their"
            " aliases are in the MLflow UI (make ui, Models); MLFLOW_TRACKING_URI chooses the store"
        ) from None
    except KeyError as exc:  # the MLmodel file has no keras flavor
        raise DataError(f"{uri} is not a Keras model logged with mlflow.keras (no {exc} flavor)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the model {uri}: {exc}") from None
