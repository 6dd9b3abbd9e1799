"""DVC stage train@<variant>: train every seed of one variant and test each on the test set, in one
process; each seed is one MLflow run that starts and ends with its own training and testing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import artifacts, evaluation, models, paths, prepared, tracking, training
from pipeline.config import load_params
from pipeline.figures import confusion_matrix_figure
from pipeline.runtime.stage import run_stage, stage_peak_memory_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=paths.MODELS, help=f"models root (default: {paths.MODELS})")
    parser.add_argument("--metrics", type=Path, default=paths.METRICS, help=f"metrics root (default: {paths.METRICS})")
    parser.add_argument("--plots", type=Path, default=paths.PLOTS, help=f"plots root (default: {paths.PLOTS})")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    spec, config = params.variant(args.variant, source=args.params), params.train
    strategy = training.make_strategy(config.distribution)  # before any other TensorFlow op
    if not training.is_chief():
        tracking.use_scratch_store()  # other workers train in lockstep; only the chief logs to MLflow
    data = prepared.load(args.data)
    layers = models.check_variant(args.variant, spec, data.input_shape, data.num_classes)
    experiment_id = tracking.connect()  # fails fast when a tracking server is down
    tensors = training.data_tensors(data.x_train, data.y_train)  # once for every seed
    trainer = None  # built for the first seed, restarted for the others (traced once)
    for count, seed in enumerate(config.seeds, 1):
        name = paths.run_name(args.variant, seed)
        trainer = training.build_trainer(
            spec, config, data, seed=seed, strategy=strategy, tensors=tensors, previous=trainer
        )
        with tracking.training_run(experiment_id, args.variant, seed, params, data, layers) as run:
            progress = (run.log_steps, training.progress_printer(f"{name} ({count}/{len(config.seeds)})", config))
            result = training.run(trainer, data, seed=seed, name=name, on_chunk=progress)
            record = {
                "variant": args.variant,
                "seed": seed,
                "run_id": run.run_id,
                "experiment_id": run.experiment_id,
                **training.run_record(result, config, spec, layers),
                "data_scaling": data.scaling,  # what `python -m pipeline predict` scales a file's pixels with
                "peak_memory_mb": stage_peak_memory_mb(),
            }
            model_dir = paths.model_dir(args.variant, seed, args.models)
            # the trained model and its metrics reach the disk before anything else can fail
            artifacts.write_trained(
                model_dir, trainer.model, result, spec={"variant": args.variant, **spec.model_dump()}, run=record
            )
            run.finish(trainer.model, result, record, model_dir, data)
            tested = evaluation.evaluate(
                trainer.predict, data.x_test, data.y_test, data.num_classes, params.evaluate.batch_size
            )
            plots = paths.plots_dir(args.variant, seed, args.plots)
            artifacts.write_evaluation(
                plots,
                paths.metrics_file(args.variant, seed, args.metrics),
                evaluation.metrics_record(record, tested, data.classes, params.evaluate.batch_size),
                evaluation.confusion_pairs(tested.confusion, data.classes),
                confusion_matrix_figure(
                    tested.confusion, data.classes, f"{name}: test accuracy {tested.test_accuracy:.2%}"
                ),
            )
            run.log_evaluation(tested, data, plots / "confusion.png", evaluation.per_class_table(tested, data.classes))
        print(
            f"{name}: trained {result.steps_done} steps in {result.train_seconds:.1f}s"
            f" ({record['train_images_per_second']:,.0f} images/s), val_accuracy {record['val_accuracy']},"
            f" test_accuracy {tested.test_accuracy:.4f} ({tested.images_per_second:,.0f} images/s at batch"
            f" {params.evaluate.batch_size})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    run_stage(main)
