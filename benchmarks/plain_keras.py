"""The plain one-process Keras script a user would write instead of the pipeline, for
benchmarks/bench_pipeline.py: import once, then for each variant and seed of params.yaml build the
network, `fit` it (batch and steps as train.*, steps_per_execution as given), evaluate on the test
set. Same prepared data, same networks (pipeline.models.build_model), no tracking, no files.

`--validate`: what a user reproducing the protocol would add, validation on the validation split
before training and every train.validation_every steps (Keras validates at the end of each epoch,
so the steps run as epochs of validation_every steps: 1000 of the 1001 steps, 11 validations, as
the pipeline's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--validate", action="store_true", help="validate as the pipeline does (see above)")
    args = parser.parse_args()

    import keras

    from pipeline import prepared
    from pipeline.config import load_params
    from pipeline.models import build_model
    from pipeline.training import make_optimizer

    params, data = load_params(args.params), prepared.load(args.data)
    config = params.train
    for variant, spec in params.variants.items():
        for seed in config.seeds:
            start = time.perf_counter()
            keras.utils.set_random_seed(seed)
            model = build_model(spec, data.input_shape, data.num_classes, initializer=config.initializer, seed=seed)
            model.compile(
                optimizer=make_optimizer(config),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
                steps_per_execution=args.steps_per_execution,
            )
            if args.validate:
                model.evaluate(data.x_valid, data.y_valid, batch_size=params.evaluate.batch_size, verbose=0)
                rounds = {
                    "epochs": config.steps // config.validation_every,
                    "steps_per_epoch": config.validation_every,
                    "validation_data": (data.x_valid, data.y_valid),
                    "validation_batch_size": params.evaluate.batch_size,
                }
            else:
                rounds = {"epochs": 1, "steps_per_epoch": config.steps}
            model.fit(data.x_train, data.y_train, batch_size=config.batch_size, verbose=0, **rounds)
            _, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=params.evaluate.batch_size, verbose=0)
            print(
                f"{variant}/seed-{seed}: test_accuracy {accuracy:.4f} in {time.perf_counter() - start:.1f}s", flush=True
            )


if __name__ == "__main__":
    main()
