"""DVC stage train@<variant>-<seed>: train one variant with one seed, tracked in MLflow."""

from __future__ import annotations

import argparse
import resource
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline import artifacts, models, tracking
from pipeline.config import load_params
from pipeline.errors import ConfigError, TrackingError, UserError
from pipeline.stages import run_stage
from pipeline.training import Trainer, TrainResult, is_chief, make_strategy, seed_everything, train


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>.npz")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("models"))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if args.variant not in params.variants:
        raise ConfigError(f"variant {args.variant!r} is not in {args.params}; known: {', '.join(params.variants)}")
    variant, config = params.variants[args.variant], params.train
    strategy = make_strategy(config.distribution)  # before any other TensorFlow op
    if not is_chief():
        tracking.use_scratch_store()  # other workers train in lockstep; only the chief logs to MLflow
    data = artifacts.load_prepared(args.data)
    infos = models.check_variant(args.variant, variant, data.input_shape, data.num_classes)
    experiment_id = tracking.connect()  # fails fast when a tracking server is down

    seed_everything(args.seed)
    with strategy.scope() if strategy else nullcontext():
        model = models.build_model(
            variant, data.input_shape, data.num_classes, initializer=config.initializer, seed=args.seed
        )
        try:
            trainer = Trainer(model, config, data.x_train, data.y_train, strategy=strategy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    stage = f"train@{args.variant}-{args.seed}"
    tags = tracking.run_tags(
        variant=args.variant,
        seed=args.seed,
        stage=stage,
        dataset=data.dataset,
        dataset_sha256=",".join(data.source_sha256),
    )
    name = tracking.run_name(args.variant, args.seed)

    def progress(result: TrainResult) -> None:
        step_logger.log(result)
        if result.val_steps and result.val_steps[-1] == result.steps[-1]:
            print(
                f"{name}: step {result.val_steps[-1]:>5}/{config.steps}  loss {result.loss[-1]:.4f}"
                f"  minibatch accuracy {result.accuracy[-1]:.3f}  val_accuracy {result.val_accuracy[-1]:.4f}"
                f"  ({result.images_per_second(config.batch_size):,.0f} images/s)",
                file=sys.stderr,
                flush=True,
            )

    import mlflow

    model_dir = args.out / args.variant / f"seed-{args.seed}"
    with tracking.tracked_run(experiment_id, name=name, tags=tags) as run:
        step_logger = tracking.StepLogger()
        mlflow.log_params(
            {
                "variant": args.variant,
                "seed": args.seed,
                "variant.layers": models.summarize_layers(variant),
                **tracking.flatten("data", params.data.model_dump(exclude={"mirrors", "sha256"})),
                **tracking.flatten("train", config.model_dump(exclude={"seeds"})),
            }
        )
        result = train(trainer, data.x_valid, data.y_valid, seed=args.seed, on_chunk=progress)
        if result.diverged_at is not None:
            message = (
                f"{name}: the training loss became NaN/inf at step {result.diverged_at}:"
                " lower train.learning_rate or check the data"
            )
            if config.on_divergence == "fail":
                raise UserError(message)
            print(f"warning: {message}; recorded as a diverged run (train.on_divergence: record)", file=sys.stderr)
        summary = {
            "variant": args.variant,
            "seed": args.seed,
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "steps": result.steps_done,
            "stopped_early_at": result.stopped_early_at,
            "diverged_at_step": result.diverged_at,
            "val_accuracy": result.val_accuracy[-1] if result.val_accuracy else None,
            "train_seconds": result.train_seconds,
            "trace_seconds": result.trace_seconds,
            "validation_seconds": result.validation_seconds,
            "train_images_per_second": result.images_per_second(config.batch_size),
            "trainable_params": models.trainable_params(infos, variant),
            "flops_per_image": models.flops_per_image(infos),
            "peak_memory_mb": peak_memory_mb(),
        }
        # the trained model and its metrics reach the disk before anything else can fail
        artifacts.write_trained(
            model_dir, model, result, spec={"variant": args.variant, **variant.model_dump()}, run=summary
        )
        try:
            step_logger.close(result)
            mlflow.log_metrics({k: v for k, v in summary.items() if k in _METRICS and v is not None})
            mlflow.log_artifact(str(model_dir / "spec.json"))
            tracking.log_keras_model(model, data.x_valid[:2] if len(data.x_valid) else data.x_train[:2])
            if result.diverged_at is not None:
                mlflow.set_tag("diverged_at_step", result.diverged_at)
        except Exception as exc:
            raise TrackingError(
                f"{name}: training finished and its model and metrics are saved in {model_dir}, but logging"
                f" to MLflow failed ({exc}). Fix the tracking store and rerun `dvc repro`."
            ) from None
        if result.diverged_at is not None:
            mlflow.end_run("FAILED")
    print(
        f"{name}: trained {result.steps_done} steps in {result.train_seconds:.1f}s"
        f" ({summary['train_images_per_second']:,.0f} images/s), val_accuracy {summary['val_accuracy']}",
        file=sys.stderr,
    )


_METRICS = (  # val_accuracy is already logged as a series
    "train_seconds",
    "trace_seconds",
    "validation_seconds",
    "train_images_per_second",
    "trainable_params",
    "flops_per_image",
    "peak_memory_mb",
)


if __name__ == "__main__":
    run_stage(main)
