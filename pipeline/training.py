"""Training: seeding, a compiled multi-step loop, periodic validation, timing."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import TrainConfig, Variant
from pipeline.errors import ConfigError, UserError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from pipeline.prepared import Prepared


@dataclass
class TrainResult:
    """What a training run produced, besides the trained model itself."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    trace_seconds: float = 0.0
    validation_seconds: float = 0.0
    stopped_early_at: int | None = None
    diverged_at: int | None = None  # first step whose loss was NaN/inf; training stopped there
    restored_at: int | None = None  # early stopping: the validation step whose weights the model ends with

    @property
    def final_val_accuracy(self) -> float | None:
        """The validation accuracy of the weights the model ends with: the restored best's under early
        stopping, else the last validation's."""
        if not self.val_accuracy:
            return None
        return (
            self.val_accuracy[self.val_steps.index(self.restored_at)]
            if self.restored_at is not None
            else self.val_accuracy[-1]
        )

    @property
    def steps_done(self) -> int:
        return len(self.steps)

    def images_per_second(self, batch_size: int) -> float:
        return self.steps_done * batch_size / self.train_seconds if self.train_seconds else float("nan")


def seed_everything(seed: int) -> None:
    """Same seed, same result on CPU: Python, NumPy and TensorFlow seeds plus deterministic ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def set_threads(threads: int) -> None:
    """Pin TensorFlow's intra- and inter-op thread pools to `threads` (train.threads), before its
    first op: by default TensorFlow takes one thread per core, and oneDNN splits its reductions by
    thread count, so the same seed would give other numbers on a machine with another core count.

    A process whose pools are already set (a second stage's main in the same process, a warm grid
    worker) keeps them when they are the same; other counts there are an error, not a silent change.
    """
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    if (intra, inter) == (threads, threads):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow's context already runs: its pools are what they are
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if (intra or cores, inter or cores) == (threads, threads):  # 0: TensorFlow's default, one per core
            return
        raise UserError(
            f"train.threads is {threads}, but this process already runs TensorFlow with {intra} intra-op and"
            f" {inter} inter-op threads: start a new process for runs with another train.threads"
        ) from None


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Indices of every minibatch, shape (steps, batch_size): shuffled epochs, as the tutorial's next_batch.

    Depends only on the seed, so two variants trained with one seed see the same data in the same order.
    """
    if num_examples < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = math.ceil(steps / per_epoch)
    order = np.concatenate([rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def make_strategy(kind: str) -> tf.distribute.Strategy | None:
    """train.distribution: "none" (default), "mirrored" (all local GPUs) or "multi_worker"
    (MultiWorkerMirroredStrategy over the workers in the standard TF_CONFIG). Create it first thing:
    TensorFlow needs the multi-worker strategy before any other op runs."""
    import tensorflow as tf

    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def is_chief() -> bool:
    """The worker that logs to MLflow: task "chief", or worker 0 when the cluster has no chief."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    if task.get("type") == "chief":
        return True
    return (
        "chief" not in config.get("cluster", {})
        and task.get("type", "worker") == "worker"
        and task.get("index", 0) == 0
    )


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    return keras.optimizers.SGD(config.learning_rate)


class Trainer:
    """Runs many training steps per call in one compiled TensorFlow function.

    At the tutorial's batch of 16 a step is mostly per-call overhead, so the loop over steps lives in
    the graph and returns every step's loss and minibatch accuracy at once.
    """

    def __init__(
        self,
        model: keras.Model,
        config: TrainConfig,
        x_train: np.ndarray,
        y_train: np.ndarray,
        strategy: tf.distribute.Strategy | None = None,
    ):
        """With a tf.distribute strategy, build the model and this Trainer inside strategy.scope()."""
        import tensorflow as tf

        self.model = model
        self.config = config
        self.optimizer = make_optimizer(config)
        self.optimizer.build(model.trainable_variables)
        self._optimizer_start = [v.numpy() for v in self.optimizer.variables]  # what `restart` goes back to
        # one copy, read straight from x_train (memory-mapped by pipeline.prepared: never read twice);
        # `data_tensors` makes it once for several Trainers
        self._x, self._y = data_tensors(x_train, y_train)
        step = self._distributed_step(strategy, config.batch_size) if strategy is not None else self._local_step()

        def run_steps(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """One compiled call: a step per row of indices; every step's loss and minibatch accuracy."""
            count = tf.shape(indices)[0]
            losses = tf.TensorArray(tf.float32, size=count)
            accuracies = tf.TensorArray(tf.float32, size=count)
            for i in tf.range(count):
                loss, accuracy = step(indices[i])
                losses = losses.write(i, loss)
                accuracies = accuracies.write(i, accuracy)
            return losses.stack(), accuracies.stack()

        def predict(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self._run_steps = tf.function(run_steps, input_signature=[tf.TensorSpec([None, config.batch_size], tf.int32)])
        self._predict = tf.function(predict, input_signature=[tf.TensorSpec([None, *x_train.shape[1:]], tf.float32)])

    def _local_step(self) -> Callable:
        """One training step on this device: the loss and minibatch accuracy of the batch at `indices`."""
        import keras
        import tensorflow as tf

        model, variables = self.model, self.model.trainable_variables
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def step(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x = tf.gather(self._x, indices)
            y = tf.gather(self._y, indices)
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = loss_fn(y, logits)
                if model.losses:
                    loss += tf.add_n(model.losses)
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            return loss, tf.reduce_mean(tf.cast(correct, tf.float32))

        return step

    def _distributed_step(self, strategy: tf.distribute.Strategy, batch_size: int) -> Callable:
        """The same step, its batch split across the strategy's replicas (devices or workers).

        Every replica takes its own slice of the step's indices; gradients are summed across replicas
        by the optimizer, so all replicas keep identical weights.
        """
        import keras
        import tensorflow as tf

        replicas = strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(f"train.batch_size {batch_size} must be divisible by the {replicas} replicas")
        model, variables = self.model, self.model.trainable_variables
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

        def replica_step(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            context = tf.distribute.get_replica_context()
            mine = tf.reshape(indices, [replicas, -1])[context.replica_id_in_sync_group]
            x, y = tf.gather(self._x, mine), tf.gather(self._y, mine)
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.nn.compute_average_loss(loss_fn(y, logits), global_batch_size=batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            return loss, tf.reduce_sum(tf.cast(correct, tf.float32)) / batch_size

        def step(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            loss, accuracy = strategy.run(replica_step, args=(indices,))
            total = tf.distribute.ReduceOp.SUM
            return strategy.reduce(total, loss, axis=None), strategy.reduce(total, accuracy, axis=None)

        return step

    def restart(self, model: keras.Model) -> None:
        """Start training over from `model`, a freshly built model of the same variant: its values
        (weights and random-generator states) replace this model's, the optimizer's state goes back to
        where it began. The compiled graphs are kept, so a stage traces them once for all its seeds."""
        for mine, fresh in zip(self.model.variables, model.variables, strict=True):
            mine.assign(fresh)
        for variable, start in zip(self.optimizer.variables, self._optimizer_start, strict=True):
            variable.assign(start)

    def trace(self) -> float:
        """Compile the graphs once, ahead of timing; returns the seconds it took."""
        start = time.perf_counter()
        self._run_steps.get_concrete_function()
        self._predict.get_concrete_function()
        return time.perf_counter() - start

    @property
    def train_size(self) -> int:
        """How many training examples the steps draw their batches from."""
        return len(self._y)

    @property
    def predict(self) -> Callable:
        """The model's logits for a batch of images, compiled once (validation and testing share it)."""
        return self._predict

    def run_steps(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        losses, accuracies = self._run_steps(indices)
        return losses.numpy(), accuracies.numpy()

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """Mean loss and accuracy over (x, y) in batches of any size."""
        logits = predict_logits(self._predict, x, batch_size)
        return cross_entropy_and_accuracy(logits, y)


def data_tensors(x: np.ndarray | tf.Tensor, y: np.ndarray | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The training images and int32 labels as tensors (tensors already: as they are). A stage that
    trains several seeds copies its training set once, not per seed (its cost: docs/performance.md)."""
    import tensorflow as tf

    return tf.convert_to_tensor(x), tf.cast(tf.convert_to_tensor(y), tf.int32)


def predict_logits(predict: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for every row of x, in batches; the last batch may be smaller (unlike the tutorial's TF1 graph)."""
    outputs = [np.asarray(predict(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def cross_entropy_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy, computed stably in float64."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    z = logits.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged model's NaN logits give a NaN loss
        z -= z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(len(labels)), labels].mean()
    accuracy = (logits.argmax(axis=1) == labels).mean()
    return float(loss), float(accuracy)


# validation speed only: results do not depend on it
VALIDATION_BATCH_SIZE = 1000

ProgressFn = Callable[[TrainResult], None]


def train(
    trainer: Trainer,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    seed: int,
    eval_batch_size: int = VALIDATION_BATCH_SIZE,
    on_chunk: ProgressFn | None = None,
) -> TrainResult:
    """Train for config.steps steps, validating after step 0 and every validation_every steps.

    Steps are numbered from 0 like the tutorial's loop. A loss that becomes NaN/inf stops training:
    the result's diverged_at says at which step (the weights are then unusable). With
    early_stopping_patience set, training stops after that many validations without a better
    val_accuracy and the best weights are restored.
    """
    config = trainer.config
    x_valid, y_valid = np.array(x_valid), np.array(y_valid)  # in memory (may be mapped): read every validation
    result = TrainResult()
    result.trace_seconds = trainer.trace()
    order = batch_order(trainer.train_size, config.batch_size, config.steps, seed)
    # chunk boundaries: after step 0, then every validation_every steps, then the rest
    bounds = sorted({0, *range(1, config.steps, config.validation_every), config.steps})
    best, best_weights, since_best = -1.0, None, 0
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        t0 = time.perf_counter()
        losses, accuracies = trainer.run_steps(order[start:stop])
        result.train_seconds += time.perf_counter() - t0
        result.steps.extend(range(start, stop))
        result.loss.extend(losses.tolist())
        result.accuracy.extend(accuracies.tolist())
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            result.diverged_at = start + int(bad[0])
            if on_chunk is not None:
                on_chunk(result)
            return result
        last = stop - 1
        if last % config.validation_every == 0 or stop == config.steps:
            t0 = time.perf_counter()
            val_loss, val_accuracy = trainer.evaluate(x_valid, y_valid, eval_batch_size)
            result.validation_seconds += time.perf_counter() - t0
            result.val_steps.append(last)
            result.val_loss.append(val_loss)
            result.val_accuracy.append(val_accuracy)
            if config.early_stopping_patience is not None and not math.isnan(val_accuracy):
                if val_accuracy > best:
                    best, best_weights, since_best = val_accuracy, trainer.model.get_weights(), 0
                    result.restored_at = last  # the weights the model ends with (restored below)
                else:
                    since_best += 1
                    if since_best >= config.early_stopping_patience:
                        result.stopped_early_at = last
        if on_chunk is not None:
            on_chunk(result)
        if result.stopped_early_at is not None:
            break
    if best_weights is not None:
        trainer.model.set_weights(best_weights)
    return result


# --- one run, as the train stage does it ------------------------------------------------------


def build_trainer(
    spec: Variant,
    config: TrainConfig,
    data: Prepared,
    *,
    seed: int,
    strategy: tf.distribute.Strategy | None = None,
    tensors: tuple[tf.Tensor, tf.Tensor] | None = None,
    previous: Trainer | None = None,
) -> Trainer:
    """Seed everything, build the variant's model and its Trainer (inside the strategy's scope), on
    `tensors` (`data_tensors` of the training split) when given.

    `previous`, the Trainer of the same variant's last seed, is restarted from the new model instead
    (`Trainer.restart`): the same values and the same compiled graphs, so the same results, without
    tracing them again (what that saves: docs/performance.md).
    """
    from contextlib import nullcontext

    from pipeline.models import build_model

    seed_everything(seed)
    with strategy.scope() if strategy else nullcontext():
        model = build_model(spec, data.input_shape, data.num_classes, initializer=config.initializer, seed=seed)
        if previous is not None:
            previous.restart(model)
            return previous
        try:
            x, y = tensors if tensors is not None else (data.x_train, data.y_train)
            return Trainer(model, config, x, y, strategy=strategy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def run(trainer: Trainer, data: Prepared, *, seed: int, name: str, on_chunk: Sequence[ProgressFn] = ()) -> TrainResult:
    """train() on the prepared splits, then apply train.on_divergence: a NaN/inf loss fails the
    stage ("fail") or is recorded as a diverged run with a warning ("record")."""

    def progress(result: TrainResult) -> None:
        for callback in on_chunk:
            callback(result)

    result = train(trainer, data.x_valid, data.y_valid, seed=seed, on_chunk=progress)
    if result.diverged_at is not None:
        message = (
            f"{name}: the training loss became NaN/inf at step {result.diverged_at}:"
            " lower train.learning_rate or check the data"
        )
        if trainer.config.on_divergence == "fail":
            raise UserError(message)
        print(f"warning: {message}; recorded as a diverged run (train.on_divergence: record)", file=sys.stderr)
    return result


def progress_printer(name: str, config: TrainConfig) -> ProgressFn:
    """A line on stderr after each validation: step, loss, minibatch and validation accuracy, speed."""

    def show(result: TrainResult) -> None:
        if result.val_steps and result.val_steps[-1] == result.steps[-1]:
            print(
                f"{name}: step {result.val_steps[-1]:>5}/{config.steps}  loss {result.loss[-1]:.4f}"
                f"  minibatch accuracy {result.accuracy[-1]:.3f}  val_accuracy {result.val_accuracy[-1]:.4f}"
                f"  ({result.images_per_second(config.batch_size):,.0f} images/s)",
                file=sys.stderr,
                flush=True,
            )

    return show
