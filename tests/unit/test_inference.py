"""The model as users call it (pipeline.inference.classifier) and what `predict` computes
(pipeline.prediction): image files read back to the exact pixels, every bad file's message, CSV rows."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, DataError
from pipeline.idx import write_idx
from pipeline.inference import classifier
from pipeline.prediction import (
    CSV_HEADER,
    csv_rows,
    file_format,
    load_classifier,
    pixel_values,
    predict_probabilities,
    read_images,
)
from pipeline.scaling import scale_pixels


def pixels(n: int = 3, shape: tuple[int, int] = (28, 28), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def network():
    """A small logits network (conv, dense) with non-trivial weights."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 5, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


# --- classifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["centered", "unit"])
def test_classifier_is_softmax_of_the_network_on_scaled_pixels(network, scaling):
    import keras

    raw = pixels(8)
    expected = keras.ops.convert_to_numpy(
        keras.ops.softmax(network(scale_pixels(raw, scaling)[..., np.newaxis], training=False))
    )
    model = classifier(network, scaling)
    got = model.predict(raw.astype(np.float32), verbose=0)  # N x 28 x 28, as image files hold them
    assert model.input_shape == (None, 28, 28)
    assert got.shape == (8, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer(f"scaling_{scaling}") is not None


def test_the_two_scalings_give_different_probabilities(network):
    raw = pixels(4).astype(np.float32)
    centered = classifier(network, "centered").predict(raw, verbose=0)
    unit = classifier(network, "unit").predict(raw, verbose=0)
    assert not np.allclose(centered, unit, atol=1e-4)


def test_classifier_rejects_an_unknown_scaling(network):
    with pytest.raises(ConfigError, match="data.scaling must be one of"):
        classifier(network, "standard")


# --- reading images: every format, exact pixels ---------------------------------------------------


def test_png_round_trips_exactly(tmp_path):
    image = pixels(1)[0]
    Image.fromarray(image, mode="L").save(tmp_path / "digit.png")
    got = read_images(tmp_path / "digit.png")
    assert got.dtype == np.uint8 and got.shape == (1, 28, 28)
    np.testing.assert_array_equal(got[0], image)


def test_a_colour_png_is_converted_to_grayscale(tmp_path):
    gray = pixels(1)[0]
    rgb = np.stack([gray, gray, gray], axis=-1)  # equal channels: luminance is the gray value itself
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_images(tmp_path / "rgb.png")[0], gray)
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red, mode="RGB").save(tmp_path / "red.png")
    assert set(np.unique(read_images(tmp_path / "red.png"))) == {76}  # ITU-R 601: 0.299 * 255


def test_jpeg_reads_close_to_the_original(tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 10:18] = 200  # a smooth shape: JPEG keeps it within a few grey levels on average
    Image.fromarray(image, mode="L").save(tmp_path / "digit.jpg", quality=95)
    got = read_images(tmp_path / "digit.jpg")
    assert got.shape == (1, 28, 28) and got.dtype == np.uint8
    assert np.abs(got[0].astype(int) - image).mean() < 3
    assert got[0, 14, 14] > 180 and got[0, 2, 2] < 20


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_images_round_trip_exactly(tmp_path, name):
    images = pixels(5)
    write_idx(tmp_path / name, images)
    got = read_images(tmp_path / name)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (pixels(4), pixels(4)),
        (pixels(1)[0], pixels(1)),  # a single 28 x 28 image
        (pixels(2)[..., np.newaxis], pixels(2)),  # N x 28 x 28 x 1, the model's own input shape
        (pixels(3).astype(np.int64), pixels(3)),
        (pixels(3).astype(np.float32), pixels(3)),
        (pixels(3).clip(0, 254) + 0.4, pixels(3).clip(0, 254)),  # floats are rounded to the nearest level
    ],
    ids=["uint8", "single", "channel", "int64", "float32", "float64-rounded"],
)
def test_npy_arrays_give_the_pixels(tmp_path, array, expected):
    np.save(tmp_path / "images.npy", array)
    got = read_images(tmp_path / "images.npy")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_the_format_comes_from_the_content_not_the_name(tmp_path):
    image = pixels(1)
    Image.fromarray(image[0]).save(tmp_path / "a.dat", format="PNG")
    np.save(tmp_path / "b.npy", image)
    (tmp_path / "b.npy").rename(tmp_path / "b.bin")
    write_idx(tmp_path / "c.gz", image)
    (tmp_path / "c.gz").rename(tmp_path / "c")
    for name in ("a.dat", "b.bin", "c"):
        np.testing.assert_array_equal(read_images(tmp_path / name), image, err_msg=name)
    assert file_format(Path("x.png"), b"\x89PNG\r\n\x1a\n") == "image"
    assert file_format(Path("x"), b"\xff\xd8\xff\xe0") == "image"
    assert file_format(Path("x.png"), b"\x93NUMPY\x01\x00") == "npy"
    assert file_format(Path("x"), b"\x00\x00\x08\x03\x00\x00") == "idx"
    assert file_format(Path("x.jpeg"), b"junk") == "image"  # unknown content: the name decides


def test_the_expected_size_is_an_argument(tmp_path):
    image = pixels(1, shape=(32, 20))
    Image.fromarray(image[0]).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_images(tmp_path / "wide.png", shape=(32, 20)), image)
    with pytest.raises(DataError, match=r"wide.png is 20x32; the model takes 28x28 grayscale"):
        read_images(tmp_path / "wide.png")


# --- reading images: every bad file says what is wrong and what to do -------------------------------


def _write(path: Path, what: str) -> None:
    """A bad input file of the kind `what`."""
    if what == "empty":
        path.write_bytes(b"")
    elif what == "text":
        path.write_text("hello, these are not pixels\n")
    elif what == "large-png":
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(path, format="PNG")
    elif what == "truncated-png":
        Image.fromarray(pixels(1)[0]).save(path, format="PNG")
        path.write_bytes(path.read_bytes()[:60])
    elif what == "gif":
        Image.fromarray(pixels(1)[0]).save(path, format="GIF")
    elif what == "16-bit-png":
        Image.fromarray(pixels(1)[0].astype(np.uint16) * 256).save(path, format="PNG")
    elif what == "labels-idx":
        write_idx(path, np.arange(10, dtype=np.uint8))
    elif what == "idx-32x32":
        write_idx(path, pixels(2, shape=(32, 32)))
    elif what == "corrupt-gz":
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40)[:20])
    elif what == "bad-idx-magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x07\x03" + b"\x00" * 40))
    elif what == "npy-shape":
        np.save(path, pixels(2, shape=(28, 27)))
    elif what == "npy-nan":
        np.save(path, np.full((1, 28, 28), np.nan, np.float32))
    elif what == "npy-range":
        np.save(path, pixels(1).astype(np.int16) * 2)
    elif what == "npy-negative":
        np.save(path, scale_pixels(pixels(1), "centered"))
    elif what == "npy-unit":
        np.save(path, scale_pixels(pixels(1), "unit"))
    elif what == "npy-object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif what == "npy-strings":
        np.save(path, np.full((1, 28, 28), "x"))
    elif what == "npy-empty":
        np.save(path, np.zeros((0, 28, 28), np.uint8))
    elif what == "npy-no-header":
        path.write_bytes(b"\x00\x01\x02\x03 not numpy")
    else:
        raise AssertionError(what)


BAD_INPUTS = {
    # kind: (file name, the message's pattern: the file, what is wrong, what to do)
    "empty": ("x.png", r"x\.png is empty \(0 bytes\): give PNG or JPEG images, \.npy arrays or IDX"),
    "text": ("notes.txt", r"notes\.txt is not a file the model can read: give PNG or JPEG images"),
    "large-png": ("photo.png", r"photo\.png is 640x480; the model takes 28x28 grayscale images: resize it first"),
    "truncated-png": ("cut.png", r"cut\.png is a damaged image .*: re-export it as PNG"),
    "gif": ("anim.png", r"anim\.png is a GIF image: convert it to PNG first"),
    "16-bit-png": ("deep.png", r"deep\.png has I;16 pixels \(16-bit or float\): save it as an 8-bit image"),
    "labels-idx": (
        "t10k-labels-idx1-ubyte",
        r"t10k-labels-idx1-ubyte is an IDX labels file \(10 labels\), not images: give the images file",
    ),
    "idx-32x32": ("big-idx3-ubyte", r"big-idx3-ubyte holds IDX data of shape 2x32x32; the model takes 28x28"),
    "corrupt-gz": ("a.gz", r"a\.gz: corrupt or truncated gzip data .*: give PNG or JPEG images"),
    "bad-idx-magic": ("b.gz", r"b\.gz: not an IDX file: wrong magic number"),
    "npy-shape": ("s.npy", r"s\.npy holds an array of shape \(2, 28, 27\); the model takes 28x28 grayscale .*resized"),
    "npy-nan": ("n.npy", r"n\.npy holds NaN or infinite values: save pixel values 0-255"),
    "npy-range": ("r.npy", r"r\.npy holds values from \d+ to \d+; the model takes raw pixel values 0-255"),
    "npy-negative": ("c.npy", r"c\.npy holds values from -0\.5 to .*raw pixel values 0-255 \(unscaled"),
    "npy-unit": ("u.npy", r"u\.npy holds values between 0 and 1: they look scaled; .*\(multiply by 255\)"),
    "npy-object": ("o.npy", r"o\.npy is not a \.npy array of numbers .*: save the pixels as a numeric array"),
    "npy-strings": ("t.npy", r"t\.npy holds <U1 values: save pixel values 0-255 as numbers"),
    "npy-empty": ("e.npy", r"e\.npy holds no images"),
    "npy-no-header": ("h.npy", r"h\.npy is not a \.npy file \(no NPY header\)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_each_bad_file_is_a_data_error_naming_it(tmp_path, kind):
    name, pattern = BAD_INPUTS[kind]
    _write(tmp_path / name, kind)
    with pytest.raises(DataError) as error:
        read_images(tmp_path / name)
    message = str(error.value)
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_a_missing_file_and_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.png: no such file"):
        read_images(tmp_path / "nothing.png")
    with pytest.raises(DataError, match=r"is a folder: give the image files in it"):
        read_images(tmp_path)


def test_an_unreadable_file(tmp_path, monkeypatch):
    # the error open() raises on a file without read permission, made here whoever runs the tests
    # (chmod 0 stops no one as root, and CI runs as root)
    import builtins

    from pipeline import prediction

    path = tmp_path / "secret.png"
    Image.fromarray(pixels(1)[0]).save(path)

    def unreadable(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(prediction, "open", unreadable, raising=False)
    with pytest.raises(DataError, match=r"cannot read .*secret\.png: Permission denied$"):
        read_images(path)


def test_pixel_values_keep_integers_and_round_floats():
    np.testing.assert_array_equal(pixel_values(np.array([0, 7, 255], np.int32), "a"), [0, 7, 255])
    np.testing.assert_array_equal(pixel_values(np.array([0.0, 1.0, 254.6]), "a"), [0, 1, 255])
    assert pixel_values(np.array([0.0, 1.0]), "a").dtype == np.uint8  # a binary image: not "scaled"
    with pytest.raises(DataError, match="a holds values from 0.0 to 255.5"):
        pixel_values(np.array([0.0, 255.5]), "a")


# --- probabilities and CSV rows ------------------------------------------------------------------


def test_predict_probabilities_are_the_classifiers_on_float_pixels(network):
    model = classifier(network, "centered")
    images = pixels(7)
    got = predict_probabilities(model, images, batch_size=3)
    expected = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert predict_probabilities(model, images[:0]).shape == (0, 10)


def test_predict_probabilities_of_a_model_logged_when_it_took_a_channel_axis(network):
    """Champions logged before the classifier took plain images want N x 28 x 28 x 1: predict still reads them."""
    import keras

    old = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255.0, offset=-0.5), network, keras.layers.Softmax()]
    )
    images = pixels(5)
    np.testing.assert_allclose(
        predict_probabilities(old, images), predict_probabilities(classifier(network, "centered"), images), rtol=1e-5
    )


def test_csv_rows_name_the_most_probable_class_and_its_probability():
    probabilities = np.array(
        [
            [0.05, 0.9, 0.05, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0.4, 0.6],
            [0.1234567, 0, 0, 0, 0, 0, 0, 0, 0, 0.1234566],
        ]
    )
    assert csv_rows("a.png", probabilities) == [
        ("a.png", 0, 1, "0.900000"),
        ("a.png", 1, 9, "0.600000"),
        ("a.png", 2, 0, "0.123457"),
    ]
    assert CSV_HEADER == ("source", "index", "predicted_class", "probability")
    assert csv_rows("a.png", np.zeros((0, 10))) == []


# --- loading a train stage's output folder --------------------------------------------------------


def _trained_folder(directory: Path, network, run: dict) -> Path:
    directory.mkdir(parents=True)
    network.save(directory / "model.keras")
    (directory / "run.json").write_text(json.dumps(run))
    return directory


@pytest.mark.parametrize("scaling", ["centered", "unit"])
def test_a_train_output_folder_loads_with_its_scaling(tmp_path, network, scaling):
    folder = _trained_folder(tmp_path / "seed-1", network, {"variant": "baseline", "data_scaling": scaling})
    model = load_classifier(str(folder))
    raw = pixels(5).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(raw, verbose=0), classifier(network, scaling).predict(raw, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_model_folders_that_cannot_be_used(tmp_path, network):
    old = _trained_folder(tmp_path / "old", network, {"variant": "baseline"})
    with pytest.raises(DataError, match=r"run\.json does not say the pixel scaling .*data_scaling.*rerun its train"):
        load_classifier(str(old))
    with pytest.raises(DataError, match=r"no model at .*nowhere: give models:/<name>@<alias>"):
        load_classifier(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds neither MLmodel nor model\.keras"):
        load_classifier(str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"model\.keras is a file: give its folder"):
        load_classifier(str(old / "model.keras"))
