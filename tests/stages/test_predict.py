"""`python -m pipeline predict` as a user runs it: a model logged to MLflow (registered, alias
champion) or left by the train stage, image files in, CSV out; bad input is one line on stderr."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from model_store import NAME, RUN_NAME, learnable_images, log_champion, tracking_store, train_network
from PIL import Image
from support import ROOT, clean_env, free_port, kill_group, run

from pipeline.idx import write_idx

TIMEOUT = 180


def predict_command(model: str, *files: Path | str, extra: Sequence[str] = ()) -> list[str]:
    """`python -m pipeline predict --model MODEL FILE...`, as a user types it."""
    return [sys.executable, "-m", "pipeline", "predict", "--model", model, *map(str, files), *extra]


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding a learned classifier as champion, that classifier's own probabilities for
    image files of every format, a train output folder of the same network and an MLflow model folder."""
    import mlflow

    from pipeline.inference import classifier

    root = tmp_path_factory.mktemp("predict")
    network = train_network("centered")
    model = classifier(network, "centered")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with tracking_store(uri):
        run_id = log_champion(model, root / "mlartifacts", "centered")
        copy = root / "mlflow-model"  # an MLflow model folder, as `mlflow artifacts download` leaves it
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(copy)))
    trained = root / "models" / "baseline" / "seed-1"  # what the train stage leaves
    trained.mkdir(parents=True)
    network.save(trained / "model.keras")
    (trained / "run.json").write_text(json.dumps({"variant": "baseline", "seed": 1, "data_scaling": "centered"}))
    assert (folder / "MLmodel").is_file()

    images, labels = learnable_images(12, np.random.default_rng(99))
    files = root / "images"
    files.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(files / f"digit-{i}.png")
    np.save(files / "batch.npy", images[3:8])
    write_idx(files / "more-images-idx3-ubyte.gz", images[8:])
    inputs = [
        files / "digit-0.png",
        files / "digit-1.png",
        files / "digit-2.png",
        files / "batch.npy",
        files / "more-images-idx3-ubyte.gz",
    ]
    probabilities = model.predict(images[..., np.newaxis].astype(np.float32), verbose=0)
    return {
        "root": root,
        "uri": uri,
        "run_id": run_id,
        "trained": trained,
        "folder": folder,
        "inputs": inputs,
        "sources": [str(inputs[0]), str(inputs[1]), str(inputs[2])] + [str(inputs[3])] * 5 + [str(inputs[4])] * 4,
        "indices": [0, 0, 0, 0, 1, 2, 3, 4, 0, 1, 2, 3],
        "labels": labels,
        "probabilities": probabilities,
    }


def model_argument(store: dict, form: str) -> str:
    return {
        "alias": f"models:/{NAME}@champion",
        "version": f"models:/{NAME}/1",
        "run": f"runs:/{store['run_id']}/{RUN_NAME}",
        "mlflow-folder": str(store["folder"]),
        "train-folder": str(store["trained"]),
    }[form]


@pytest.mark.parametrize("form", ["alias", "version", "run", "mlflow-folder", "train-folder"])
def test_predictions_are_the_models_own_for_every_model_form_and_file_format(store, form):
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=store["uri"])
    if form == "alias":
        del env["MLFLOW_TRACKING_URI"]  # without it: the project's mlflow.db, in the folder it runs in
    result = run(
        predict_command(model_argument(store, form), *store["inputs"]), cwd=store["root"], env=env, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0] == "source,index,predicted_class,probability"
    rows = parse_csv(result.stdout)
    expected = store["probabilities"]
    assert [r["source"] for r in rows] == store["sources"]
    assert [int(r["index"]) for r in rows] == store["indices"]
    assert [int(r["predicted_class"]) for r in rows] == list(expected.argmax(axis=1))
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(axis=1), atol=2e-6)
    # the model has learned: it is right about these held-out images, and sure of it
    assert [int(r["predicted_class"]) for r in rows] == list(store["labels"])
    assert min(float(r["probability"]) for r in rows) > 0.5


def test_batch_size_does_not_change_the_predictions(store):
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=store["uri"])
    result = run(
        predict_command(str(store["trained"]), store["inputs"][3], extra=["--batch-size", "2"]),
        cwd=store["root"],
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    rows = parse_csv(result.stdout)
    assert [int(r["predicted_class"]) for r in rows] == list(store["labels"][3:8])


def _bad_file(directory: Path, kind: str) -> Path:
    if kind == "large-photo":
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(directory / "photo.png")
        return directory / "photo.png"
    if kind == "labels":
        write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))
        return directory / "t10k-labels-idx1-ubyte.gz"
    if kind == "text":
        (directory / "notes.txt").write_text("not an image\n")
        return directory / "notes.txt"
    return directory / "missing.png"


BAD_FILES = {
    "large-photo": "photo.png is 640x480; the model takes 28x28 grayscale images: resize it first",
    "labels": "t10k-labels-idx1-ubyte.gz is an IDX labels file (5 labels), not images: give the images file",
    "text": "notes.txt is not a file the model can read: give PNG or JPEG images, .npy arrays or IDX",
    "missing": "missing.png: no such file",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_fails_with_one_line_and_no_csv(store, tmp_path, kind):
    """Every file is checked before any output: a good file before the bad one writes no rows either."""
    bad, message = _bad_file(tmp_path, kind), BAD_FILES[kind]
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=store["uri"])
    result = run(
        predict_command(str(store["trained"]), store["inputs"][0], bad), cwd=tmp_path, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0], result.stderr


MISSING_MODELS = {
    "alias": (
        f"models:/{NAME}@nope",
        f"cannot load the model models:/{NAME}@nope in the MLflow store at sqlite:///",
        "Registered model alias nope not found",
    ),
    "name": ("models:/deconvolution-nothing@champion", "Registered Model with name=deconvolution-nothing not found"),
    "run": (f"runs:/{'0' * 32}/{RUN_NAME}", f"Run with id={'0' * 32} not found"),
    "folder": ("models/nothing/seed-1", "no model at models/nothing/seed-1: give models:/<name>@<alias>"),
}


@pytest.mark.parametrize("what", sorted(MISSING_MODELS))
def test_a_model_that_is_not_there_is_one_line(store, what):
    model, *messages = MISSING_MODELS[what]
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=store["uri"])
    result = run(predict_command(model, store["inputs"][0]), cwd=store["root"], env=env, timeout=TIMEOUT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_no_store_and_a_store_that_is_down(store, tmp_path):
    """A missing SQLite store is not created; a tracking server that does not answer is named."""
    absent = tmp_path / "elsewhere" / "mlflow.db"
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{absent}")
    result = run(
        predict_command(f"models:/{NAME}@champion", store["inputs"][0]), cwd=tmp_path, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert f"error: there is no MLflow store at sqlite:///{absent}: run the pipeline first" in result.stderr
    assert not absent.exists()
    assert not absent.parent.exists()

    down = f"http://127.0.0.1:{free_port()}"
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=down)
    result = run(
        predict_command(f"models:/{NAME}@champion", store["inputs"][0]), cwd=tmp_path, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert f"error: cannot reach the MLflow tracking server at {down}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_usage_errors(tmp_path):
    env = clean_env(PYTHONPATH=str(ROOT))
    no_files = run(predict_command("x"), cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert no_files.returncode == 2
    assert "the following arguments are required: FILE" in no_files.stderr
    batch = run(predict_command("x", "a.png", extra=["--batch-size", "0"]), cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert batch.returncode == 2
    assert "--batch-size must be at least 1" in batch.stderr


def test_a_reader_that_stops_early_gets_no_traceback(store, tmp_path):
    """`predict ... | head`: the command stops quietly (status 141, as by SIGPIPE) once the reader is gone."""
    images = np.random.default_rng(0).integers(0, 256, (5000, 28, 28), dtype=np.uint8)  # > a pipe's 64 KiB
    write_idx(tmp_path / "many-images-idx3-ubyte", images)
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=store["uri"])
    proc = subprocess.Popen(
        predict_command(str(store["trained"]), tmp_path / "many-images-idx3-ubyte"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline() == "source,index,predicted_class,probability\n"
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 141, stderr
        assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    finally:
        kill_group(proc)
