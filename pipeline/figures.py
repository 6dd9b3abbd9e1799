"""The comparison report's figures (the compare stage's; each run's own confusion figure, which the
train stage saves, is pipeline/confusion_figure.py). Each function returns a matplotlib Figure; the
caller saves it.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``), so no pyplot state
and no backend selection are involved; ``fig.savefig`` renders with Agg.

Every figure says in itself what each marker, bar and band is, and over which runs (all, or only
those that trained); no band or bar leaves the range of the runs it summarizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import AutoMinorLocator, MaxNLocator

from pipeline.confusion_figure import check_matrix, draw_confusion


def _color(i: int):
    return colormaps["tab10"](i % 10)


DIED_MARKER = "x"
GREY = "0.45"


def clipped_sd(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): mean ± sample sd, clipped to [min, max] of the values, so the bar never
    claims a value no run had. One value: (v, v, v); none: NaNs."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if not array.size:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return mean, max(mean - sd, float(array.min())), min(mean + sd, float(array.max()))


def _zoomed_limits(values: np.ndarray, pad_at_least: float) -> tuple[float, float]:
    """An axis range around the data (10% margins, at least ``pad_at_least``), inside 0-100."""
    low, high = float(np.min(values)), float(np.max(values))
    pad = max(0.1 * (high - low), pad_at_least)
    return max(low - pad, 0.0), min(high + pad, 100.0)


def _break_marks(upper, lower) -> None:
    """The // marks of a broken axis between two stacked panels."""
    size = 0.012
    style = {"color": "black", "clip_on": False, "linewidth": 1}
    for ax, y in ((upper, 0.0), (lower, 1.0)):
        for x in (0.0, 1.0):
            ax.plot((x - size, x + size), (y - 3 * size, y + 3 * size), transform=ax.transAxes, **style)


def accuracy_vs_time_figure(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    trained: Sequence[bool],
    intervals: Mapping[str, Any],
    confidence: float = 0.95,
) -> Figure:
    """Every run as a point (training time, test accuracy): the runs that trained as dots on an axis
    zoomed to them, so two points of accuracy are apart; the runs that did not train as crosses in a
    panel of their own below a broken axis. Each variant's diamond is the mean of its runs that
    trained, with a percentile bootstrap interval of that mean (vertical) and the training time's
    mean ± sd clipped to the runs' range (horizontal). The legend gives each variant's trained count,
    the mean of its trained runs and, where some did not train, the mean over all its runs (the
    summary table's), which mixes the two groups.

    ``summary``: summary_numbers.summarize's rows (variant, n_seeds, trained_runs, test_accuracy_mean);
    ``runs``: one row per run (variant, test_accuracy, train_seconds); ``trained`` flags each row of
    ``runs`` (statistics.trained); ``intervals``: per variant with a run that trained, the mean of
    those runs' test accuracy and its interval at ``confidence`` (attributes mean, low, high, as
    fractions: pooled.trained_accuracy).
    """
    trained = np.asarray(trained, dtype=bool)
    accuracy = runs["test_accuracy"].to_numpy(dtype=float) * 100
    seconds = runs["train_seconds"].to_numpy(dtype=float)
    live = trained & np.isfinite(accuracy)
    dead = ~trained & np.isfinite(accuracy)

    fig = Figure(figsize=(12, 6.5), layout="constrained")
    if live.any() and dead.any():
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    elif live.any():
        top, bottom = fig.add_subplot(), None
    else:
        top, bottom = None, fig.add_subplot()
    first = top if top is not None else bottom
    last = bottom if bottom is not None else top
    ci = f"{confidence * 100:g}%"

    for i, row in enumerate(summary.itertuples(index=False)):
        color = _color(i)
        mine = (runs["variant"] == row.variant).to_numpy()
        ok, died = mine & live, mine & dead
        label = f"{row.variant}: {int(row.trained_runs)}/{int(row.n_seeds)} trained"
        if ok.any():
            interval = intervals[row.variant]
            mean, below, above = interval.mean * 100, interval.low * 100, interval.high * 100
            label += f"; mean of trained {mean:.2f}%"
            x, x_low, x_high = clipped_sd(seconds[ok])
            top.scatter(seconds[ok], accuracy[ok], s=22, color=color, alpha=0.5, linewidths=0, zorder=2)
            low = mean - below if math.isfinite(below) else 0.0
            high = above - mean if math.isfinite(above) else 0.0
            top.errorbar(
                x,
                mean,
                xerr=[[x - x_low], [x_high - x]],
                yerr=[[low], [high]],
                fmt="D",
                markersize=8,
                markeredgecolor="black",
                capsize=4,
                color=color,
                zorder=3,
            )
        if int(row.trained_runs) < int(row.n_seeds):
            label += f"\n    all {int(row.n_seeds)} runs (table's mean): {row.test_accuracy_mean * 100:.2f}%"
        if died.any():
            bottom.scatter(
                seconds[died], accuracy[died], s=40, color=color, marker=DIED_MARKER, linewidths=1.5, zorder=2
            )
        first.plot([], [], color=color, linewidth=6, label=label)

    handles = []
    if top is not None:
        handles += [
            Line2D([], [], linestyle="", marker="o", color=GREY, alpha=0.6, label="one run that trained"),
            Line2D(
                [],
                [],
                linestyle="",
                marker="D",
                markeredgecolor="black",
                color=GREY,
                label=f"mean of the runs that trained\n  vertical bar: its {ci} bootstrap CI\n"
                "  horizontal bar: training time\n  mean ± sd, within the runs' range",
            ),
        ]
    if bottom is not None:
        where = "\n(lower panel, own axis)" if top is not None else ""
        handles.append(
            Line2D([], [], linestyle="", marker=DIED_MARKER, color=GREY, label=f"one run that did not train{where}")
        )
    if top is not None:
        top.set_ylim(*_zoomed_limits(accuracy[live], pad_at_least=0.5))
        top.yaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 5, 10]))
        top.yaxis.set_minor_locator(AutoMinorLocator())
        top.grid(True, which="major", alpha=0.35)
        top.grid(True, which="minor", alpha=0.12)
        top.set_ylabel("test accuracy (%), runs that trained\n(axis zoomed to them)")
    if bottom is not None:
        bottom.set_ylim(*_zoomed_limits(accuracy[dead], pad_at_least=2.0))
        bottom.yaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 5, 10]))
        bottom.grid(True, alpha=0.3)
        bottom.set_ylabel("did not train\n(%)" if top is not None else "test accuracy (%), runs that did not train")
        if top is not None:
            top.spines["bottom"].set_visible(False)
            bottom.spines["top"].set_visible(False)
            top.tick_params(bottom=False)
            _break_marks(top, bottom)
    last.set_xlabel("training time per run (s)")
    last.margins(x=0.08)

    first.set_title(f"Test accuracy vs training time, every run ({int(summary['n_seeds'].max())} seeds per variant)")
    variant_handles, _ = first.get_legend_handles_labels()
    first.legend(
        handles=variant_handles + handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, labelspacing=0.8
    )
    return fig


BAND_LABEL = "band: mean ± sd of the runs that trained,\nwithin their min–max at each step"


def learning_curves_figure(
    runs: pd.DataFrame,
    trained: Mapping[tuple[str, int], bool],
    curves: pd.DataFrame,
    metric_label: str,
    *,
    percent: bool = False,
) -> Figure:
    """Every run as a thin line (dashed: a run that did not train), and each variant's mean over its
    runs that trained as a thick line in a band of mean ± sd clipped to those runs' range: the very
    numbers of the `dvc plots` curve (pooled.learning_curves, pooled.curve_table). A
    percentage runs on 0-100; any other metric (the loss) on a log scale whose range is set by the
    runs that trained, so a run that diverged (a loss of 1e21, or NaN) is drawn at the top edge and
    marked with a triangle where it leaves the axis instead of flattening every other curve.

    ``runs``: long form with columns variant, seed, step, value (pooled.run_curves); ``trained``
    flags each (variant, seed); ``curves``: variant, step, mean, low, high, n over the trained runs
    (pooled.learning_curves).
    """
    fig = Figure(figsize=(11.5, 5.2), layout="constrained")
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
    clipped = any_died = False
    for i, (variant, group) in enumerate(runs.groupby("variant", sort=False)):
        color = _color(i)
        seeds = list(dict.fromkeys(group["seed"]))
        died = [s for s in seeds if not trained.get((variant, s), True)]
        any_died = any_died or bool(died)
        for seed, curve in group.groupby("seed", sort=False):
            curve = curve.sort_values("step")
            step = curve["step"].to_numpy(dtype=float)
            value = curve["value"].to_numpy(dtype=float) * scale
            if seed in died:
                over = ~np.isfinite(value) | (value > top)
                ax.plot(step, np.where(over, top, value), color=color, linewidth=0.9, linestyle="--", alpha=0.8)
                if over.any():
                    clipped = True
                    first = int(np.argmax(over))
                    ax.plot(step[first], top, marker="^", color=color, markersize=8, clip_on=False, zorder=4)
            else:
                ax.plot(step, value, color=color, linewidth=0.6, alpha=0.35)
        mine = curves[curves["variant"] == variant].sort_values("step")
        label = f"{variant}: {len(seeds) - len(died)} trained (mean)" if len(mine) else f"{variant}: none trained"
        if died:
            label += f", {len(died)} did not (dashed)"
        if len(mine):
            step = mine["step"].to_numpy(dtype=float)
            ax.fill_between(
                step,
                mine["low"].to_numpy() * scale,
                mine["high"].to_numpy() * scale,
                color=color,
                alpha=0.15,
                linewidth=0,
            )
            ax.plot(step, mine["mean"].to_numpy() * scale, color=color, linewidth=2.0, label=label)
        else:
            ax.plot([], [], color=color, linewidth=0.9, linestyle="--", label=label)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D(
            [],
            [],
            color=GREY,
            linewidth=2.0,
            label="thick: mean of the runs that trained\n(runs that did not train left out)",
        ),
        Patch(color=GREY, alpha=0.3, label=BAND_LABEL),
        Line2D([], [], color=GREY, linewidth=0.6, label="thin: one run that trained"),
    ]
    if any_died:
        handles.append(
            Line2D([], [], color=GREY, linewidth=0.9, linestyle="--", label="dashed: one run that did not train")
        )
    if clipped:
        handles.append(
            Line2D(
                [],
                [],
                color=GREY,
                marker="^",
                linestyle="",
                label="where a run that did not train left\nthe axis (drawn at the top edge)",
            )
        )
    ax.set_ylim(bottom, top)
    ax.set_xlabel("training step (batches)")
    ax.set_ylabel(metric_label + ("" if percent else ", log scale"))
    ax.set_title(f"{metric_label}: every run, and the mean of the runs that trained")
    ax.grid(True, alpha=0.3, which="both" if not percent else "major")
    if len(runs):
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, labelspacing=0.7)
    return fig


def _accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def confusion_matrices_figure(
    matrices: Mapping[str, np.ndarray],
    classes: Sequence[str],
    notes: Mapping[str, str] | None = None,
    title: str = "Confusion matrices (rows: true class, normalised; counts summed over seeds)",
) -> Figure:
    """One row-normalised confusion matrix per variant, up to 3 per row, titled with the pooled
    accuracy of its counts and the variant's line of ``notes`` (which runs were summed)."""
    notes = notes or {}
    n = len(matrices)
    ncols = max(1, min(3, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(4.8 * ncols, 4.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (variant, matrix) in zip(axes, matrices.items(), strict=False):
        matrix = check_matrix(matrix, classes, variant)
        accuracy = _accuracy(matrix)
        heading = variant if math.isnan(accuracy) else f"{variant} (pooled accuracy {accuracy * 100:.2f}%)"
        if variant in notes:
            heading += f"\n{notes[variant]}"
        draw_confusion(fig, ax, matrix, classes, heading)
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle(title)
    return fig


def _squeeze_channel(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        return images[..., 0]
    if images.ndim == 3:
        return images
    raise ValueError(f"images must have shape (k, H, W, 1) or (k, H, W), got {images.shape}")


DEAD_CHANNEL = "dead channel\n(all zero)"
ZERO_PANEL = "all zero\non this image"


def dead_channels(activations: np.ndarray) -> np.ndarray:
    """Which channels of (k, h, w, c) activations are zero everywhere on every image (a ReLU unit
    that never fires on them)."""
    activations = np.asarray(activations)
    return ~np.any(activations.reshape(-1, activations.shape[-1]) != 0, axis=0)


def feature_maps_figure(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    max_channels: int = 4,
    title: str = "Feature maps after each layer",
) -> Figure:
    """One row per input digit: the digit, then up to ``max_channels`` channels after each layer.

    Pixels are drawn unsmoothed (nearest) and each panel is scaled to its own range, so the
    checkerboard patterns transposed convolutions can leave stay visible. A panel with nothing to
    scale (all zero) would be plain black: it says so, "dead channel (all zero)" when the channel is
    zero on every image shown; the title counts each layer's dead channels.
    """
    if max_channels < 1:
        raise ValueError(f"max_channels must be at least 1, got {max_channels}")
    digits = _squeeze_channel(images)
    k = digits.shape[0]
    columns: list[tuple[str, np.ndarray, bool]] = [(f"input ({digits.shape[1]}×{digits.shape[2]})", digits, False)]
    counts = []
    for layer, activations in maps.items():
        activations = np.asarray(activations)
        if activations.ndim != 4 or activations.shape[0] != k:
            raise ValueError(f"activations of layer {layer!r} have shape {activations.shape}, expected ({k}, h, w, c)")
        _, h, w, c = activations.shape
        dead = dead_channels(activations)
        counts.append(f"{layer} {int(dead.sum())} of {c}")
        for ch in range(min(c, max_channels)):
            columns.append((f"{layer}\nch {ch} ({h}×{w})", activations[..., ch], bool(dead[ch])))

    ncols = len(columns)
    fig = Figure(figsize=(max(1.65 * ncols, 7.0), 1.75 * k + 1.2), layout="constrained")
    axes = fig.subplots(k, ncols, squeeze=False)
    for col, (label, stack, dead) in enumerate(columns):
        for row in range(k):
            ax = axes[row, col]
            ax.imshow(stack[row], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col > 0 and not np.any(stack[row] != 0):
                ax.text(
                    0.5,
                    0.5,
                    DEAD_CHANNEL if dead else ZERO_PANEL,
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="#ff8080",
                )
            if row == 0:
                ax.set_title(label, fontsize=8)
        if col == 0:
            for row in range(k):
                axes[row, 0].set_ylabel(f"image {row}", fontsize=8)
    subtitle = "each panel scaled to its own range"
    if counts:
        subtitle += (
            f"; dead channel: zero at every pixel of all {k} images shown (a ReLU that never fires on them)."
            f"\nDead channels: " + ", ".join(counts)
        )
    fig.suptitle(f"{title}\n({subtitle})", fontsize=10)
    return fig
