"""Test-set metrics from a trained model: accuracy, loss, per-class accuracy, confusion matrix and
inference throughput, at any evaluation batch size."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.record import MetricsRecord, RunRecord
from pipeline.training import cross_entropy_and_accuracy, predict_logits


@dataclass(frozen=True)
class Evaluation:
    test_accuracy: float
    test_loss: float
    per_class_accuracy: tuple[float, ...]
    confusion: np.ndarray  # rows: true class, columns: predicted class
    images_per_second: float = float("nan")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> Evaluation:
    loss, accuracy = cross_entropy_and_accuracy(logits, labels)
    matrix = confusion_matrix(labels, logits.argmax(axis=1), num_classes)
    totals = matrix.sum(axis=1)
    per_class = tuple(float(matrix[i, i] / totals[i]) if totals[i] else float("nan") for i in range(num_classes))
    return Evaluation(accuracy, loss, per_class, matrix)


def timed_logits(predict: Callable, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Logits for x in batches of batch_size, and images per second (after one warm-up batch).

    x is read into memory first (it may be memory-mapped): the timing is of inference alone.
    """
    x = np.array(x)
    predict(x[:batch_size])
    start = time.perf_counter()
    logits = predict_logits(predict, x, batch_size)
    seconds = time.perf_counter() - start
    return logits, len(x) / seconds if seconds > 0 else float("nan")


def evaluate(predict: Callable, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int) -> Evaluation:
    """Evaluate a model's compiled `predict` (images to logits: `Trainer.predict`) on (x, y) in batches
    of batch_size (any size), timed."""
    import dataclasses

    logits, images_per_second = timed_logits(predict, x, batch_size)
    return dataclasses.replace(evaluate_logits(logits, y, num_classes), images_per_second=images_per_second)


def metrics_record(run: RunRecord, evaluation: Evaluation, classes: Sequence[str], batch_size: int) -> MetricsRecord:
    """metrics/<variant>/seed-<n>.json: the run's identity and its test metrics."""
    return MetricsRecord(
        variant=run.variant,
        seed=run.seed,
        run_id=run.run_id,
        test_accuracy=evaluation.test_accuracy,
        test_loss=evaluation.test_loss,
        inference_images_per_second=evaluation.images_per_second,
        eval_batch_size=batch_size,
        test_examples=int(evaluation.confusion.sum()),
        per_class_accuracy=dict(zip(classes, evaluation.per_class_accuracy, strict=True)),
    )


def per_class_table(evaluation: Evaluation, classes: Sequence[str]) -> pd.DataFrame:
    """One row per class: its name, test accuracy and number of test images."""
    return pd.DataFrame(
        {
            "class": list(classes),
            "test_accuracy": list(evaluation.per_class_accuracy),
            "test_examples": evaluation.confusion.sum(axis=1).astype(int),
        }
    )


def confusion_pairs(confusion: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One (actual, predicted) row per test image, as `dvc plots`' confusion template reads them."""
    k = len(classes)
    pairs = [(classes[t], classes[p]) for t in range(k) for p in range(k) for _ in range(int(confusion[t, p]))]
    return pd.DataFrame(pairs, columns=["actual", "predicted"])
