"""Figures: the right panels, artists and labels, and they render to PNG."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from pipeline.confusion_figure import confusion_matrix_figure
from pipeline.figures import (
    DEAD_CHANNEL,
    ZERO_PANEL,
    accuracy_vs_time_figure,
    clipped_sd,
    confusion_matrices_figure,
    feature_maps_figure,
    learning_curves_figure,
)
from pipeline.pooled import learning_curves, trained_accuracy

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


def offsets(ax) -> list[tuple[float, float]]:
    points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    return sorted(tuple(xy) for c in points for xy in np.asarray(c.get_offsets()).tolist())


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_accuracy_vs_time_figure_zooms_on_the_trained_and_shows_the_dead_apart():
    trained = [True, True, True, True, False, True]
    fig = accuracy_vs_time_figure(summary(), runs(), trained, trained_accuracy(runs(), trained))
    top, bottom = fig.axes
    # the runs that trained on an axis zoomed to them (90..93 %, 0.5-pp margins): 2 points apart are 2/4 of it
    assert top.get_ylim() == pytest.approx((89.5, 93.5))
    assert offsets(top) == [(98.0, 90.0), (100.0, 91.0), (102.0, 92.0), (147.0, 92.0), (153.0, 93.0)]
    # the run that did not train: a cross in its own panel below the break, on its own range
    assert offsets(bottom) == [(150.0, 10.0)]
    assert bottom.get_ylim() == pytest.approx((8.0, 12.0))
    # each variant's diamond: the mean of its runs that trained (transposed: 92, 93 -> 92.5 at 150 s),
    # its bootstrap interval and the training time's mean +- sd, all within the runs' range
    assert len(top.containers) == 2
    bars = top.containers[1]
    ((x, y),) = np.asarray(bars.lines[0].get_xydata()).tolist()
    assert (x, y) == pytest.approx((150.0, 92.5))
    segments = [seg for collection in bars.lines[2] for seg in collection.get_segments()]
    vertical = [seg for seg in segments if seg[0][0] == seg[1][0]]
    horizontal = [seg for seg in segments if seg[0][1] == seg[1][1]]
    low, high = sorted(point[1] for point in vertical[0])
    assert 92.0 <= low <= 92.5 <= high <= 93.0
    left, right = sorted(point[0] for point in horizontal[0])
    assert (left, right) == pytest.approx((147.0, 153.0))  # mean 150 +- sd 4.24, clipped to 147..153
    labels = legend_texts(top)
    assert labels[:2] == [
        "baseline: 3/3 trained; mean of trained 91.00%",
        "transposed: 2/3 trained; mean of trained 92.50%\n    all 3 runs (table's mean): 65.00%",
    ]
    said = " ".join(labels[2:])
    for words in ("one run that trained", "one run that did not train", "95% bootstrap CI", "mean ± sd", "range"):
        assert words in said
    png_bytes(fig)


def test_accuracy_vs_time_figure_without_dead_runs_has_one_panel_and_no_cross_in_the_legend():
    table = summary().assign(trained_runs=[3, 3], test_accuracy_mean=[0.91, 0.926667])
    every = runs().assign(test_accuracy=[0.90, 0.91, 0.92, 0.92, 0.93, 0.93])
    fig = accuracy_vs_time_figure(table, every, [True] * 6, trained_accuracy(every, [True] * 6))
    (ax,) = fig.axes
    assert ax.get_ylim() == pytest.approx((89.5, 93.5))
    assert not any("did not train" in text or "all 3 runs" in text for text in legend_texts(ax))
    png_bytes(fig)


def test_clipped_sd_never_leaves_the_values():
    assert clipped_sd([10.0, 10.0, 10.0, 40.0]) == pytest.approx((17.5, 10.0, 32.5))  # sd 15: 2.5 -> 10
    assert clipped_sd([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in clipped_sd([]))


def curves_of(runs_long: pd.DataFrame, trained: dict) -> pd.DataFrame:
    return learning_curves(runs_long, trained)


def test_learning_curves_figure_clips_a_diverged_run_with_a_mark():
    curves = pd.DataFrame(
        {
            "variant": ["a"] * 9 + ["b"] * 3,
            "seed": [1, 1, 1, 2, 2, 2, 3, 3, 3, 1, 1, 1],
            "step": [0, 100, 200] * 4,
            "value": [2.0, 0.8, 0.6, 2.2, 2.5e21, np.nan, 2.4, 1.0, 0.8, 2.1, 1.0, 0.7],
        }
    )
    trained = {("a", 1): True, ("a", 2): False, ("a", 3): True, ("b", 1): True}
    fig = learning_curves_figure(curves, trained, curves_of(curves, trained), "training loss")
    (ax,) = fig.axes
    # a log axis set by the runs that trained (0.6 .. 2.4, 20% margins), not by a loss of 2.5e21
    top = 2.4 * 1.2
    assert ax.get_yscale() == "log"
    assert ax.get_ylim() == pytest.approx((0.6 / 1.2, top))
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(dashed) == 1
    assert dashed[0].get_ydata().tolist() == pytest.approx([2.2, top, top])  # clipped, not hidden
    marks = [line for line in ax.get_lines() if line.get_marker() == "^" and len(line.get_xdata())]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 100  # the first step beyond the axis
    thick = [line for line in ax.get_lines() if line.get_linewidth() == 2.0 and len(line.get_xdata())]
    # the mean of the trained runs only: a = (seed 1 + seed 3) / 2
    assert [line.get_ydata().tolist() for line in thick] == [pytest.approx([2.2, 0.9, 0.7]), [2.1, 1.0, 0.7]]
    # a's band: mean +- sd (0.1414) within the two runs' min..max, so here exactly min..max
    (band, _) = [c for c in ax.collections if len(c.get_paths()) and c.get_paths()[0].vertices.size]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.6) and ys.max() == pytest.approx(2.4)
    labels = legend_texts(ax)
    assert labels[:2] == ["a: 2 trained (mean), 1 did not (dashed)", "b: 1 trained (mean)"]
    said = " ".join(labels)
    assert "mean ± sd of the runs that trained" in said and "min–max" in said
    assert "left\nthe axis (drawn at the top edge)" in said  # the triangle is explained, since one is drawn
    assert "clipped" not in ax.get_title()
    png_bytes(fig)


def test_learning_curves_figure_in_percent_stays_within_0_100_and_claims_no_clipping():
    curves = pd.DataFrame({"variant": "a", "seed": [1, 1, 2, 2], "step": [0, 100] * 2, "value": [0.1, 0.8, 0.1, 0.1]})
    trained = {("a", 1): True, ("a", 2): False}
    fig = learning_curves_figure(curves, trained, curves_of(curves, trained), "validation accuracy (%)", percent=True)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 100)
    thick = [line for line in ax.get_lines() if line.get_linewidth() == 2.0 and len(line.get_xdata())]
    assert thick[0].get_ydata().tolist() == pytest.approx([10.0, 80.0])  # the run that did not train left out
    said = " ".join(legend_texts(ax))
    assert "top edge" not in said and "clipped" not in ax.get_title()
    assert "dashed: one run that did not train" in said
    png_bytes(fig)


def test_confusion_matrices_figure_row_normalised_grid():
    classes = ["zero", "one"]
    matrices = {
        "baseline": np.array([[3, 1], [0, 2]]),
        "transposed": np.array([[4, 0], [1, 1]]),
        "deep": np.array([[0, 0], [2, 2]]),  # an empty row stays 0, not NaN
        "upsample": np.array([[1, 1], [1, 1]]),
    }
    notes = {"baseline": "3 runs that trained", "transposed": "2 runs that trained (1 that did not left out)"}
    fig = confusion_matrices_figure(matrices, classes, notes, title="Confusion matrices of the runs that trained")
    data_axes = image_axes(fig)
    assert len(data_axes) == 4
    assert len(fig.axes) == 8  # 4 matrices + 4 colorbars; the two unused grid cells are removed
    # rows: [3, 1] / 4 = [0.75, 0.25]; [0, 2] / 2 = [0, 1]
    np.testing.assert_allclose(data_axes[0].images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(data_axes[2].images[0].get_array(), [[0.0, 0.0], [0.5, 0.5]])
    assert data_axes[0].get_title() == "baseline (pooled accuracy 83.33%)\n3 runs that trained"  # (3 + 2) / 6
    assert data_axes[1].get_title().endswith("\n2 runs that trained (1 that did not left out)")
    assert data_axes[3].get_title() == "upsample (pooled accuracy 50.00%)"  # no note: the title alone
    assert fig.get_suptitle() == "Confusion matrices of the runs that trained"
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
    fig = feature_maps_figure(images, maps, max_channels=4, title="transposed, seed 3: the champion")
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
    assert fig.get_suptitle().startswith("transposed, seed 3: the champion\n(each panel scaled to its own range")
    assert not any(ax.texts for ax in axes)  # no panel is all zero: nothing to explain
    png_bytes(fig)


def test_feature_maps_figure_says_which_black_panels_are_dead_channels():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 6, 6, 1))
    up = np.maximum(rng.normal(size=(2, 6, 6, 4)), 0)
    up[..., [0, 2]] = 0  # two ReLU channels that never fire on these images
    up[1, :, :, 1] = 0  # one that is zero on the second image only
    fig = feature_maps_figure(images, {"up": up}, title="t")
    axes = np.asarray(image_axes(fig)).reshape(2, 5)  # rows: images; columns: input, 4 channels
    said = [[ax.texts[0].get_text() if ax.texts else "" for ax in row] for row in axes]
    assert said == [
        ["", DEAD_CHANNEL, "", DEAD_CHANNEL, ""],
        ["", DEAD_CHANNEL, ZERO_PANEL, DEAD_CHANNEL, ""],
    ]
    assert DEAD_CHANNEL == "dead channel\n(all zero)"
    assert "Dead channels: up 2 of 4" in fig.get_suptitle()
    png_bytes(fig)


def test_feature_maps_figure_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="'conv'"):
        feature_maps_figure(np.zeros((2, 8, 8, 1)), {"conv": np.zeros((3, 8, 8, 1))})
