"""DVC stage evaluate@<variant>-<seed>: test metrics, confusion matrix and inference speed of one
trained run, written to metrics/ and plots/ and logged into the run's MLflow run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import artifacts, evaluation, paths, prepared, tracking
from pipeline.config import load_params
from pipeline.runtime.stage import run_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline evaluate", description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=paths.MODELS, help=f"models root (default: {paths.MODELS})")
    parser.add_argument("--metrics", type=Path, default=paths.METRICS, help=f"metrics root (default: {paths.METRICS})")
    parser.add_argument("--plots", type=Path, default=paths.PLOTS, help=f"plots root (default: {paths.PLOTS})")
    args = parser.parse_args(argv)

    batch_size = load_params(args.params).evaluate.batch_size
    model_dir = paths.model_dir(args.variant, args.seed, args.models)
    run = artifacts.read_json(model_dir / "run.json")
    data = prepared.load(args.data)
    experiment_id = tracking.connect()
    result = evaluation.evaluate_model(
        model_dir / "model.keras", data.x_test, data.y_test, data.num_classes, batch_size
    )

    from pipeline.figures import confusion_matrix_figure

    name = paths.run_name(args.variant, args.seed)
    plots = paths.plots_dir(args.variant, args.seed, args.plots)
    diverged = run.get("diverged_at_step") is not None  # the run stays marked FAILED
    with tracking.tracked_run(experiment_id, run_id=run["run_id"], failed=diverged):
        artifacts.write_evaluation(
            plots,
            paths.metrics_file(args.variant, args.seed, args.metrics),
            evaluation.metrics_record(run, result, data.classes, batch_size),
            evaluation.confusion_pairs(result.confusion, data.classes),
            confusion_matrix_figure(
                result.confusion, data.classes, f"{name}: test accuracy {result.test_accuracy:.2%}"
            ),
        )
        per_class = evaluation.per_class_table(result, data.classes)
        tracking.log_evaluation(result, run, data, plots / "confusion.png", per_class, batch_size=batch_size)
    print(
        f"{name}: test_accuracy {result.test_accuracy:.4f}  test_loss {result.test_loss:.4f}"
        f"  ({result.images_per_second:,.0f} images/s at batch {batch_size})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(main)
