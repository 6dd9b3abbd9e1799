"""The comparison report's figures. Each function returns a matplotlib Figure; the caller saves it.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``), so no pyplot state
and no backend selection are involved; ``fig.savefig`` renders with Agg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure


def _color(i: int):
    return colormaps["tab10"](i % 10)


def _zero_if_nan(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)


def accuracy_vs_time_figure(summary: pd.DataFrame) -> Figure:
    """Each variant as a labelled point: mean training time (± sd) against mean test accuracy (t CI)."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for i, row in enumerate(summary.itertuples(index=False)):
        x = row.train_seconds_mean
        y = row.test_accuracy_mean * 100
        below = _zero_if_nan(y - row.test_accuracy_ci_low * 100)
        above = _zero_if_nan(row.test_accuracy_ci_high * 100 - y)
        ax.errorbar(
            x,
            y,
            xerr=_zero_if_nan(row.train_seconds_std),
            yerr=[[below], [above]],
            fmt="o",
            markersize=7,
            capsize=4,
            color=_color(i),
            label=f"{row.variant} (n={row.n_seeds})",
        )
        ax.annotate(
            row.variant,
            (x, y),
            xytext=(7, 7),
            textcoords="offset points",
            fontsize=9,
            color=_color(i),
        )
    ax.set_xlabel("training time per run (s), mean ± sd over seeds")
    ax.set_ylabel("test accuracy (%), mean with 95% CI")
    ax.set_title("Test accuracy vs training time")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    if len(summary):
        ax.legend(loc="best", fontsize=9)
    return fig


def learning_curves_figure(curves: pd.DataFrame, metric_label: str) -> Figure:
    """One line per variant (mean over seeds) with a shaded mean ± sd band, against training step."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, (variant, group) in enumerate(curves.groupby("variant", sort=False)):
        group = group.sort_values("step")
        step = group["step"].to_numpy(dtype=float)
        mean = group["mean"].to_numpy(dtype=float)
        std = np.nan_to_num(group["std"].to_numpy(dtype=float))
        n_max = int(group["n"].max()) if "n" in group and len(group) else 0
        ax.plot(step, mean, color=_color(i), linewidth=1.6, label=f"{variant} (n={n_max})")
        ax.fill_between(step, mean - std, mean + std, color=_color(i), alpha=0.2, linewidth=0)
    ax.set_xlabel("training step (batches)")
    ax.set_ylabel(metric_label)
    ax.set_title(f"{metric_label} during training (mean ± sd over seeds)")
    ax.grid(True, alpha=0.3)
    if len(curves):
        ax.legend(loc="best", fontsize=9)
    return fig


_GAMMA = 0.5


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _check_matrix(matrix: np.ndarray, classes: Sequence[str], name: str) -> np.ndarray:
    matrix = np.asarray(matrix)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix of {name} has shape {matrix.shape}, expected ({k}, {k})")
    return matrix


def _accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def _draw_confusion(fig: Figure, ax, matrix: np.ndarray, classes: Sequence[str], title: str) -> None:
    # A square-root colour scale: at MNIST accuracies the off-diagonal fractions (~0.01) would
    # otherwise be indistinguishable from white.
    norm = PowerNorm(gamma=_GAMMA, vmin=0, vmax=1)
    image = ax.imshow(_row_normalised(matrix), cmap="Blues", norm=norm, interpolation="nearest")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=[str(c) for c in classes], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=[str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class (sqrt scale)")
    colorbar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 1], labels=["0", "0.01", "0.05", "0.1", "0.25", "0.5", "1"])


def confusion_matrices_figure(matrices: Mapping[str, np.ndarray], classes: Sequence[str]) -> Figure:
    """One row-normalised confusion matrix per variant (counts summed over seeds), up to 3 per row."""
    n = len(matrices)
    ncols = max(1, min(3, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(4.6 * ncols, 4.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (variant, matrix) in zip(axes, matrices.items(), strict=False):
        matrix = _check_matrix(matrix, classes, variant)
        accuracy = _accuracy(matrix)
        title = variant if math.isnan(accuracy) else f"{variant} (accuracy {accuracy * 100:.2f}%)"
        _draw_confusion(fig, ax, matrix, classes, title)
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle("Confusion matrices (rows: true class, normalised; counts summed over seeds)")
    return fig


def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """One confusion matrix, coloured by row-normalised fraction, with the counts written in the cells."""
    matrix = _check_matrix(matrix, classes, title)
    k = len(classes)
    side = max(5.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    _draw_confusion(fig, ax, matrix, classes, title)
    fractions = _row_normalised(matrix)
    fontsize = 9 if k <= 10 else 7
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{int(count):,}" if float(count).is_integer() else f"{count:.3g}",
            ha="center",
            va="center",
            fontsize=fontsize,
            color="white" if fractions[i, j] ** _GAMMA > 0.6 else "black",
        )
    return fig


def _squeeze_channel(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        return images[..., 0]
    if images.ndim == 3:
        return images
    raise ValueError(f"images must have shape (k, H, W, 1) or (k, H, W), got {images.shape}")


def feature_maps_figure(images: np.ndarray, maps: Mapping[str, np.ndarray], max_channels: int = 4) -> Figure:
    """One row per input digit: the digit, then up to ``max_channels`` channels after each layer.

    Pixels are drawn unsmoothed (nearest) and each panel is scaled to its own range, so the
    checkerboard patterns transposed convolutions can leave stay visible.
    """
    if max_channels < 1:
        raise ValueError(f"max_channels must be at least 1, got {max_channels}")
    digits = _squeeze_channel(images)
    k = digits.shape[0]
    columns: list[tuple[str, np.ndarray]] = [(f"input ({digits.shape[1]}×{digits.shape[2]})", digits)]
    for layer, activations in maps.items():
        activations = np.asarray(activations)
        if activations.ndim != 4 or activations.shape[0] != k:
            raise ValueError(f"activations of layer {layer!r} have shape {activations.shape}, expected ({k}, h, w, c)")
        _, h, w, c = activations.shape
        for ch in range(min(c, max_channels)):
            columns.append((f"{layer}\nch {ch} ({h}×{w})", activations[..., ch]))

    ncols = len(columns)
    fig = Figure(figsize=(1.65 * ncols, 1.75 * k + 0.9), layout="constrained")
    axes = fig.subplots(k, ncols, squeeze=False)
    for col, (label, stack) in enumerate(columns):
        for row in range(k):
            ax = axes[row, col]
            ax.imshow(stack[row], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=8)
        if col == 0:
            for row in range(k):
                axes[row, 0].set_ylabel(f"image {row}", fontsize=8)
    fig.suptitle("Feature maps after each layer (each panel scaled to its own range)")
    return fig
