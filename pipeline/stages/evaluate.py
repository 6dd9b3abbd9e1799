"""DVC stage evaluate@<variant>-<seed>: test metrics, confusion matrix, inference speed; logged to the run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline import artifacts, tracking
from pipeline.config import load_params
from pipeline.evaluation import evaluate_logits, timed_logits
from pipeline.stages import run_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="models/<variant>/seed-<n>")
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>.npz")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--metrics", type=Path, required=True, help="metrics/<variant>/seed-<n>.json")
    parser.add_argument("--plots", type=Path, required=True, help="plots/<variant>/seed-<n>")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run = artifacts.read_json(args.model_dir / "run.json")
    data = artifacts.load_prepared(args.data)
    experiment_id = tracking.connect()

    import keras
    import tensorflow as tf

    model = keras.saving.load_model(args.model_dir / "model.keras")
    predict = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, *data.input_shape], tf.float32)],
    )
    batch_size = params.evaluate.batch_size
    logits, images_per_second = timed_logits(predict, data.x_test, batch_size)
    result = evaluate_logits(logits, data.y_test, data.num_classes)
    metrics = {
        "variant": run["variant"],
        "seed": run["seed"],
        "run_id": run["run_id"],
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "inference_images_per_second": images_per_second,
        "eval_batch_size": batch_size,
        "test_examples": int(len(data.y_test)),
        "per_class_accuracy": dict(zip(data.classes, result.per_class_accuracy, strict=True)),
    }

    import mlflow

    from pipeline.figures import confusion_matrix_figure

    with tracking.tracked_run(experiment_id, run_id=run["run_id"]):
        with artifacts.atomic_dir(args.plots) as plots:
            pairs = [
                (data.classes[t], data.classes[p])
                for t in range(data.num_classes)
                for p in range(data.num_classes)
                for _ in range(int(result.confusion[t, p]))
            ]
            pd.DataFrame(pairs, columns=["actual", "predicted"]).to_csv(plots / "confusion.csv", index=False)
            title = f"{tracking.run_name(run['variant'], run['seed'])}: test accuracy {result.test_accuracy:.2%}"
            confusion_matrix_figure(result.confusion, data.classes, title).savefig(
                plots / "confusion.png", dpi=100, bbox_inches="tight"
            )
            mlflow.log_artifact(str(plots / "confusion.png"))
        artifacts.write_json(args.metrics, metrics)
        tracking.log_metrics(
            {
                "test_accuracy": result.test_accuracy,
                "test_loss": result.test_loss,
                "inference_images_per_second": images_per_second,
                **{f"test_accuracy.class_{i}": v for i, v in enumerate(result.per_class_accuracy)},
            }
        )
        # a tag, not a param: re-evaluating the same trained run with another batch size must not conflict
        mlflow.set_tag("evaluate.batch_size", batch_size)
        if run.get("diverged_at_step") is not None:
            mlflow.end_run("FAILED")  # stays marked as the diverged run it is
    print(
        f"{tracking.run_name(run['variant'], run['seed'])}: test_accuracy {result.test_accuracy:.4f}"
        f"  test_loss {result.test_loss:.4f}  ({images_per_second:,.0f} images/s at batch {batch_size})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(main)
