"""The training loop: data order, determinism, any evaluation batch size, NaN detection, early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TrainConfig, parse_params
from pipeline.models import build_model
from pipeline.training import (
    VALIDATION_BATCH_SIZE,
    Trainer,
    batch_order,
    cross_entropy_and_accuracy,
    seed_everything,
    train,
)

SPEC = parse_params(
    {
        "variants": {
            "small": {
                "layers": [
                    {"type": "conv", "filters": 4, "kernel_size": 5, "strides": 2},
                    {"type": "conv_transpose", "filters": 4, "kernel_size": 5, "strides": 2},
                    {"type": "flatten"},
                    {"type": "dense", "units": 10, "activation": None},
                ]
            }
        }
    }
).variants["small"]


def easy_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.2
    for i, k in enumerate(y):
        x[i, 2 * k + 2 : 2 * k + 6, 4:24, 0] = 0.9
    return x, y


def run(config: TrainConfig, seed: int = 1, n: int = 400):
    x, y = easy_data(n)
    seed_everything(seed)
    model = build_model(SPEC, (28, 28, 1), 10, seed=seed)
    trainer = Trainer(model, config, x, y)
    return trainer, train(trainer, x[:100], y[:100], seed=seed)


def test_batch_order_is_shuffled_epochs_fixed_by_the_seed():
    order = batch_order(100, 16, 13, seed=5)
    assert order.shape == (13, 16)
    first_epoch = order[:6].ravel()  # 100 // 16 = 6 full batches per epoch
    assert len(set(first_epoch)) == 96
    assert np.array_equal(order, batch_order(100, 16, 13, seed=5))
    assert not np.array_equal(order, batch_order(100, 16, 13, seed=6))
    with pytest.raises(ValueError, match="larger than the 8 training examples"):
        batch_order(8, 16, 1, seed=0)


def test_steps_validation_points_and_learning():
    _, result = run(TrainConfig(steps=61, validation_every=20, batch_size=16, learning_rate=0.05, initializer="keras"))
    assert result.steps == list(range(61))
    assert result.val_steps == [0, 20, 40, 60]
    assert result.val_accuracy[-1] > 0.5  # chance is 0.1
    assert result.train_seconds > 0 and result.images_per_second(16) > 0


def test_same_seed_same_numbers():
    config = TrainConfig(steps=25, validation_every=10, initializer="keras")
    _, a = run(config, seed=3)
    _, b = run(config, seed=3)
    _, c = run(config, seed=4)
    assert a.loss == b.loss and a.val_accuracy == b.val_accuracy
    assert a.loss != c.loss


def test_a_restarted_trainer_trains_the_next_seed_exactly_like_a_new_one_without_retracing():
    # Adam has a state to go back to, dropout a random-generator state: both must restart too
    spec = parse_params(
        {
            "variants": {
                "d": {
                    "layers": [
                        {"type": "conv", "filters": 4, "kernel_size": 5, "strides": 2},
                        {"type": "dropout", "rate": 0.3},
                        {"type": "flatten"},
                        {"type": "dense", "units": 10, "activation": None},
                    ]
                }
            }
        }
    ).variants["d"]
    config = TrainConfig(steps=25, validation_every=10, initializer="keras", optimizer="adam", learning_rate=0.01)
    x, y = easy_data(400)

    def fresh(seed: int) -> Trainer:
        seed_everything(seed)
        return Trainer(build_model(spec, (28, 28, 1), 10, seed=seed), config, x, y)

    trainer = fresh(1)
    first = train(trainer, x[:100], y[:100], seed=1)
    seed_everything(2)
    trainer.restart(build_model(spec, (28, 28, 1), 10, seed=2))
    restarted = train(trainer, x[:100], y[:100], seed=2)
    new = fresh(2)
    reference = train(new, x[:100], y[:100], seed=2)
    assert restarted.loss == reference.loss and restarted.val_accuracy == reference.val_accuracy
    assert restarted.loss != first.loss
    for mine, theirs in zip(trainer.model.get_weights(), new.model.get_weights(), strict=True):
        assert np.array_equal(mine, theirs)
    assert trainer._run_steps.experimental_get_tracing_count() == 1  # traced for seed 1 only


def test_evaluation_batch_size_is_independent_of_training_batch_size():
    trainer, _ = run(TrainConfig(steps=5, batch_size=16, initializer="keras"))
    x, y = easy_data(250, seed=9)
    reference = trainer.evaluate(x, y, batch_size=250)
    for batch_size in (1, 7, 16, 64, 1000):  # 250 is not a multiple of 7, 16 or 64
        loss, accuracy = trainer.evaluate(x, y, batch_size=batch_size)
        assert accuracy == reference[1]
        assert loss == pytest.approx(reference[0], rel=1e-5)


def test_a_loss_that_becomes_nan_stops_training_and_says_at_which_step():
    _, result = run(TrainConfig(steps=200, validation_every=50, learning_rate=1e12))
    step = result.diverged_at
    assert step is not None and 0 <= step < 200
    assert result.steps_done <= step + 50  # stopped at the end of the chunk holding that step
    assert not np.isfinite(result.loss[step])
    assert np.all(np.isfinite(result.loss[:step]))


def test_early_stopping_restores_the_weights_of_the_best_validation():
    config = TrainConfig(steps=400, validation_every=10, initializer="keras", early_stopping_patience=2)
    x, y = easy_data(400)
    seed_everything(1)
    model = build_model(SPEC, (28, 28, 1), 10, initializer="keras", seed=1)
    trainer = Trainer(model, config, x, y)
    weights_at: dict[int, list[np.ndarray]] = {}  # validation step -> the weights it validated

    def record(result):  # called after each chunk; every chunk but a last short one ends in a validation
        if result.val_steps and result.val_steps[-1] not in weights_at:
            weights_at[result.val_steps[-1]] = [np.array(w) for w in model.get_weights()]

    result = train(trainer, x[:100], y[:100], seed=1, on_chunk=record)

    # it learns, then stops two validations after the best (the first to reach the highest accuracy)
    best = int(np.argmax(result.val_accuracy))
    assert best > 0 and result.val_accuracy[best] > 0.5
    assert result.stopped_early_at == result.val_steps[-1] < config.steps - 1
    assert len(result.val_steps) - 1 - best == config.early_stopping_patience
    assert result.steps_done == result.stopped_early_at + 1
    assert set(weights_at) == set(result.val_steps)
    # the model ends with the weights of the best validation, not those it stopped with
    final = model.get_weights()
    for restored, at_best in zip(final, weights_at[result.val_steps[best]], strict=True):
        np.testing.assert_array_equal(restored, at_best)
    last = weights_at[result.val_steps[-1]]
    assert any(not np.array_equal(restored, at_last) for restored, at_last in zip(final, last, strict=True))
    # the run's record gives that model's validation accuracy, not the last validation's
    assert result.restored_at == result.val_steps[best]
    assert result.final_val_accuracy == result.val_accuracy[best]
    # and validating it again gives the best validation's numbers
    assert trainer.evaluate(x[:100], y[:100], VALIDATION_BATCH_SIZE) == (
        result.val_loss[best],
        result.val_accuracy[best],
    )


def test_cross_entropy_by_hand():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    labels = np.array([0, 1])
    # p(correct) = 1/2 and 1/4: loss = (ln 2 + ln 4) / 2; accuracy: argmax picks 0 both times -> 1/2
    loss, accuracy = cross_entropy_and_accuracy(logits, labels)
    assert loss == pytest.approx((np.log(2) + np.log(4)) / 2)
    assert accuracy == 0.5


def test_the_mirrored_strategy_path_trains_like_the_plain_one():
    import tensorflow as tf

    from pipeline.training import is_chief, make_strategy

    assert make_strategy("none") is None
    strategy = make_strategy("mirrored")  # one CPU replica here; all GPUs on a GPU machine
    config = TrainConfig(steps=61, validation_every=20, initializer="keras")
    x, y = easy_data(400)
    seed_everything(1)
    with strategy.scope():
        model = build_model(SPEC, (28, 28, 1), 10, seed=1)
        trainer = Trainer(model, config, x, y, strategy=strategy)
    result = train(trainer, x[:100], y[:100], seed=1)
    _, plain = run(config, seed=1)
    assert result.val_accuracy[-1] > 0.5
    assert result.loss[0] == pytest.approx(plain.loss[0], rel=1e-4)  # same first step, summed another way
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert is_chief()  # no TF_CONFIG: a single process is its own chief


def test_chief_from_tf_config(monkeypatch):
    import json

    from pipeline.training import is_chief

    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert is_chief()
    with_chief = {"chief": ["c:0"], **cluster}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert is_chief()


def test_windowed_history_is_the_20_step_mean_at_window_ends_and_validations_however_it_is_sent():
    from pipeline.training import TrainResult
    from pipeline.windows import windowed_history

    rng = np.random.default_rng(0)
    result = TrainResult(steps=list(range(61)), loss=list(rng.random(61)), accuracy=list(rng.random(61)))
    result.val_steps = [0, 30, 60]
    whole, steps = windowed_history(result, 0, 61)
    assert steps == [0, 19, 30, 39, 59, 60]
    for i, step in enumerate(steps):
        window = result.loss[max(0, step - 19) : step + 1]
        assert whole["loss"][i] == pytest.approx(sum(window) / len(window), rel=1e-12)
    # sent in pieces (as the training loop's chunks arrive), the same steps and values
    parts = [windowed_history(result, a, b) for a, b in ((0, 1), (1, 31), (31, 61))]
    assert [s for _, part in parts for s in part] == steps
    assert [v for values, _ in parts for v in values["accuracy"]] == whole["accuracy"]


def test_windowed_mean_is_the_one_smoothing_of_mlflow_and_the_report():
    """The mean of the last 3 steps (fewer at the start), NaN and inf left out; MLflow's windowed
    history leaves out a window that holds one, so a diverged run's last means are not logged."""
    import math

    from pipeline.training import TrainResult
    from pipeline.windows import windowed_history, windowed_mean

    values = [3.0, 1.0, 2.0, 6.0, math.nan, math.inf, 4.0, 5.0, 6.0]
    # (3)/1, (3+1)/2, (3+1+2)/3, (1+2+6)/3, (2+6)/2, (6)/1, (4)/1, (4+5)/2, (4+5+6)/3
    assert windowed_mean(values, 3).tolist() == [3.0, 2.0, 2.0, 3.0, 4.0, 6.0, 4.0, 4.5, 5.0]
    assert np.isnan(windowed_mean([math.nan, math.inf], 2)).all()

    loss = [float(v) for v in np.arange(1, 41, dtype=np.float32)]
    loss[25] = math.nan
    result = TrainResult(steps=list(range(40)), loss=loss, accuracy=[0.5] * 40, val_steps=[0])
    means, steps = windowed_history(result, 0, 40)
    assert steps == [0, 19, 39]
    # steps 0 and 19: (1)/1 and (1+...+20)/20; the window of step 39 holds the NaN of step 25
    assert means["loss"][:2] == [1.0, 10.5] and math.isnan(means["loss"][2])
    assert means["accuracy"] == [0.5, 0.5, 0.5]
