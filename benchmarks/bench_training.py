"""Training speed, side by side: our train-stage code path (MLflow logging on) against a plain Keras
`model.fit` on the same model, batch and data, plus the machine's own float32 matmul peak.

Run with `make bench`; writes reports/benchmark.json. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 FLOP/s of a large matmul: the machine's practical peak."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peer_images_per_second(spec, config, x, y, steps: int) -> float:
    """Plain Keras: compile + fit with default settings (the script a user would otherwise write)."""
    import keras

    from pipeline.models import build_model

    keras.utils.set_random_seed(1)
    model = build_model(spec, x.shape[1:], 10, initializer=config.initializer, seed=1)
    model.compile(
        optimizer=keras.optimizers.SGD(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    n = steps * config.batch_size
    model.fit(x[: 20 * config.batch_size], y[: 20 * config.batch_size], batch_size=config.batch_size, verbose=0)
    start = time.perf_counter()
    model.fit(x[:n], y[:n], batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
    return n / (time.perf_counter() - start)


def ours_images_per_second(spec, config, x, y, steps: int, store: Path) -> float:
    """The train stage's path: Trainer + train() with per-step MLflow logging, as pipeline.stages.train."""
    from pipeline import tracking
    from pipeline.models import build_model
    from pipeline.training import Trainer, seed_everything, train

    config = config.model_copy(update={"steps": steps})
    seed_everything(1)
    model = build_model(spec, x.shape[1:], 10, initializer=config.initializer, seed=1)
    trainer = Trainer(model, config, x, y)

    with tracking.tracked_run(tracking.connect(store)):
        step_logger = tracking.StepLogger()  # the train stage's own per-chunk logging
        start = time.perf_counter()
        result = train(trainer, x[:500], y[:500], seed=1, on_chunk=step_logger.log)
        step_logger.close(result)
        wall = time.perf_counter() - start - result.trace_seconds
    return result.steps_done * config.batch_size / wall


def layer_profile(spec, config, batch_size: int, peak: float, repeats: int = 30) -> list[dict]:
    """Where a training step's time goes: each layer alone, forward + backward (gradients of its input
    and weights) at this batch size, median of `repeats`, with its FLOP rate against the peak."""
    import tensorflow as tf

    from pipeline.models import build_model, describe

    model = build_model(spec, (28, 28, 1), 10, initializer=config.initializer, seed=1)
    infos = describe(spec, (28, 28, 1), 10)
    h = tf.random.uniform((batch_size, 28, 28, 1), seed=1)
    rows = []
    for index, (layer, info) in enumerate(zip(model.layers[1:], infos, strict=True)):

        @tf.function
        def step(inputs, layer=layer, first=index == 0):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(layer(inputs, training=True))
            # as in training: no gradient for the images themselves
            return tape.gradient(loss, [*([] if first else [inputs]), *layer.trainable_variables])

        step(h)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for grad in step(h):
                grad.numpy()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        flops = 3 * info.flops * batch_size
        rows.append(
            {
                "layer": layer.name,
                "output_shape": list(info.output_shape),
                "ms_per_step": 1000 * seconds,
                "training_flops_per_step": flops,
                "peak_fraction": flops / seconds / peak if flops else None,
            }
        )
        h = layer(h, training=True)
    total = sum(r["ms_per_step"] for r in rows)
    for row in rows:
        row["share_of_step"] = row["ms_per_step"] / total
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["baseline", "transposed"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 128])
    parser.add_argument("--images", type=int, default=16_000, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark.json"))
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=Path("reports/benchmark_profile.json"),
        help="per-layer time and FLOP rate of a training step: {variant: {batch size: [layers]}}",
    )
    args = parser.parse_args()

    import tensorflow as tf

    from pipeline.config import load_params
    from pipeline.models import describe, flops_per_image

    params = load_params()
    rng = np.random.default_rng(0)
    x = rng.random((args.images + 2000, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x)).astype(np.int32)
    peak = matmul_peak_flops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}")
    print(f"float32 matmul peak: {peak / 1e9:,.1f} GFLOP/s")
    records = []
    with tempfile.TemporaryDirectory() as store:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for name in args.variants:
            spec = params.variants[name]
            forward = flops_per_image(describe(spec, (28, 28, 1), 10))
            for batch_size in args.batch_sizes:
                config = params.train.model_copy(update={"batch_size": batch_size, "validation_every": 100})
                steps = args.images // batch_size
                ours, peer = [], []
                for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
                    peer.append(peer_images_per_second(spec, config, x, y, steps))
                    ours.append(ours_images_per_second(spec, config, x, y, steps, Path(store)))
                record = {
                    "variant": name,
                    "batch_size": batch_size,
                    "ours_images_per_second": statistics.median(ours),
                    "peer_images_per_second": statistics.median(peer),
                    "ratio": statistics.median(ours) / statistics.median(peer),
                    # training ~ 3x forward FLOPs (forward, input gradients, weight gradients)
                    "peak_fraction": 3 * forward * statistics.median(ours) / peak,
                    "ours_spread": [min(ours), max(ours)],
                    "peer_spread": [min(peer), max(peer)],
                    "repeats": args.repeats,
                    "training_flops_per_image": 3 * forward,
                    "peak_flops_per_second": peak,
                }
                records.append(record)
                print(
                    f"{name:>24} batch {batch_size:>4}: ours {record['ours_images_per_second']:>9,.0f} img/s"
                    f" [{min(ours):,.0f}-{max(ours):,.0f}]  peer {record['peer_images_per_second']:>9,.0f} img/s"
                    f" [{min(peer):,.0f}-{max(peer):,.0f}]  ratio {record['ratio']:.2f}"
                    f"  {record['peak_fraction']:.1%} of peak",
                    flush=True,
                )
    profile: dict[str, dict[str, list[dict]]] = {}
    for name in args.variants:
        profile[name] = {}
        for batch_size in args.batch_sizes:
            print(f"\n{name}, batch {batch_size}: where a training step goes, each layer alone (forward + backward)")
            config = params.train.model_copy(update={"batch_size": batch_size})
            rows = layer_profile(params.variants[name], config, batch_size, peak)
            profile[name][str(batch_size)] = rows
            for row in rows:
                rate = f"{row['peak_fraction']:6.1%} of peak" if row["peak_fraction"] is not None else ""
                print(
                    f"  {row['layer']:>18} {str(tuple(row['output_shape'])):>14} {row['ms_per_step']:7.2f} ms"
                    f"  {row['share_of_step']:6.1%} of the layers' time  {rate}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=2) + "\n")
    args.profile_out.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"wrote {args.out} and {args.profile_out}")


if __name__ == "__main__":
    main()
