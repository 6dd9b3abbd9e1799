"""The compare stage's report: every variant x seed run put together into tables, summary statistics,
the Markdown summary, DVC metrics, learning curves and figures (build_report); and
`python -m pipeline.reporting`, the summary of a finished comparison against another reference.

The numbers are pipeline/summary_numbers.py's, the Markdown pipeline/summary_text.py's, the curves and
confusion sums pipeline/pooled.py's, the figures pipeline/figures.py's; the compare stage writes what
build_report returns (artifacts.write_report).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import windows
from pipeline.paths import run_name
from pipeline.pooled import curve_table, learning_curves, run_curves, trained_accuracy, trained_confusions
from pipeline.summary_numbers import RUN_COLUMNS, collapsed_run, runs_table, summarize
from pipeline.summary_text import collapsed_list, summary_markdown

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipeline.artifacts import RunOutputs
    from pipeline.config import Params
    from pipeline.prepared import Prepared

FEATURE_MAP_IMAGES = 3
LOSS_WINDOW = windows.LOSS_WINDOW  # the window MLflow's training metrics use too


@dataclass
class Report:
    """Everything the compare stage writes: tables, Markdown, DVC metrics, curves and figures."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    metrics: dict[str, dict[str, Any]]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)


# reports/summary.json, the only DVC metrics file: per variant, the few numbers `dvc exp show` and
# `dvc metrics diff` compare across experiments (summary.csv keeps every statistic). Short keys: a
# column of `dvc exp show` is as wide as its name, `transposed_regularized.acc` for instance, and the
# accuracy of 8 variants fits one screen only as `acc` (README, "Comparing experiments with DVC").
# Units (README and docs/tracking.md say the same): `acc` and `trained_share` are fractions (0-1, as
# test_accuracy is in every metrics file and MLflow run), `vs_baseline_pp` is in percentage points (the
# unit of summary.md's "vs baseline, pp" column: 100 x the fraction), `train_seconds` in seconds.
# key: (summary column, factor from the column's unit to the key's)
SUMMARY_METRICS = {
    "acc": ("test_accuracy_mean", 1),
    "vs_baseline_pp": ("diff_vs_baseline_mean", 100),
    "trained_share": ("trained_share", 1),
    "train_seconds": ("train_seconds_mean", 1),
}


def summary_metrics(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """reports/summary.json: per variant the numbers summary.md leads with, under SUMMARY_METRICS'
    keys and units: mean test accuracy (fraction), mean paired difference from the baseline in
    percentage points (NaN for the baseline itself, null in the JSON), share of runs that trained
    (fraction), mean training seconds."""
    return {
        row["variant"]: {key: float(row[column]) * factor for key, (column, factor) in SUMMARY_METRICS.items()}
        for row in summary.to_dict("records")
    }


def image_maps(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The activations that are images (k, h, w, c): upsampling_layer_names also names the layer
    after an upsample, which is a flatten in `upsample_only` and has no picture to show."""
    return {name: array for name, array in maps.items() if np.ndim(array) == 4}


def champion_title(variant: str, record: Mapping[str, Any]) -> str:
    """The feature maps' title: whose model they come from and why that one."""
    return (
        f"{variant}: feature maps after each upsampling layer, {run_name(variant, record['seed'])}, the champion"
        f" (best validation accuracy, {record['val_accuracy'] * 100:.2f}%)"
    )


def build_report(
    outputs: Sequence[RunOutputs], data: Prepared, params: Params, models: Mapping[str, tuple[int, Any]]
) -> Report:
    """The comparison of every variant x seed run: tables, statistics, curves and figures.

    ``models`` maps a variant with upsampling layers to (seed, trained Keras model) of its champion
    (registry.champion: the best seed by validation accuracy), whose feature maps are drawn for a few
    test images. The learning curves (figures and `dvc plots` CSVs) and the confusion matrices are
    over the runs that trained (not collapsed_run), and say so.
    """
    from pipeline import figures
    from pipeline.models import activations, upsampling_layer_names

    runs = runs_table([o.record for o in outputs], variant_order=list(params.variants), num_classes=data.num_classes)
    summary = summarize(runs, data.num_classes)
    keys = [(o.record["variant"], o.record["seed"]) for o in outputs]
    # each run's record with its `trained` from the runs table, for collapsed_run and collapsed_list
    trained_by_run = dict(zip(zip(runs["variant"], runs["seed"], strict=True), runs["trained"], strict=True))
    records = [{**o.record, "trained": trained_by_run[key]} for o, key in zip(outputs, keys, strict=True)]
    validations = dict(zip(keys, (o.validation for o in outputs), strict=True))
    histories = dict(zip(keys, (o.history for o in outputs), strict=True))
    trained = {key: not collapsed_run(r) for key, r in zip(keys, records, strict=True)}
    val_runs = run_curves(validations, "val_accuracy")
    loss_runs = run_curves(histories, "loss", window=LOSS_WINDOW)
    val_curves = learning_curves(val_runs, trained)
    loss_curves = learning_curves(loss_runs, trained)
    matrices, notes = trained_confusions(
        dict(zip(keys, (o.confusion_pairs for o in outputs), strict=True)), trained, data.classes
    )
    report = Report(
        runs=runs[RUN_COLUMNS],  # comparison.csv: the columns `python -m pipeline.reporting` reads back
        summary=summary,
        markdown=summary_markdown(
            summary, title=f"{data.dataset}, {len(params.train.seeds)} seeds, {params.train.steps} steps"
        )
        + collapsed_list(records, data.num_classes),
        metrics=summary_metrics(summary),
        curves={"val_accuracy": curve_table(val_curves, "val_accuracy"), "loss": curve_table(loss_curves, "loss")},
    )
    run_trained = [trained[v, s] for v, s in zip(runs["variant"], runs["seed"], strict=True)]
    report.figures = {
        "accuracy_vs_time.png": figures.accuracy_vs_time_figure(
            summary, runs, run_trained, trained_accuracy(runs, run_trained)
        ),
        "learning_curves_val_accuracy.png": figures.learning_curves_figure(
            val_runs, trained, val_curves, "validation accuracy (%)", percent=True
        ),
        "learning_curves_loss.png": figures.learning_curves_figure(
            loss_runs, trained, loss_curves, f"training loss (mean of {LOSS_WINDOW} steps)"
        ),
        "confusion_matrices.png": figures.confusion_matrices_figure(
            matrices,
            data.classes,
            notes,
            title="Confusion matrices of the runs that trained (rows: true class, normalised; counts summed over"
            " those runs)",
        ),
    }
    images = data.x_test[:FEATURE_MAP_IMAGES]
    by_key = dict(zip(keys, records, strict=True))
    for variant, (seed, model) in models.items():
        maps = image_maps(activations(model, upsampling_layer_names(params.variants[variant]), images))
        figure = figures.feature_maps_figure(images, maps, title=champion_title(variant, by_key[variant, seed]))
        report.figures[f"feature_maps_{variant}.png"] = figure
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.reporting reports/comparison.csv --baseline upsample_only`: the summary of a
    finished comparison against another reference variant (a control), printed as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.reporting", description=main.__doc__)
    parser.add_argument("runs", help="reports/comparison.csv, written by the compare stage")
    parser.add_argument("--baseline", required=True, help="the variant every other one is compared with")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (chance is 1/classes)")
    args = parser.parse_args(argv)
    runs = runs_table(pd.read_csv(args.runs).to_dict("records"), num_classes=args.classes)
    if args.baseline not in set(runs["variant"]):
        raise SystemExit(f"error: {args.baseline!r} is not a variant in {args.runs}")
    print(summary_markdown(summarize(runs, args.classes, baseline=args.baseline)), end="")


if __name__ == "__main__":
    main()
