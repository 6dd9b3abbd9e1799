"""Test-set metrics from logits, and inference throughput."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.training import cross_entropy_and_accuracy, predict_logits


@dataclass(frozen=True)
class Evaluation:
    test_accuracy: float
    test_loss: float
    per_class_accuracy: tuple[float, ...]
    confusion: np.ndarray  # rows: true class, columns: predicted class


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
