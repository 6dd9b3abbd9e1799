"""The champion served by `mlflow models serve` answers what `python -m pipeline predict` answers, and
what a learned model should: the request formats a user can send, checked against a live server. The
model is logged as the train stage logs it (pipeline.training_logging.log_keras_model) and registered
as the compare stage registers a champion."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from model_store import NAME, RUN_NAME, learnable_images, tracking_store
from PIL import Image
from support import BIN, ROOT, SHARED, clean_env, copy_store, free_port, kill_group, run, wait_for_server

from pipeline.idx import read_idx, write_idx

SCALING = "unit"  # the predict tests use "centered": between them both scalings are served end to end
N_HELD_OUT = 200
REAL_MNIST = SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def invoke(url: str, body: dict) -> tuple[int, dict]:
    """POST a JSON body to /invocations; (HTTP status, the JSON answer)."""
    request = urllib.request.Request(
        url + "/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def predict_cli(model: str, *files: Path, env: dict, cwd: Path) -> list[dict[str, str]]:
    """The rows `python -m pipeline predict` writes for these files."""
    result = run(
        [sys.executable, "-m", "pipeline", "predict", "--model", model, *map(str, files)],
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def log_and_register(network, artifacts: Path) -> str:
    """Log `network` the way the train stage does and register it as NAME@champion; its model id."""
    import mlflow

    from pipeline import training_logging

    experiment = mlflow.create_experiment("deconvolution", artifact_location=artifacts.as_uri())
    sample, _ = learnable_images(2, np.random.default_rng(7))  # uint8 N x 28 x 28, as an IDX file holds them
    with mlflow.start_run(experiment_id=experiment, run_name=RUN_NAME):
        model_id = training_logging.log_keras_model(
            network, sample, name=RUN_NAME, scaling=SCALING, metadata={"classes": [str(k) for k in range(10)]}
        )
    version = mlflow.register_model(f"models:/{model_id}", NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version.version)
    return model_id


@pytest.fixture(scope="module")
def served(tmp_path_factory, learned_network, migrated_store):
    """A learned classifier registered as the champion in a temporary store, served on a free port."""
    import mlflow

    from pipeline.inference import classifier

    root = tmp_path_factory.mktemp("serving")
    network = learned_network  # the predict tests' network too, which has learned under both scalings
    model = classifier(network, SCALING)
    uri = copy_store(migrated_store, root / "mlflow.db")
    with tracking_store(uri):
        model_id = log_and_register(network, root / "mlartifacts")
        signature = mlflow.models.get_model_info(f"models:/{model_id}").signature
    images, labels = learnable_images(N_HELD_OUT, np.random.default_rng(2024))  # not the training images
    env = clean_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=uri)
    port = free_port()
    log = root / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [BIN / "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local"]
            + ["-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # uvicorn and its workers: one process group, killed together
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, proc, log, path="/ping")
        yield {
            "url": url,
            "root": root,
            "env": env,
            "model": model,
            "images": images,
            "labels": labels,
            "signature": signature,
        }
    finally:
        kill_group(proc)


def test_the_model_has_learned(served):
    probabilities = served["model"].predict(served["images"].astype(np.float32), verbose=0)
    assert (probabilities.argmax(axis=1) == served["labels"]).mean() > 0.9


def test_the_signature_takes_plain_images(served):
    (spec,) = served["signature"].inputs.to_dict()
    assert spec["tensor-spec"] == {"dtype": "float32", "shape": (-1, 28, 28)}
    assert served["signature"].outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 10)


def test_eight_plain_images_as_an_idx_file_holds_them_get_eight_right_predictions(served):
    """The request of docs/tracking.md: {"inputs": <N x 28 x 28 nested list of integers 0-255>}."""
    images, labels = served["images"][:8], served["labels"][:8]
    assert images.dtype == np.uint8 and images.shape == (8, 28, 28)
    status, answer = invoke(served["url"], {"inputs": images.tolist()})
    assert status == 200, answer
    probabilities = np.asarray(answer["predictions"])
    assert probabilities.shape == (8, 10)
    assert probabilities.argmax(axis=1).tolist() == labels.tolist()


def test_served_predictions_are_those_of_predict_and_right(served, tmp_path):
    images, labels = served["images"], served["labels"]
    status, answer = invoke(served["url"], {"inputs": (images / 1.0).tolist()})  # floats
    assert status == 200, answer
    probabilities = np.asarray(answer["predictions"])
    assert probabilities.shape == (N_HELD_OUT, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    served_classes = probabilities.argmax(axis=1)
    assert (served_classes == labels).mean() > 0.9

    write_idx(tmp_path / "held-out-images-idx3-ubyte.gz", images)
    rows = predict_cli(
        f"models:/{NAME}@champion", tmp_path / "held-out-images-idx3-ubyte.gz", env=served["env"], cwd=tmp_path
    )
    assert [int(r["predicted_class"]) for r in rows] == served_classes.tolist()
    np.testing.assert_allclose([float(r["probability"]) for r in rows], probabilities.max(axis=1), atol=2e-6)


def test_the_request_formats_the_server_takes(served):
    """Raw integer pixels 0-255 are enough (the float32 signature casts them); `instances` works as
    well as `inputs`. A channel axis is refused: MLflow checks a tensor's rank against the signature's,
    which cannot have two ranks."""
    images = served["images"][:8]
    _, floats = invoke(served["url"], {"inputs": images.astype(float).tolist()})
    expected = np.asarray(floats["predictions"])

    status, ints = invoke(served["url"], {"inputs": images.tolist()})  # [[[0, 37, ...], ...]]
    assert status == 200, ints
    np.testing.assert_allclose(np.asarray(ints["predictions"]), expected, rtol=1e-6)

    status, instances = invoke(served["url"], {"instances": images.tolist()})
    assert status == 200, instances
    np.testing.assert_allclose(np.asarray(instances["predictions"]), expected, rtol=1e-6)

    status, channel = invoke(served["url"], {"inputs": images[..., np.newaxis].tolist()})  # N x 28 x 28 x 1
    assert status == 400
    assert "Shape of input (8, 28, 28, 1) does not match expected shape (-1, 28, 28)" in channel["message"]


@pytest.mark.skipif(not REAL_MNIST.is_file(), reason=f"no real MNIST test images at {REAL_MNIST}")
def test_real_mnist_images_as_png_files(served, tmp_path):
    """Real digits saved as PNG files give predict the same answers as the IDX file they came from,
    and the server agrees (the model learned bars, not digits: agreement is what is checked)."""
    digits = read_idx(REAL_MNIST)[:5]
    files = []
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / f"mnist-{i}.png")
        files.append(tmp_path / f"mnist-{i}.png")
    rows = predict_cli(f"models:/{NAME}@champion", *files, REAL_MNIST, env=served["env"], cwd=tmp_path)
    pngs, idx = rows[:5], rows[5:]
    assert [r["source"] for r in pngs] == [str(f) for f in files]
    assert [r["index"] for r in pngs] == ["0"] * 5
    assert len(idx) == 10_000 and {r["source"] for r in idx} == {str(REAL_MNIST)}
    assert [r["index"] for r in idx[:5]] == ["0", "1", "2", "3", "4"]
    assert [r["predicted_class"] for r in pngs] == [r["predicted_class"] for r in idx[:5]]
    np.testing.assert_allclose(  # the same pixels; only the batch differs (float rounding in the last digit)
        [float(r["probability"]) for r in pngs], [float(r["probability"]) for r in idx[:5]], atol=2e-6
    )
    assert {int(r["predicted_class"]) for r in idx} <= set(range(10))

    status, answer = invoke(served["url"], {"inputs": digits.tolist()})
    assert status == 200, answer
    assert [int(r["predicted_class"]) for r in pngs] == np.asarray(answer["predictions"]).argmax(axis=1).tolist()
