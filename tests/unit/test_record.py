"""The run records as files hold them: run.json's and the metrics JSON's keys in their order, a
run.json read back, and one that lacks a field."""

from __future__ import annotations

import json

import pytest
from support import run_record

from pipeline.artifacts import json_safe
from pipeline.errors import DataError
from pipeline.record import MetricsRecord, RunRecord


def test_run_json_keeps_its_keys_in_their_order_and_reads_back():
    record = run_record(val_accuracy=float("nan"), stopped_early_at=40)
    written = record.to_json()
    assert list(written) == [
        "variant", "seed", "run_id", "experiment_id", "run_key", "steps", "stopped_early_at", "diverged_at_step",
        "val_accuracy", "train_seconds", "trace_seconds", "validation_seconds", "train_images_per_second",
        "threads", "trainable_params", "flops_per_image", "data_scaling", "peak_memory_mb",
    ]  # fmt: skip
    on_disk = json.loads(json.dumps(json_safe(written)))
    # what compare reads is run.json merged with the metrics JSON: the metrics' keys are left out
    read = RunRecord.from_json({**on_disk, "test_accuracy": 0.9})
    assert read == run_record(val_accuracy=None, stopped_early_at=40)  # NaN was written as null


def test_a_run_json_without_a_field_names_it():
    on_disk = run_record().to_json()
    del on_disk["threads"], on_disk["run_key"]
    with pytest.raises(DataError, match="baseline/seed-1: its run.json has no run_key, threads"):
        RunRecord.from_json(on_disk)


def test_the_metrics_json_keeps_its_keys_in_their_order():
    record = MetricsRecord(
        variant="baseline", seed=1, run_id="run1", test_accuracy=0.9, test_loss=0.3,
        inference_images_per_second=5000.0, eval_batch_size=1000, test_examples=50,
        per_class_accuracy={"0": 1.0, "1": 0.8},
    )  # fmt: skip
    assert list(record.to_json()) == [
        "variant", "seed", "run_id", "test_accuracy", "test_loss", "inference_images_per_second",
        "eval_batch_size", "test_examples", "per_class_accuracy",
    ]  # fmt: skip
    assert record.to_json()["per_class_accuracy"] == {"0": 1.0, "1": 0.8}
