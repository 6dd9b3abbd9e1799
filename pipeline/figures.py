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


DIED_MARKER = "x"


def accuracy_vs_time_figure(summary: pd.DataFrame, runs: pd.DataFrame, trained: Sequence[bool]) -> Figure:
    """Every run as a small dot (training time, test accuracy), runs that did not train as crosses,
    and each variant's mean with its bootstrap interval on top; the accuracy axis is 0-100%.

    ``trained`` flags each row of ``runs`` (statistics.trained).
    """
    fig = Figure(figsize=(10.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    trained = np.asarray(trained, dtype=bool)
    for i, row in enumerate(summary.itertuples(index=False)):
        mine = (runs["variant"] == row.variant).to_numpy()
        x = runs.loc[mine, "train_seconds"].to_numpy(dtype=float)
        y = runs.loc[mine, "test_accuracy"].to_numpy(dtype=float) * 100
        ok = trained[mine]
        ax.scatter(x[ok], y[ok], s=18, color=_color(i), alpha=0.45, linewidths=0, zorder=2)
        ax.scatter(x[~ok], y[~ok], s=36, color=_color(i), marker=DIED_MARKER, linewidths=1.4, zorder=2)
        mean = row.test_accuracy_mean * 100
        below = _zero_if_nan(mean - row.test_accuracy_ci_low * 100)
        above = _zero_if_nan(row.test_accuracy_ci_high * 100 - mean)
        ax.errorbar(
            row.train_seconds_mean,
            mean,
            xerr=_zero_if_nan(row.train_seconds_std),
            yerr=[[below], [above]],
            fmt="D",
            markersize=8,
            markeredgecolor="black",
            capsize=4,
            color=_color(i),
            zorder=3,
            label=f"{row.variant}: {row.trained_runs}/{row.n_seeds} trained",
        )
    ax.scatter([], [], marker=DIED_MARKER, color="grey", label="a run that did not train")
    ax.scatter([], [], s=18, color="grey", alpha=0.45, label="a run that trained")
    ax.set_xlabel("training time per run (s); diamond: mean ± sd over seeds")
    ax.set_ylabel("test accuracy (%); diamond: mean with 95% bootstrap CI")
    ax.set_ylim(0, 100)
    ax.set_title("Test accuracy vs training time, every run")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def learning_curves_figure(
    runs: pd.DataFrame, trained: Mapping[tuple[str, int], bool], metric_label: str, *, percent: bool = False
) -> Figure:
    """Every run as a thin line and each variant's mean over its runs that trained as a thick one,
    against the training step. Runs that did not train are dashed. A percentage runs on 0-100; any
    other metric (the loss) on a log scale whose range is set by the runs that trained, so a run that
    diverged (a loss of 1e21, or NaN) is clipped at the top edge and marked with a triangle instead of
    flattening every other curve.

    ``runs``: long form with columns variant, seed, step, value; ``trained`` flags each (variant, seed).
    """
    fig = Figure(figsize=(10.5, 5), layout="constrained")
    ax = fig.add_subplot()
    scale = 100.0 if percent else 1.0
    good = runs[[trained.get((v, s), True) for v, s in zip(runs["variant"], runs["seed"], strict=True)]]
    finite = good["value"].to_numpy(dtype=float) * scale
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if percent:
        bottom, top = 0.0, 100.0
    else:
        bottom, top = (float(finite.min()) / 1.2, float(finite.max()) * 1.2) if finite.size else (0.1, 10.0)
        ax.set_yscale("log")
    for i, (variant, group) in enumerate(runs.groupby("variant", sort=False)):
        color = _color(i)
        seeds = list(dict.fromkeys(group["seed"]))
        died = [s for s in seeds if not trained.get((variant, s), True)]
        for seed, curve in group.groupby("seed", sort=False):
            curve = curve.sort_values("step")
            step = curve["step"].to_numpy(dtype=float)
            value = curve["value"].to_numpy(dtype=float) * scale
            if seed in died:
                over = ~np.isfinite(value) | (value > top)
                ax.plot(step, np.where(over, top, value), color=color, linewidth=0.9, linestyle="--", alpha=0.8)
                if over.any():
                    first = int(np.argmax(over))
                    ax.plot(step[first], top, marker="^", color=color, markersize=8, clip_on=False, zorder=4)
            else:
                ax.plot(step, value, color=color, linewidth=0.6, alpha=0.35)
        mine = good[good["variant"] == variant]
        if len(mine):
            mean = mine.groupby("step")["value"].mean() * scale
            label = f"{variant}: mean of {len(seeds) - len(died)} trained" + (
                f", {len(died)} did not train (dashed)" if died else ""
            )
            ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.0, label=label)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("training step (batches)")
    ax.set_ylabel(metric_label + ("" if percent else ", log scale"))
    ax.set_title(f"{metric_label}: every run (thin), mean of the runs that trained (thick), ▲ clipped at the top")
    ax.grid(True, alpha=0.3, which="both" if not percent else "major")
    if len(runs):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
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
