"""The one smoothing of the per-step training metrics (each step is one noisy minibatch): a mean over
the last LOSS_WINDOW steps, as MLflow logs it during training and as the report's learning curves
draw it. numpy and pandas only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.training import TrainResult

# the window of the per-step training metrics' means (each step is one noisy minibatch): MLflow gets
# them every LOSS_WINDOW steps and at each validation (windowed_history), the compare stage's learning
# curves at every step (pipeline.pooled); history.csv keeps every step
LOSS_WINDOW = 20


def windowed_mean(values: Sequence[float] | np.ndarray, window: int = LOSS_WINDOW) -> np.ndarray:
    """Each step's mean over the ``window`` steps that end there (fewer at the start), NaN and inf steps
    left out (NaN where a window has none left): the one smoothing of the per-step training metrics,
    the numbers MLflow logs (windowed_history) and the report's learning curves draw (run_curves).
    A step's mean depends on the steps before it only, so a history sent in pieces gets the same."""
    import pandas as pd

    array = np.asarray(values, dtype=np.float64)
    array = np.where(np.isfinite(array), array, np.nan)
    return pd.Series(array).rolling(window, min_periods=1).mean().to_numpy()


def windowed_history(result: TrainResult, start: int, stop: int) -> tuple[dict[str, list[float]], list[int]]:
    """The `loss` and `accuracy` MLflow logs for the steps in [start, stop): windowed_mean at each step
    that ends a window (step % LOSS_WINDOW == LOSS_WINDOW - 1) and at each validation step (the first
    and the last step among them). Which steps depends on the history only, not on when it is sent.

    A window that holds a NaN/inf step (a diverged run's last steps) gives NaN, which log_steps leaves
    out: a mean over the finite steps before the divergence would hide it."""
    validated = set(result.val_steps)
    steps = [i for i in range(start, stop) if i % LOSS_WINDOW == LOSS_WINDOW - 1 or result.steps[i] in validated]
    series: dict[str, list[float]] = {}
    for key in ("loss", "accuracy"):
        values = np.asarray(getattr(result, key)[:stop], dtype=np.float64)
        means = windowed_mean(values)
        broken = windowed_mean(~np.isfinite(values)) > 0  # the share of non-finite steps in each window
        series[key] = [math.nan if broken[i] else float(means[i]) for i in steps]
    return series, [result.steps[i] for i in steps]
