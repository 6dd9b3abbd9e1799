"""Test metrics from logits, the metrics record and the dvc-plots confusion pairs, by hand."""

from __future__ import annotations

import math

import numpy as np
from support import run_record

from pipeline.evaluation import confusion_pairs, evaluate_logits, metrics_record

# 4 images, 3 classes: predictions 0, 1, 1, 2 for labels 0, 1, 2, 2
LOGITS = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
LABELS = np.array([0, 1, 2, 2])


def test_accuracy_loss_per_class_and_confusion():
    result = evaluate_logits(LOGITS, LABELS, 3)
    assert result.test_accuracy == 0.75
    assert result.per_class_accuracy == (1.0, 1.0, 0.5)
    assert result.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # cross-entropy of each row: log(sum exp) - logit of the label
    expected = np.mean(
        [
            math.log(math.e**2 + 2) - 2,
            math.log(math.e + 2) - 1,
            math.log(math.e**3 + 2) - 0,
            math.log(math.e + 2) - 1,
        ]
    )
    assert math.isclose(result.test_loss, expected, rel_tol=1e-12)


def test_metrics_record_and_confusion_pairs():
    result = evaluate_logits(LOGITS, LABELS, 3)
    run = run_record(variant="transposed", seed=2, run_id="abc")
    record = metrics_record(run, result, ("a", "b", "c"), batch_size=1000)
    assert (record.variant, record.seed, record.run_id) == ("transposed", 2, "abc")
    assert record.test_accuracy == 0.75 and record.test_examples == 4 and record.eval_batch_size == 1000
    assert record.per_class_accuracy == {"a": 1.0, "b": 1.0, "c": 0.5}
    pairs = confusion_pairs(result.confusion, ("a", "b", "c"))
    assert sorted(map(tuple, pairs.to_numpy().tolist())) == [("a", "a"), ("b", "b"), ("c", "b"), ("c", "c")]
