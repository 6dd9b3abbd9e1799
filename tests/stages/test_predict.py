"""`python -m pipeline predict` as a user runs it: a model logged to MLflow (registered, alias
champion) or left by the train stage, image files in, CSV out; bad input is one line on stderr.

Most cases run the command's own code in this process (`predict_here`: the stage runner with the
predict stage's parse_args and main, as `python -m pipeline predict` runs them), which spares each a
new interpreter and TensorFlow's import. What only a process shows is checked with one: the command
as a user types it (the project's store, no TensorFlow start-up lines), a reader that stops early,
and usage errors answered before TensorFlow is imported.
"""

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
from model_store import NAME, RUN_NAME, learnable_images, log_champion, tracking_store
from PIL import Image
from support import ROOT, clean_env, copy_store, free_port, kill_group, run, run_stage_here

from pipeline.idx import write_idx

TIMEOUT = 180


def predict_command(model: str, *files: Path | str, extra: Sequence[str] = ()) -> list[str]:
    """`python -m pipeline predict --model MODEL FILE...`, as a user types it."""
    return [sys.executable, "-m", "pipeline", "predict", "--model", model, *map(str, files), *extra]


def predict_here(
    monkeypatch, capsys, model: str, *files: Path | str, cwd: Path, uri: str | None, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """`predict_command(model, *files, extra)` run in this process (support.run_stage_here), in `cwd`,
    with MLFLOW_TRACKING_URI `uri` (None: unset): its exit status, stdout and stderr."""
    monkeypatch.chdir(cwd)
    if uri is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return run_stage_here("predict", predict_command(model, *files, extra=extra)[4:], capsys)


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def store(tmp_path_factory, learned_network, migrated_store):
    """A store holding a learned classifier as champion, that classifier's own probabilities for
    image files of every format, a train output folder of the same network and an MLflow model folder."""
    import mlflow

    from pipeline.inference import classifier

    root = tmp_path_factory.mktemp("predict")
    network = learned_network
    model = classifier(network, "centered")
    uri = copy_store(migrated_store, root / "mlflow.db")
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


def assert_the_models_own_predictions(store: dict, stdout: str) -> None:
    """The CSV holds, for every image of store["inputs"], the classifier's own most probable class
    and its probability; and the model has learned: it is right about these held-out images, and sure of it."""
    assert stdout.splitlines()[0] == "source,index,predicted_class,probability"
    rows = parse_csv(stdout)
    expected = store["probabilities"]
    assert [r["source"] for r in rows] == store["sources"]
    assert [int(r["index"]) for r in rows] == store["indices"]
    assert [int(r["predicted_class"]) for r in rows] == list(expected.argmax(axis=1))
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(axis=1), atol=2e-6)
    assert [int(r["predicted_class"]) for r in rows] == list(store["labels"])
    assert min(float(r["probability"]) for r in rows) > 0.5


@pytest.mark.parametrize("form", ["alias", "version", "run", "mlflow-folder", "train-folder"])
def test_predictions_are_the_models_own_for_every_model_form_and_file_format(store, form, monkeypatch, capsys):
    # the alias without MLFLOW_TRACKING_URI: the project's mlflow.db, in the folder it runs in
    uri = None if form == "alias" else store["uri"]
    result = predict_here(
        monkeypatch, capsys, model_argument(store, form), *store["inputs"], cwd=store["root"], uri=uri
    )
    assert result.returncode == 0, result.stderr
    assert_the_models_own_predictions(store, result.stdout)


def test_the_command_as_a_user_types_it_in_the_project_folder(store):
    """`python -m pipeline predict --model models:/...@champion FILE...` in the project folder, without
    MLFLOW_TRACKING_URI (the project's mlflow.db) and outside make (no TF_CPP_MIN_LOG_LEVEL): the
    model's own predictions, whatever the batch size, and on stderr only its own lines, one per file,
    none of TensorFlow's start-up lines (oneDNN notice, the CUDA probe's `failed call to cuInit`)."""
    env = {k: v for k, v in clean_env(PYTHONPATH=str(ROOT)).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = predict_command(model_argument(store, "alias"), *store["inputs"], extra=["--batch-size", "2"])
    result = run(command, cwd=store["root"], env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert_the_models_own_predictions(store, result.stdout)
    counts = [1, 1, 1, 5, 4]
    assert result.stderr.splitlines() == [f"{f}: {n} image(s)" for f, n in zip(store["inputs"], counts, strict=True)]


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
def test_a_bad_file_fails_with_one_line_and_no_csv(store, tmp_path, kind, monkeypatch, capsys):
    """Every file is checked before any output: a good file before the bad one writes no rows either."""
    bad, message = _bad_file(tmp_path, kind), BAD_FILES[kind]
    result = predict_here(
        monkeypatch, capsys, str(store["trained"]), store["inputs"][0], bad, cwd=tmp_path, uri=store["uri"]
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
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
def test_a_model_that_is_not_there_is_one_line(store, what, monkeypatch, capsys):
    model, *messages = MISSING_MODELS[what]
    result = predict_here(monkeypatch, capsys, model, store["inputs"][0], cwd=store["root"], uri=store["uri"])
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    for message in messages:
        assert message in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_no_store_and_a_store_that_is_down(store, tmp_path, monkeypatch, capsys):
    """A missing SQLite store is not created; a tracking server that does not answer is named."""
    absent = tmp_path / "elsewhere" / "mlflow.db"
    model = f"models:/{NAME}@champion"
    result = predict_here(monkeypatch, capsys, model, store["inputs"][0], cwd=tmp_path, uri=f"sqlite:///{absent}")
    assert result.returncode == 2
    assert f"error: there is no MLflow store at sqlite:///{absent}: run the pipeline first" in result.stderr
    assert not absent.exists()
    assert not absent.parent.exists()

    down = f"http://127.0.0.1:{free_port()}"
    result = predict_here(monkeypatch, capsys, model, store["inputs"][0], cwd=tmp_path, uri=down)
    assert result.returncode == 2
    assert f"error: cannot reach the MLflow tracking server at {down}" in result.stderr
    assert result.stdout == ""


def test_usage_errors_are_answered_before_tensorflow_is_imported(tmp_path):
    """A `tensorflow` package that fails on import comes first on PYTHONPATH: the usage errors still
    get argparse's answers, so the command parsed its arguments before it imported TensorFlow."""
    poisoned = tmp_path / "poisoned" / "tensorflow"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    env = clean_env(PYTHONPATH=f"{poisoned.parent}:{ROOT}")
    no_files = run(predict_command("x"), cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert no_files.returncode == 2
    assert "the following arguments are required: FILE" in no_files.stderr
    batch = run(predict_command("x", "a.png", extra=["--batch-size", "0"]), cwd=tmp_path, env=env, timeout=TIMEOUT)
    assert batch.returncode == 2
    assert "--batch-size must be at least 1" in batch.stderr
    assert "TensorFlow was imported" not in no_files.stderr + batch.stderr


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
