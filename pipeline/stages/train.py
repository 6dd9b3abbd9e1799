"""DVC stage train@<variant>: train every seed of one variant and test each on the test set, in one
process; each seed is one MLflow run that starts and ends with its own training and testing."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import models, paths, prepared, tracking, training
from pipeline.config import load_params
from pipeline.runner import OutputRoots, Runner
from pipeline.runtime.stage import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's arguments; run_stage parses them first, so `--help` and a usage error answer at once."""
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", type=Path, default=paths.MODELS, help=f"models root (default: {paths.MODELS})")
    parser.add_argument("--metrics", type=Path, default=paths.METRICS, help=f"metrics root (default: {paths.METRICS})")
    parser.add_argument("--plots", type=Path, default=paths.PLOTS, help=f"plots root (default: {paths.PLOTS})")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    params.variant(args.variant, source=args.params)  # an unknown --variant is named, with a "did you mean"
    config = params.train
    training.set_threads(config.threads)  # before any TensorFlow op, as the strategy below
    strategy = training.make_strategy(config.distribution)
    if not training.is_chief():
        tracking.use_scratch_store()  # other workers train in lockstep; only the chief logs to MLflow
    data = prepared.load(args.data)
    for name, variant in params.variants.items():  # every variant: a bad one stops the first stage, before any training
        models.check_variant(name, variant, data.input_shape, data.num_classes)
    experiment_id = tracking.connect()  # fails fast when a tracking server is down
    runner = Runner(params, data, experiment_id, strategy=strategy)
    outputs = OutputRoots(args.models, args.metrics, args.plots)
    for count, seed in enumerate(config.seeds, 1):
        runner.run(args.variant, seed, outputs, label=f" ({count}/{len(config.seeds)})")


if __name__ == "__main__":
    run_stage(main, parse_args)
