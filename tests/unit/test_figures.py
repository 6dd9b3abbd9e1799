"""Figures: the right panels, artists and labels, and they render to PNG."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pipeline.figures import (
    accuracy_vs_time_figure,
    confusion_matrices_figure,
    confusion_matrix_figure,
    feature_maps_figure,
    learning_curves_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    data = buffer.getvalue()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    return data


def image_axes(fig: Figure) -> list:
    """Data axes holding an image (colorbars draw a mesh, not an image)."""
    return [ax for ax in fig.axes if ax.images]


def summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": ["baseline", "transposed", "single"],
            "n_seeds": [3, 3, 1],
            "test_accuracy_mean": [0.91, 0.92, 0.95],
            "test_accuracy_ci_low": [0.89, 0.90, np.nan],
            "test_accuracy_ci_high": [0.93, 0.94, np.nan],
            "train_seconds_mean": [100.0, 150.0, 120.0],
            "train_seconds_std": [2.0, 3.0, np.nan],
        }
    )


def test_accuracy_vs_time_figure():
    fig = accuracy_vs_time_figure(summary())
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.containers) == 3  # one errorbar per variant
    # y error bar of the baseline spans the CI in percent: 89 .. 93
    baseline_bar = ax.containers[0]
    (y_segments,) = [c for c in baseline_bar.lines[2] if c.get_segments()[0][0][0] == c.get_segments()[0][1][0]]
    (x0, y0), (x1, y1) = y_segments.get_segments()[0]
    assert (x0, x1) == (100.0, 100.0)
    assert sorted([y0, y1]) == pytest.approx([89.0, 93.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "baseline (n=3)",
        "transposed (n=3)",
        "single (n=1)",
    ]
    assert {t.get_text() for t in ax.texts} == {"baseline", "transposed", "single"}
    assert "(s)" in ax.get_xlabel() and "%" in ax.get_ylabel() and ax.get_title()
    png_bytes(fig)


def test_learning_curves_figure():
    curves = pd.DataFrame(
        {
            "variant": ["a", "a", "a", "b", "b"],
            "step": [0, 100, 200, 0, 100],
            "mean": [0.4, 0.7, 0.85, 0.2, 0.4],
            "std": [0.14, np.nan, 0.07, np.nan, np.nan],
            "n": [2, 1, 2, 1, 1],
        }
    )
    fig = learning_curves_figure(curves, "validation accuracy")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2
    assert lines[0].get_ydata().tolist() == [0.4, 0.7, 0.85]
    assert len(ax.collections) == 2  # one shaded band per variant
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n=2)", "b (n=1)"]
    assert ax.get_ylabel() == "validation accuracy" and "step" in ax.get_xlabel()
    png_bytes(fig)


def test_confusion_matrices_figure_row_normalised_grid():
    classes = ["zero", "one"]
    matrices = {
        "baseline": np.array([[3, 1], [0, 2]]),
        "transposed": np.array([[4, 0], [1, 1]]),
        "deep": np.array([[0, 0], [2, 2]]),  # an empty row stays 0, not NaN
        "upsample": np.array([[1, 1], [1, 1]]),
    }
    fig = confusion_matrices_figure(matrices, classes)
    data_axes = image_axes(fig)
    assert len(data_axes) == 4
    assert len(fig.axes) == 8  # 4 matrices + 4 colorbars; the two unused grid cells are removed
    # rows: [3, 1] / 4 = [0.75, 0.25]; [0, 2] / 2 = [0, 1]
    np.testing.assert_allclose(data_axes[0].images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(data_axes[2].images[0].get_array(), [[0.0, 0.0], [0.5, 0.5]])
    assert data_axes[0].get_title() == "baseline (accuracy 83.33%)"  # (3 + 2) / 6
    assert [t.get_text() for t in data_axes[1].get_xticklabels()] == classes
    assert data_axes[1].get_xticklabels()[0].get_rotation() == 45
    png_bytes(fig)


def test_confusion_matrices_figure_one_row_when_few():
    fig = confusion_matrices_figure({"a": np.eye(3, dtype=int), "b": np.eye(3, dtype=int)}, list("xyz"))
    assert len(image_axes(fig)) == 2
    with pytest.raises(ValueError, match="shape"):
        confusion_matrices_figure({"a": np.eye(3)}, list("xy"))


def test_confusion_matrix_figure_writes_counts():
    matrix = np.array([[1234, 5, 0], [7, 880, 3], [0, 0, 990]])
    fig = confusion_matrix_figure(matrix, ["a", "b", "c"], "baseline, 3 seeds")
    (ax,) = image_axes(fig)
    assert len(fig.axes) == 2  # the matrix and its colorbar
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert texts[0] == "1,234" and texts[1] == "5" and texts[4] == "880"
    assert ax.get_title() == "baseline, 3 seeds"
    png_bytes(fig)


def test_feature_maps_figure_grid_and_titles():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 8, 8, 1))
    maps = {"conv": rng.normal(size=(2, 8, 8, 6)), "up": rng.normal(size=(2, 16, 16, 2))}
    fig = feature_maps_figure(images, maps, max_channels=4)
    axes = image_axes(fig)
    assert len(axes) == 2 * (1 + 4 + 2)  # per image: input, 4 of 6 conv channels, both up channels
    titles = [ax.get_title().replace("\n", " ") for ax in axes if ax.get_title()]
    assert titles == [
        "input (8×8)",
        "conv ch 0 (8×8)",
        "conv ch 1 (8×8)",
        "conv ch 2 (8×8)",
        "conv ch 3 (8×8)",
        "up ch 0 (16×16)",
        "up ch 1 (16×16)",
    ]
    # second row, last column: image 1, channel 1 of "up", drawn without ticks
    last = axes[-1]
    np.testing.assert_array_equal(last.images[0].get_array(), maps["up"][1, :, :, 1])
    assert not last.get_xticks().size and not last.get_yticks().size
    png_bytes(fig)


def test_feature_maps_figure_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="'conv'"):
        feature_maps_figure(np.zeros((2, 8, 8, 1)), {"conv": np.zeros((3, 8, 8, 1))})
