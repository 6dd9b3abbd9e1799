"""What the report's figures draw per variant, pooled over its runs that trained: learning curves (the
mean and a band at each step, also the `dvc plots` CSVs), confusion matrices summed over runs, and the
mean test accuracy of those runs.

A run that did not train (summary_numbers.collapsed_run) would drag a mean curve to chance and fill a
confusion matrix with one column, so these leave it out and say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import statistics
from pipeline.errors import DataError
from pipeline.paths import run_name
from pipeline.windows import windowed_mean

CURVE_COLUMNS = ["variant", "step", "mean", "std", "low", "high", "n"]


def learning_curves(runs: pd.DataFrame, trained: Mapping[tuple[str, int], bool] | None = None) -> pd.DataFrame:
    """Per variant and step, over the runs that trained: the mean, the sample sd (ddof=1; NaN where
    one run), a band of mean ± sd clipped to those runs' [min, max] (it never claims a value no run
    had) and the run count, in long form (CURVE_COLUMNS). ``runs``: run_curves' long form;
    ``trained`` flags each (variant, seed), a run it does not name counts as trained, None keeps
    every run. NaN values are left out; a variant with no trained run has no rows. Variants keep
    their first-seen order. learning_curves_*.png and the `dvc plots` curves both draw these numbers."""
    trained = trained or {}
    keep = np.array([trained.get((v, s), True) for v, s in zip(runs["variant"], runs["seed"], strict=True)], bool)
    long = runs.loc[keep].dropna(subset=["value"])
    if long.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(runs["variant"]))}
    curves = (
        long.groupby(["variant", "step"], sort=False)["value"]
        .agg(mean="mean", std="std", min="min", max="max", n="count")  # pandas: std is ddof=1
        .reset_index()
    )
    spread = curves["std"].fillna(0.0)
    curves["low"] = np.maximum(curves["mean"] - spread, curves["min"])
    curves["high"] = np.minimum(curves["mean"] + spread, curves["max"])
    curves["n"] = curves["n"].astype("int64")
    curves = curves.assign(_rank=curves["variant"].map(order)).sort_values(["_rank", "step"], kind="stable")
    return curves.drop(columns="_rank").reset_index(drop=True)[CURVE_COLUMNS]


def run_curves(
    histories: Mapping[tuple[str, int], pd.DataFrame], column: str, window: int | None = None
) -> pd.DataFrame:
    """Every run's ``column`` against step, in long form (variant, seed, step, value), smoothed per run
    over ``window`` steps when given (per-step minibatch loss is noisy) by windows.windowed_mean, as
    MLflow's training metrics are. A history without ``step`` or ``column`` is a DataError naming the
    run."""
    frames = []
    for (variant, seed), history in histories.items():
        for key in ("step", column):
            if key not in history.columns:
                raise DataError(f"history of {run_name(variant, seed)} has no {key!r} column")
        value = history[column]
        if window:
            value = windowed_mean(value, window)
        frames.append(pd.DataFrame({"variant": variant, "seed": seed, "step": history["step"], "value": value}))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def curve_table(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """learning_curves' rows as `dvc plots` reads them (template .dvc/plots/by_variant.json): per
    variant and step the mean over the runs that trained (``column``), the band ``column``_low ..
    ``column``_high (mean ± sd within those runs' min-max) and ``runs``, how many runs that is."""
    return pd.DataFrame(
        {
            "step": curves["step"],
            "variant": curves["variant"],
            column: curves["mean"],
            f"{column}_low": curves["low"],
            f"{column}_high": curves["high"],
            "runs": curves["n"],
        }
    )


def confusion_from_pairs(pairs: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Confusion matrix (rows: true class) from the (actual, predicted) rows of a dvc plots confusion file."""
    table = pd.crosstab(pairs["actual"].astype(str), pairs["predicted"].astype(str))
    return table.reindex(index=list(classes), columns=list(classes), fill_value=0).to_numpy()


def trained_accuracy(
    runs: pd.DataFrame, trained: Sequence[bool], confidence: float = 0.95
) -> dict[str, statistics.MeanInterval]:
    """Per variant with a run that trained: the mean test accuracy of those runs and its percentile
    bootstrap interval (statistics.mean_interval), what accuracy_vs_time.png's diamonds show beside
    the summary's mean over every run. ``trained`` flags each row of ``runs``."""
    kept = runs.loc[np.asarray(trained, dtype=bool)]
    return {
        variant: statistics.mean_interval(group["test_accuracy"].to_numpy(dtype=float), confidence)
        for variant, group in kept.groupby("variant", sort=False)
    }


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def trained_confusions(
    pairs: Mapping[tuple[str, int], pd.DataFrame], trained: Mapping[tuple[str, int], bool], classes: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each variant's confusion matrix summed over its runs that trained (a run that did not train
    predicts one class: its column would be no confusion at all), and a line per variant saying which
    runs were summed; a variant with no run that trained sums all its runs, and its line says so."""
    by_variant: dict[str, list[tuple[int, pd.DataFrame]]] = {}
    for (variant, seed), frame in pairs.items():
        by_variant.setdefault(variant, []).append((seed, frame))
    matrices, notes = {}, {}
    for variant, runs in by_variant.items():
        kept = [frame for seed, frame in runs if trained.get((variant, seed), True)]
        if kept:
            left = len(runs) - len(kept)
            notes[variant] = f"{_runs(len(kept))} that trained" + (f" ({left} that did not left out)" if left else "")
        else:
            kept = [frame for _, frame in runs]
            notes[variant] = f"no run trained: {_runs(len(runs))} summed, not a trained model's confusions"
        matrices[variant] = confusion_from_pairs(pd.concat(kept), classes)
    return matrices, notes
