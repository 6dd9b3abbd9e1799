"""One confusion matrix drawn: the figure the train stage saves for each run
(plots/<variant>/seed-<n>/confusion.png), and the panel the report's confusion_matrices_figure
(pipeline/figures.py) draws once per variant.

Apart from the report's figures so that the train stages import only this: editing a figure of the
comparison reruns the compare stage, no training. Figures are built with the object-oriented API
(``matplotlib.figure.Figure``, no pyplot state); the caller saves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

# A square-root colour scale: at MNIST accuracies the off-diagonal fractions (~0.01) would
# otherwise be indistinguishable from white.
_GAMMA = 0.5


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def check_matrix(matrix: np.ndarray, classes: Sequence[str], name: str) -> np.ndarray:
    """``matrix`` as an array, or a ValueError naming ``name`` when it is not (classes x classes)."""
    matrix = np.asarray(matrix)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix of {name} has shape {matrix.shape}, expected ({k}, {k})")
    return matrix


def draw_confusion(fig: Figure, ax, matrix: np.ndarray, classes: Sequence[str], title: str) -> None:
    """``matrix`` on ``ax``, coloured by the fraction of each true class (rows), with its colour bar."""
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


def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """One confusion matrix, coloured by row-normalised fraction, with the counts written in the cells."""
    matrix = check_matrix(matrix, classes, title)
    k = len(classes)
    side = max(5.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    draw_confusion(fig, ax, matrix, classes, title)
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
