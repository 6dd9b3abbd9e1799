"""Training speed, side by side: our train-stage code path (MLflow logging on) against plain Keras
`model.fit` on the same model, batch, data, optimizer and step count, plus the machine's own float32
matmul peak.

Two peers, measured in the same run, interleaved with ours:
- the default peer: `compile` + `fit` with Keras's defaults (`steps_per_execution=1`);
- the tuned peer: the fastest (by median) of a small sweep of `steps_per_execution` values
  (`--peer-steps-per-execution`, default 1 32 100), as a skilled user would tune it. `--peer-jit`
  adds the same sweep with `jit_compile=True` (off by default on both sides). Picking the best of
  several noisy medians favours the peer slightly: conservative for our claim.

Ours runs with op determinism on, as the train stage does; the peer without it, as a plain script
(and `jit_compile` needs it off).

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


def peer_images_per_second(
    spec, config, x, y, steps: int, steps_per_execution: int = 1, jit_compile: bool = False
) -> float:
    """Plain Keras: compile + fit, the script a user would otherwise write. With the defaults
    (steps_per_execution=1, no XLA) this is the default peer; other values are the tuning a skilled
    user would try. Same model, initializer, optimizer, loss, batch and number of steps as ours."""
    import keras
    from tensorflow.python.framework import config as tf_config

    from pipeline.models import build_model
    from pipeline.training import make_optimizer

    # A plain script does not turn on op determinism (ours does, in seed_everything; process-wide),
    # and Keras silently drops jit_compile while it is on: the peer runs without it.
    deterministic = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        keras.utils.set_random_seed(1)
        model = build_model(spec, x.shape[1:], 10, initializer=config.initializer, seed=1)
        model.compile(
            optimizer=make_optimizer(config),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )
        if model.jit_compile != jit_compile:
            raise RuntimeError(f"Keras did not take jit_compile={jit_compile} for this model")
        n = steps * config.batch_size
        # warm-up: traces the train function (kept by the model) outside the timing, as ours excludes tracing
        warm = max(20, steps_per_execution) * config.batch_size
        model.fit(x[:warm], y[:warm], batch_size=config.batch_size, verbose=0)
        start = time.perf_counter()
        model.fit(x[:n], y[:n], batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
        return n / (time.perf_counter() - start)
    finally:
        if deterministic:
            tf_config.enable_op_determinism()


def ours_images_per_second(spec, config, x, y, steps: int, store: Path) -> tuple[float, float]:
    """The train stage's path: Trainer + train() with per-step MLflow logging, as pipeline.stages.train.

    Returns images/s over the whole of train() but its tracing (validation on 500 images every 100
    steps and MLflow logging included: the peer does neither), and over the step loop alone."""
    from pipeline import run_logging, tracking
    from pipeline.models import build_model
    from pipeline.training import Trainer, seed_everything, train

    config = config.model_copy(update={"steps": steps})
    seed_everything(1)
    model = build_model(spec, x.shape[1:], 10, initializer=config.initializer, seed=1)
    trainer = Trainer(model, config, x, y)

    with run_logging.tracked_run(tracking.connect(store)):
        step_logger = run_logging.StepLogger()  # the train stage's own per-chunk logging
        start = time.perf_counter()
        result = train(trainer, x[:500], y[:500], seed=1, on_chunk=step_logger.log)
        step_logger.close(result)
        wall = time.perf_counter() - start - result.trace_seconds
    images = result.steps_done * config.batch_size
    return images / wall, images / result.train_seconds


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


def peer_label(steps_per_execution: int, jit_compile: bool) -> str:
    return f"fit spe={steps_per_execution}" + (" jit" if jit_compile else "")


def span(median: float, spread: list[float]) -> str:
    return f"{median:>7,.0f} [{spread[0]:,.0f}-{spread[1]:,.0f}]"


def print_table(records: list[dict]) -> None:
    """The summary, as a Markdown table: ours against the default and the tuned model.fit peer."""
    print(
        "\nimages/s, median [min-max] of the repeats; default peer = model.fit with Keras defaults,"
        " tuned peer = fastest model.fit of the sweep (spe = steps_per_execution); ours includes validation"
        " and MLflow logging, 'loop alone' leaves them out as the peer's fit does\n"
    )
    print(
        "| variant | batch | ours | default peer | tuned peer | tuned spe | ours / default | ours / tuned"
        " | ours loop alone / tuned | share of peak |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        tuned = str(r["tuned_peer_steps_per_execution"]) + (" jit" if r["tuned_peer_jit_compile"] else "")
        print(
            f"| {r['variant']} | {r['batch_size']} | {span(r['ours_images_per_second'], r['ours_spread'])}"
            f" | {span(r['peer_images_per_second'], r['peer_spread'])}"
            f" | {span(r['tuned_peer_images_per_second'], r['tuned_peer_spread'])} | {tuned}"
            f" | {r['ratio_vs_default_peer']:.2f} | {r['ratio_vs_tuned_peer']:.2f}"
            f" | {r['ours_loop_only_images_per_second'] / r['tuned_peer_images_per_second']:.2f}"
            f" | {r['peak_fraction']:.0%} |",
            flush=True,
        )


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
    parser.add_argument(
        "--peer-steps-per-execution",
        nargs="+",
        type=int,
        default=[1, 32, 100],
        help="the tuned peer is the fastest of these (1, the default peer, is always included)",
    )
    parser.add_argument(
        "--peer-jit", action="store_true", help="also sweep the peer with jit_compile=True (XLA); off by default"
    )
    args = parser.parse_args()
    sweep = [(k, False) for k in sorted({1, *args.peer_steps_per_execution})]
    if args.peer_jit:
        sweep += [(k, True) for k, _ in sweep]

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
    print(f"peer sweep: {', '.join(peer_label(k, jit) for k, jit in sweep)}", flush=True)
    records = []
    with tempfile.TemporaryDirectory() as store:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for name in args.variants:
            spec = params.variants[name]
            forward = flops_per_image(describe(spec, (28, 28, 1), 10))
            for batch_size in args.batch_sizes:
                config = params.train.model_copy(update={"batch_size": batch_size, "validation_every": 100})
                steps = args.images // batch_size
                ours: list[float] = []
                loop_only: list[float] = []
                peers: dict[tuple[int, bool], list[float]] = {setting: [] for setting in sweep}
                runs = [None, *sweep]  # None: ours
                for repeat in range(args.repeats):
                    # interleave, rotating the order each repeat, so drift in machine load hits all alike
                    shift = repeat % len(runs)
                    for setting in runs[shift:] + runs[:shift]:
                        if setting is None:
                            whole, loop = ours_images_per_second(spec, config, x, y, steps, Path(store))
                            ours.append(whole)
                            loop_only.append(loop)
                        else:
                            k, jit = setting
                            peers[setting].append(peer_images_per_second(spec, config, x, y, steps, k, jit))
                sweep_rows = [
                    {
                        "steps_per_execution": k,
                        "jit_compile": jit,
                        "images_per_second": statistics.median(values),
                        "spread": [min(values), max(values)],
                        "samples": values,
                    }
                    for (k, jit), values in peers.items()
                ]
                default = next(r for r in sweep_rows if r["steps_per_execution"] == 1 and not r["jit_compile"])
                tuned = max(sweep_rows, key=lambda r: r["images_per_second"])
                ours_median = statistics.median(ours)
                record = {
                    "variant": name,
                    "batch_size": batch_size,
                    "steps": steps,
                    "ours_images_per_second": ours_median,
                    # peer_* and ratio: the default peer (model.fit, Keras defaults), as before
                    "peer_images_per_second": default["images_per_second"],
                    "ratio": ours_median / default["images_per_second"],
                    "ratio_vs_default_peer": ours_median / default["images_per_second"],
                    "tuned_peer_images_per_second": tuned["images_per_second"],
                    "tuned_peer_steps_per_execution": tuned["steps_per_execution"],
                    "tuned_peer_jit_compile": tuned["jit_compile"],
                    "ratio_vs_tuned_peer": ours_median / tuned["images_per_second"],
                    # training ~ 3x forward FLOPs (forward, input gradients, weight gradients)
                    "peak_fraction": 3 * forward * ours_median / peak,
                    "ours_spread": [min(ours), max(ours)],
                    "peer_spread": default["spread"],
                    "tuned_peer_spread": tuned["spread"],
                    "ours_samples": ours,
                    # ours without validation and logging: the step loop alone, as the peer's fit
                    "ours_loop_only_images_per_second": statistics.median(loop_only),
                    "ours_loop_only_spread": [min(loop_only), max(loop_only)],
                    "peer_sweep": sweep_rows,
                    "repeats": args.repeats,
                    "training_flops_per_image": 3 * forward,
                    "peak_flops_per_second": peak,
                }
                records.append(record)
                print(f"{name:>24} batch {batch_size:>4}, {steps} steps:", flush=True)
                print(f"  {'ours':>26} {span(ours_median, record['ours_spread'])}", flush=True)
                print(
                    f"  {'ours, step loop alone':>26}"
                    f" {span(record['ours_loop_only_images_per_second'], record['ours_loop_only_spread'])}",
                    flush=True,
                )
                for row in sweep_rows:
                    label = peer_label(row["steps_per_execution"], row["jit_compile"])
                    print(
                        f"  {label:>26} {span(row['images_per_second'], row['spread'])}"
                        f"  ours/this {ours_median / row['images_per_second']:.2f}",
                        flush=True,
                    )
    print_table(records)
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
