"""DVC stage compare: one table of every variant x seed run, a per-variant summary with paired tests,
figures, and an MLflow summary run that points at the runs it summarizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline import artifacts, models, reporting, tracking
from pipeline.config import load_params
from pipeline.figures import (
    accuracy_vs_time_figure,
    confusion_matrices_figure,
    feature_maps_figure,
    learning_curves_figure,
)
from pipeline.stages import run_stage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FEATURE_MAP_IMAGES = 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--plots", type=Path, default=Path("plots"))
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>.npz")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    records, histories, validations, matrices = [], {}, {}, {}
    for variant in params.variants:
        for seed in params.train.seeds:
            run_dir = args.models / variant / f"seed-{seed}"
            records.append(
                {
                    **artifacts.read_json(run_dir / "run.json"),
                    **artifacts.read_json(args.metrics / variant / f"seed-{seed}.json"),
                }
            )
            histories[variant, seed] = pd.read_csv(run_dir / "history.csv")
            validations[variant, seed] = pd.read_csv(run_dir / "validation.csv")
            pairs = pd.read_csv(args.plots / variant / f"seed-{seed}" / "confusion.csv")
            matrices.setdefault(variant, []).append(pairs)
    data = artifacts.load_prepared(args.data)
    runs = reporting.runs_table(records, variant_order=list(params.variants))
    summary = reporting.summarize(runs)

    val_curves = reporting.learning_curves(validations, "val_accuracy")
    loss_curves = reporting.rolling_mean(reporting.learning_curves(histories, "loss"))
    figures = {
        "accuracy_vs_time.png": accuracy_vs_time_figure(summary),
        "learning_curves_val_accuracy.png": learning_curves_figure(val_curves, "validation accuracy"),
        "learning_curves_loss.png": learning_curves_figure(loss_curves, "training loss (mean of 20 steps)"),
        "confusion_matrices.png": confusion_matrices_figure(
            {v: reporting.confusion_from_pairs(pd.concat(p), data.classes) for v, p in matrices.items()}, data.classes
        ),
    }
    figures.update(_feature_maps(params, args.models, data.x_test[:FEATURE_MAP_IMAGES]))

    title = f"{data.dataset}, {len(params.train.seeds)} seeds, {params.train.steps} steps"
    markdown = reporting.summary_markdown(summary, title=title)
    diverged = [r for r in records if r.get("diverged_at_step") is not None]
    collapsed = [r for r in records if reporting.collapsed_run(r, data.num_classes)]
    if collapsed:
        markdown += (
            f"\nRuns that ended at chance level (test accuracy below {1.5 / data.num_classes:.0%}: the network"
            " predicts one class; kept in the statistics above):\n\n"
        )
        markdown += "".join(
            f"- {tracking.run_name(r['variant'], r['seed'])}: {r['test_accuracy']:.2%}"
            + (f", loss became NaN/inf at step {r['diverged_at_step']}" if r in diverged else "")
            + "\n"
            for r in collapsed
        )
    metrics = {
        row.variant: {
            "test_accuracy_mean": row.test_accuracy_mean,
            "test_accuracy_std": row.test_accuracy_std,
            "diff_vs_baseline_mean": row.diff_vs_baseline_mean,
            "p_value": row.p_value,
            "train_seconds_mean": row.train_seconds_mean,
            "diverged_runs": sum(1 for r in diverged if r["variant"] == row.variant),
            "collapsed_runs": sum(1 for r in collapsed if r["variant"] == row.variant),
        }
        for row in summary.itertuples()
    }
    out = args.out
    (out / "figures").mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "comparison.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown)
    artifacts.write_json(out / "summary.json", metrics)
    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    for column, long in (("val_accuracy", val_curves), ("loss", loss_curves)):
        reporting.curve_table(long, column).to_csv(curves / f"{column}.csv", index=False)
    for name, figure in figures.items():
        figure.savefig(out / "figures" / name, dpi=100, bbox_inches="tight")

    experiment_id = tracking.connect()
    import mlflow

    with tracking.tracked_run(
        experiment_id, name="summary", tags={"summary": "true", **tracking.context_tags()}
    ) as run:
        mlflow.log_params(
            {"variants": ",".join(params.variants), "train.seeds": ",".join(map(str, params.train.seeds))}
        )
        mlflow.log_metrics(
            {f"{v}.{k}": x for v, m in artifacts.json_safe(metrics).items() for k, x in m.items() if x is not None}
        )
        mlflow.log_artifacts(str(out), artifact_path="reports")
        mlflow.set_tag("summary.runs", ",".join(runs["run_id"]))
        client = mlflow.MlflowClient()
        for run_id in runs["run_id"]:
            client.set_tag(run_id, "summary_run_id", run.info.run_id)
    print(markdown, file=sys.stderr)


def _feature_maps(params, models_dir: Path, images: np.ndarray) -> dict[str, Figure]:
    """Per variant with upsampling layers: their activations for a few test images (first seed)."""
    import keras

    figures = {}
    for variant, spec in params.variants.items():
        names = models.upsampling_layer_names(spec)
        if names:
            model = keras.saving.load_model(models_dir / variant / f"seed-{params.train.seeds[0]}" / "model.keras")
            maps = models.activations(model, names, images)
            figure = feature_maps_figure(images, maps)
            figure.suptitle(f"{variant}: feature maps after each upsampling layer (each panel scaled to its own range)")
            figures[f"feature_maps_{variant}.png"] = figure
    return figures


if __name__ == "__main__":
    run_stage(main)
