"""DVC stage train@<variant>-<seed>: train one variant with one seed, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import artifacts, models, paths, prepared, tracking, training
from pipeline.config import load_params
from pipeline.runtime.stage import run_stage, stage_peak_memory_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=paths.MODELS, help=f"models root (default: {paths.MODELS})")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    spec, config = params.variant(args.variant, source=args.params), params.train
    strategy = training.make_strategy(config.distribution)  # before any other TensorFlow op
    if not training.is_chief():
        tracking.use_scratch_store()  # other workers train in lockstep; only the chief logs to MLflow
    data = prepared.load(args.data)
    layers = models.check_variant(args.variant, spec, data.input_shape, data.num_classes)
    experiment_id = tracking.connect()  # fails fast when a tracking server is down
    trainer = training.build_trainer(spec, config, data, seed=args.seed, strategy=strategy)
    name, model_dir = paths.run_name(args.variant, args.seed), paths.model_dir(args.variant, args.seed, args.out)
    with tracking.training_run(experiment_id, args.variant, args.seed, params, data) as run:
        progress = (run.log_steps, training.progress_printer(name, config))
        result = training.run(trainer, data, seed=args.seed, name=name, on_chunk=progress)
        record = {
            "variant": args.variant,
            "seed": args.seed,
            "run_id": run.run_id,
            "experiment_id": run.experiment_id,
            **training.run_record(result, config, spec, layers),
            "data_scaling": data.scaling,  # what `python -m pipeline predict` scales a file's pixels with
            "peak_memory_mb": stage_peak_memory_mb(),
        }
        # the trained model and its metrics reach the disk before anything else can fail
        artifacts.write_trained(
            model_dir, trainer.model, result, spec={"variant": args.variant, **spec.model_dump()}, run=record
        )
        run.finish(trainer.model, result, record, model_dir, data)
    print(
        f"{name}: trained {result.steps_done} steps in {result.train_seconds:.1f}s"
        f" ({record['train_images_per_second']:,.0f} images/s), val_accuracy {record['val_accuracy']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(main)
