"""Figures: the right panels, artists and labels, and they render to PNG."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
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
            "variant": ["baseline", "transposed"],
            "n_seeds": [3, 3],
            "trained_runs": [3, 2],
            "test_accuracy_mean": [0.91, 0.65],
            "test_accuracy_ci_low": [0.89, 0.10],
            "test_accuracy_ci_high": [0.93, 0.93],
            "train_seconds_mean": [100.0, 150.0],
            "train_seconds_std": [2.0, 3.0],
        }
    )


def runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": ["baseline"] * 3 + ["transposed"] * 3,
            "seed": [1, 2, 3] * 2,
            "test_accuracy": [0.90, 0.91, 0.92, 0.92, 0.10, 0.93],
            "train_seconds": [98.0, 100.0, 102.0, 147.0, 150.0, 153.0],
        }
    )


def test_accuracy_vs_time_figure_shows_every_run_and_marks_the_dead():
    trained = [True, True, True, True, False, True]
    fig = accuracy_vs_time_figure(summary(), runs(), trained)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 100)  # accuracies are percentages: the axis never leaves 0-100
    # every run is a point: trained runs as dots, the one that died as a cross, in its variant's colour
    points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    offsets = sorted(tuple(xy) for c in points for xy in np.asarray(c.get_offsets()).tolist())
    assert offsets == sorted(
        zip([98.0, 100.0, 102.0, 147.0, 150.0, 153.0], [90.0, 91.0, 92.0, 92.0, 10.0, 93.0], strict=True)
    )
    dead = [c for c in points if len(c.get_offsets()) == 1 and tuple(c.get_offsets()[0]) == (150.0, 10.0)]
    assert len(dead) == 1
    # each variant's summary on top: a diamond at the mean with its bootstrap interval, in percent
    assert len(ax.containers) == 2
    ((x, y),) = np.asarray(ax.containers[1].lines[0].get_xydata()).tolist()
    assert (x, y) == pytest.approx((150.0, 65.0))
    vertical = [c for c in ax.containers[1].lines[2] if c.get_segments()[0][0][0] == c.get_segments()[0][1][0]]
    (x0, y0), (x1, y1) = vertical[0].get_segments()[0]
    assert sorted([y0, y1]) == pytest.approx([10.0, 93.0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted(
        ["baseline: 3/3 trained", "transposed: 2/3 trained", "a run that did not train", "a run that trained"]
    )
    png_bytes(fig)


def test_learning_curves_figure_clips_a_diverged_run_with_a_mark():
    curves = pd.DataFrame(
        {
            "variant": ["a"] * 6 + ["b"] * 3,
            "seed": [1, 1, 1, 2, 2, 2, 1, 1, 1],
            "step": [0, 100, 200] * 3,
            "value": [2.0, 0.8, 0.6, 2.2, 2.5e21, np.nan, 2.1, 1.0, 0.7],
        }
    )
    trained = {("a", 1): True, ("a", 2): False, ("b", 1): True}
    fig = learning_curves_figure(curves, trained, "training loss")
    (ax,) = fig.axes
    # a log axis set by the runs that trained (0.6 .. 2.1, 20% margins), not by a loss of 2.5e21
    top = 2.1 * 1.2
    assert ax.get_yscale() == "log"
    assert ax.get_ylim() == pytest.approx((0.6 / 1.2, top))
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert dashed[0].get_ydata().tolist() == pytest.approx([2.2, top, top])  # clipped, not hidden
    marks = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 100  # the first step beyond the axis
    thick = [line for line in ax.get_lines() if line.get_linewidth() == 2.0]
    assert [line.get_ydata().tolist() for line in thick] == [[2.0, 0.8, 0.6], [2.1, 1.0, 0.7]]  # trained only
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "a: mean of 1 trained, 1 did not train (dashed)",
        "b: mean of 1 trained",
    ]
    png_bytes(fig)


def test_learning_curves_figure_in_percent_stays_within_0_100():
    curves = pd.DataFrame({"variant": "a", "seed": 1, "step": [0, 100], "value": [0.1, 0.8]})
    fig = learning_curves_figure(curves, {("a", 1): True}, "validation accuracy (%)", percent=True)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 100)
    assert ax.get_lines()[-1].get_ydata().tolist() == pytest.approx([10.0, 80.0])


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
