"""What a training run leaves in MLflow besides its curves: the logged model (named, with an input
example, linked to its final metrics), its datasets, the registry's champions, the experiment's
kind, the reports experiment and opt-in system metrics. A real SQLite store per test, in-process
(a copy of conftest's migrated empty store, but where a test is about how the store comes to be)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from support import copy_store, run_record, write_prepared

from pipeline import prepared, registry, run_logging, tracking, training_logging
from pipeline.config import Params, Variant, load_params
from pipeline.models import build_model, describe, flops_per_image, trainable_params
from pipeline.training import TrainResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path, monkeypatch, migrated_store: Path) -> str:
    """A new SQLite store (a copy of the session's migrated empty one); returns the training
    experiment's id. (Artifacts go to ./mlruns of the working folder with a store given by
    MLFLOW_TRACKING_URI: tmp_path here.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_store(migrated_store, tmp_path / "mlflow.db"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tracking.connect()


@pytest.fixture
def data(tmp_path: Path) -> prepared.Prepared:
    write_prepared(tmp_path / "tiny", n=60)
    return prepared.load(tmp_path / "tiny")


@pytest.fixture
def params() -> Params:
    return load_params(ROOT / "params.yaml")


def tiny_network():
    spec = Variant.model_validate({"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]})
    return build_model(spec, (28, 28, 1), 10)


def result(steps: int, *, diverged_at: int | None = None) -> TrainResult:
    """A training history of `steps` steps, validated at 0 and at the last step; NaN from a divergence on."""
    loss = [2.3 - 0.01 * s for s in range(steps)]
    if diverged_at is not None:
        loss[diverged_at:] = [float("nan")] * (steps - diverged_at)
    last = steps - 1
    return TrainResult(
        steps=list(range(steps)),
        loss=loss,
        accuracy=[0.1 + 0.001 * s for s in range(steps)],
        val_steps=sorted({0, last}),
        val_loss=[2.3, loss[last]][: len({0, last})],
        val_accuracy=[0.1, 0.8][: len({0, last})],
        train_seconds=1.5,
        diverged_at=diverged_at,
    )


def train_and_log(
    store: str, data, params: Params, tmp_path: Path, variant: str, seed: int, history: TrainResult, tested=None
):
    """What the train stage does around training, with a given history, and with the test results
    `tested` (an Evaluation) when given: returns (run id, model id)."""
    import pandas as pd

    from pipeline.evaluation import per_class_table

    network = tiny_network()
    record = run_record(variant=variant, seed=seed, steps=history.steps_done, train_seconds=1.5)
    model_dir = tmp_path / "models" / variant / f"seed-{seed}"
    model_dir.mkdir(parents=True)
    (model_dir / "spec.json").write_text("{}")
    pd.DataFrame({"step": history.steps, "loss": history.loss}).to_csv(model_dir / "history.csv", index=False)
    layers = describe(params.variants[variant], data.input_shape, data.num_classes)
    size = {"trainable_params": trainable_params(layers), "flops_per_image": flops_per_image(layers)}
    with training_logging.training_run(store, variant, seed, params, data, **size) as run:
        run.log_steps(history)
        run.finish(network, history, record, model_dir, data)
        if tested is not None:
            png = tmp_path / "confusion.png"
            png.write_bytes(b"\x89PNG\r\n\x1a\n")
            run.log_evaluation(tested, data, png, per_class_table(tested, data.classes))
    return run.run_id, run.model_id


def test_the_logged_model_is_named_has_an_input_example_and_carries_the_last_steps_metrics(
    store, data, params, tmp_path
):
    run_id, model_id = train_and_log(store, data, params, tmp_path, "transposed", 3, result(41))
    model = mlflow.get_logged_model(model_id)
    assert model.name == "transposed-seed3"
    assert model.source_run_id == run_id
    linked = {m.key: (m.step, m.value) for m in model.metrics}
    # the last step's values, not step 0's: the model page shows what was trained (the training
    # metrics as MLflow holds them: the mean of the last 20 steps, 21..40)
    assert linked["loss"] == (40, pytest.approx(2.3 - 0.01 * 30.5))
    assert linked["accuracy"] == (40, pytest.approx(0.1 + 0.001 * 30.5))
    assert linked["val_accuracy"] == (40, 0.8)
    assert linked["train_seconds"] == (training_logging.SINGLE_VALUE_STEP, 1.5)  # one value: a bar in the UI
    # an input example of raw pixels (0..255), N x 28 x 28 as image files hold them and the served model takes them
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.metadata["data.scaling"] == data.scaling == "unit"
    assert info.metadata["classes"] == list(data.classes)
    local = mlflow.artifacts.download_artifacts(f"models:/{model_id}")
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert example.shape == (2, 28, 28)
    np.testing.assert_array_equal(example, np.rint(np.asarray(data.x_valid[:2]) * 255).reshape(2, 28, 28))
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28)
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_a_run_that_diverges_at_step_0_still_logs_its_model_and_ends_failed(store, data, params, tmp_path):
    """mlflow#26108: log_model re-logs the model step's metrics, and a NaN among them failed the call,
    leaving no model. (MLflow 3.17.2 no longer fails so, in-process or over HTTP; the pipeline logs
    only finite values anyway, and this test holds whichever way MLflow goes.)"""
    run_id, model_id = train_and_log(store, data, params, tmp_path, "baseline", 1, result(1, diverged_at=0))
    run = mlflow.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged_at_step"] == "0"
    assert "loss" not in run.data.metrics  # its only value was NaN: left out, the tag says why
    assert mlflow.get_logged_model(model_id).status.to_proto() == mlflow.entities.LoggedModelStatus.READY.to_proto()
    assert mlflow.get_logged_model(model_id).name == "baseline-seed1"


def test_runs_show_their_datasets_with_the_splits_sha256_and_test_metrics_link_to_the_test_set(
    store, data, params, tmp_path
):
    from pipeline.evaluation import evaluate_logits

    logits = np.eye(10, dtype=np.float32)[np.asarray(data.y_test)]
    logits[:5] = np.roll(logits[:5], 1, axis=1)  # 5 wrong answers of 50
    evaluation = evaluate_logits(logits, np.asarray(data.y_test), 10)
    run_id, model_id = train_and_log(store, data, params, tmp_path, "baseline", 2, result(5), tested=evaluation)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    # the run's model is its output (at the last step), never one of its inputs
    assert [(m.model_id, m.step) for m in run.outputs.model_outputs] == [(model_id, 4)]
    assert not run.inputs.model_inputs
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"tiny-train", "tiny-validation", "tiny-test"}
    for split in ("train", "validation", "test"):
        logged = inputs[f"tiny-{split}"]
        assert logged.dataset.digest == data.split_sha256[split][:36]
        tags = {t.key: t.value for t in logged.tags}
        assert tags["sha256"] == data.split_sha256[split]
        assert tags["mlflow.data.context"] == training_logging.DATASET_CONTEXT[split]
    model = mlflow.get_logged_model(model_id)
    test_metrics = {m.key: m for m in model.metrics if m.key.startswith("test_")}
    assert test_metrics["test_accuracy"].value == 0.9
    assert test_metrics["test_accuracy"].step == training_logging.SINGLE_VALUE_STEP
    assert test_metrics["test_accuracy"].dataset_name == "tiny-test"
    assert test_metrics["test_accuracy"].dataset_digest == data.split_sha256["test"][:36]
    assert run.data.metrics["test_accuracy"] == 0.9
    assert not [k for k in run.data.metrics if "class" in k]  # per-class accuracies are an artifact
    table = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/per_class_accuracy.csv").splitlines()
    assert table[0] == "class,test_accuracy,test_examples"
    assert len(table) == 11
    ranked = mlflow.search_logged_models(
        experiment_ids=[store], order_by=[{"field_name": "metrics.test_accuracy", "ascending": False}]
    )
    assert list(ranked["name"])[:1] == ["baseline-seed2"]


def test_the_champion_is_the_best_seed_by_validation_never_by_test():
    # (run records hold no test accuracy: seeds 1 and 3 would win by test)
    records = [
        run_record(variant="v", seed=1, val_accuracy=0.80),
        run_record(variant="v", seed=2, val_accuracy=0.90),
        run_record(variant="v", seed=3, val_accuracy=0.90),
        run_record(variant="v", seed=4, val_accuracy=0.99, diverged_at_step=12),
        run_record(variant="v", seed=5, val_accuracy=None),
    ]
    assert registry.champion(records).seed == 2  # best validation; the tie with seed 3 goes to the lower seed
    assert registry.champion(records[3:]) is None
    assert registry.champion([run_record(variant="v", seed=1, val_accuracy=math.nan)]) is None


def test_register_champion_moves_the_alias_and_adds_no_version_for_an_unchanged_model(
    store, data, params, tmp_path, monkeypatch
):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-0.01")
    run_1, model_1 = train_and_log(store, data, params, tmp_path, "baseline", 1, result(5))
    run_2, model_2 = train_and_log(store, data, params, tmp_path, "baseline", 2, result(5))
    first = run_record(variant="baseline", seed=1, run_id=run_1, val_accuracy=0.8)
    second = run_record(variant="baseline", seed=2, run_id=run_2, val_accuracy=0.8)
    client = mlflow.MlflowClient()
    v1 = registry.register_champion("baseline", first, "tiny")
    assert registry.register_champion("baseline", first, "tiny").version == v1.version  # a rerun: same version
    assert len(client.search_model_versions("name = 'deconvolution-baseline'")) == 1
    champion = client.get_model_version_by_alias("deconvolution-baseline", "champion")
    assert champion.version == v1.version
    assert champion.tags["dataset"] == "tiny"
    assert champion.tags["dvc.experiment"] == "lr-0.01"
    assert champion.tags["git.commit"] == mlflow.get_run(run_1).data.tags["git.commit"]
    assert champion.tags["seed"] == "1"
    v2 = registry.register_champion("baseline", second, "tiny")
    assert v2.version != v1.version
    assert client.get_model_version_by_alias("deconvolution-baseline", "champion").version == v2.version
    loaded = mlflow.keras.load_model("models:/deconvolution-baseline@champion")
    assert loaded.output_shape == (None, 10)
    assert mlflow.get_logged_model(model_2).name == "baseline-seed2"


def test_the_experiment_has_its_kind_and_summaries_go_to_the_reports_experiment(store, tmp_path, monkeypatch):
    client = mlflow.MlflowClient()
    assert client.get_experiment(store).tags["mlflow.experimentKind"] == "custom_model_development"
    reports = tracking.connect(reports=True)
    assert client.get_experiment(reports).name == "deconvolution-reports"
    assert reports != store
    # an experiment made by an older version gets the kind; a kind a user chose stays
    older = client.create_experiment("older")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("older", "chosen"):
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        tracking.connect()
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_system_metrics_are_opt_in_and_sampled_every_second(tmp_path: Path, monkeypatch, migrated_store: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_store(migrated_store, tmp_path / "mlflow.db"))
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for key in ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    experiment = tracking.connect()
    with run_logging.tracked_run(experiment, name="off") as off:
        time.sleep(2.5)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    experiment = tracking.connect()
    with run_logging.tracked_run(experiment, name="on") as on:
        time.sleep(2.5)
    assert not [k for k in mlflow.get_run(off.info.run_id).data.metrics if k.startswith("system/")]
    history = mlflow.MlflowClient().get_metric_history(on.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 1  # with MLflow's defaults (10 s), a 2.5 s run would get none


def test_the_ui_link_opens_the_training_runs_and_no_store_is_created_for_it(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.experiment_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert not (tmp_path / "mlflow.db").exists()
    experiment_id = tracking.connect()
    url = tracking.experiment_url("http://127.0.0.1:5000/")
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning"
