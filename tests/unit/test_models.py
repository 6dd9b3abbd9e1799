"""Variant specs: shapes of every shipped variant, transposed-conv arithmetic, FLOPs, spec errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from support import ROOT

from pipeline.config import load_params, parse_params
from pipeline.errors import ConfigError
from pipeline.models import (
    build_model,
    check_variant,
    conv_transpose_output_size,
    describe,
    flops_per_image,
    summarize_layers,
    trainable_params,
    upsampling_layer_names,
)

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def shipped():
    return load_params(ROOT / "params.yaml")


def variant(*layers):
    return parse_params({"variants": {"v": {"layers": list(layers)}}}).variants["v"]


HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]


def test_tutorial_shapes(shipped):
    baseline = [i.output_shape for i in describe(shipped.variants["baseline"], SHAPE, 10)]
    assert baseline == [(14, 14, 16), (7, 7, 16), (784,), (64,), (10,)]
    transposed = [i.output_shape for i in describe(shipped.variants["transposed"], SHAPE, 10)]
    assert transposed == [(14, 14, 16), (28, 28, 16), (12544,), (64,), (10,)]  # 14 -> 28


def test_every_shipped_variant_builds_with_the_described_shapes(shipped):
    for name, spec in shipped.variants.items():
        infos = check_variant(name, spec, SHAPE, 10)
        model = build_model(spec, SHAPE, 10, seed=1)
        keras_shapes = [tuple(layer.output.shape[1:]) for layer in model.layers[1:]]
        assert keras_shapes == [i.output_shape for i in infos], name
        assert model.count_params() == sum(i.params for i in infos), name
        assert model(np.zeros((3, *SHAPE), np.float32)).shape == (3, 10)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "output_padding"),
    [
        (14, 5, 2, "same", None),
        (7, 4, 2, "same", None),
        (14, 5, 2, "valid", None),
        (7, 3, 2, "valid", 1),
        (14, 5, 2, "same", 1),
        (13, 3, 1, "same", None),
    ],
)
def test_conv_transpose_arithmetic_matches_keras(size, kernel, stride, padding, output_padding):
    import keras

    layer = keras.layers.Conv2DTranspose(2, kernel, strides=stride, padding=padding, output_padding=output_padding)
    keras_size = layer.compute_output_shape((None, size, size, 3))[1]
    assert conv_transpose_output_size(size, kernel, stride, padding, output_padding) == keras_size


def test_flops_and_params_against_hand_counts(shipped):
    # baseline: conv1 2*25*1*16*14*14 = 156,800; conv2 2*25*16*16*7*7 = 627,200;
    #           dense 2*784*64 = 100,352; dense 2*64*10 = 1,280  -> 885,632
    infos = describe(shipped.variants["baseline"], SHAPE, 10)
    assert flops_per_image(infos) == 156_800 + 627_200 + 100_352 + 1_280
    # params: 25*16+16 = 416; 25*16*16+16 = 6,416; 784*64+64 = 50,240; 64*10+10 = 650
    assert trainable_params(infos) == 416 + 6_416 + 50_240 + 650
    # transposed: conv1 156,800; conv_transpose scatters 5*5*16 per input pixel and input channel:
    #             2*25*16*16*14*14 = 2,508,800; dense 2*12544*64 = 1,605,632; dense 1,280
    infos = describe(shipped.variants["transposed"], SHAPE, 10)
    assert flops_per_image(infos) == 156_800 + 2_508_800 + 1_605_632 + 1_280
    assert trainable_params(infos) == 416 + 6_416 + 802_880 + 650


def test_batch_norm_moving_statistics_are_not_trainable():
    spec = variant({"type": "conv", "filters": 4, "kernel_size": 3}, {"type": "batch_norm"}, *HEAD)
    infos = describe(spec, SHAPE, 10)
    model = build_model(spec, SHAPE, 10)
    assert trainable_params(infos) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_summary_line(shipped):
    assert summarize_layers(shipped.variants["transposed"]) == (
        "conv16k5s2 > conv_transpose16k5s2 > flatten > dense64 > dense10"
    )


def test_a_variant_with_every_layer_type_builds_as_described():
    spec = variant(
        {"type": "conv", "filters": 4, "kernel_size": 3, "padding": "valid"},  # 28 -> 26
        {"type": "batch_norm"},
        {"type": "max_pool"},  # 26 -> 13
        {"type": "conv_transpose", "filters": 3, "kernel_size": 3, "strides": 2},  # 13 -> 26
        {"type": "avg_pool", "pool_size": 2},  # 26 -> 13
        {"type": "upsample", "size": 2},  # 13 -> 26
        {"type": "dropout", "rate": 0.2},
        *HEAD,
    )
    infos = describe(spec, SHAPE, 10)
    model = build_model(spec, SHAPE, 10, seed=1)
    assert [layer.name for layer in model.layers[1:]] == [f"{i.index}_{i.type}" for i in infos]
    assert [tuple(layer.output.shape[1:]) for layer in model.layers[1:]] == [i.output_shape for i in infos]
    assert infos[4].output_shape == (13, 13, 3)
    assert model.count_params() == sum(i.params for i in infos)
    assert trainable_params(infos) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert summarize_layers(spec) == (
        "conv4k3s1 > batch_norm > max_pool > conv_transpose3k3s2 > avg_pool > upsample2n > dropout0.2 > flatten"
        " > dense10"
    )
    assert upsampling_layer_names(spec) == ["3_conv_transpose", "5_upsample", "6_dropout"]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "dense", "units": 10, "activation": None}], "layer 1 (dense): dense needs a flat input"),
        ([{"type": "flatten"}, {"type": "conv", "filters": 3}, *HEAD], "layer 2 (conv): conv needs an image input"),
        ([{"type": "conv", "filters": 3, "kernel_size": 29, "padding": "valid"}, *HEAD], "too small for kernel 29"),
        ([{"type": "flatten"}, {"type": "dense", "units": 7, "activation": None}], "the last layer must be"),
        ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}], "the last layer must be"),
        (
            [{"type": "conv_transpose", "filters": 3, "strides": 2, "output_padding": 2}, *HEAD],
            "output_padding (2) must be smaller than strides (2)",
        ),
    ],
)
def test_shapes_that_cannot_work_name_the_variant_and_layer(layers, message):
    with pytest.raises(ConfigError) as err:
        check_variant("mine", variant(*layers), SHAPE, 10)
    assert "variants.mine:" in str(err.value)
    assert message in str(err.value)


def test_tutorial_initialisation():
    spec = variant({"type": "conv", "filters": 4, "kernel_size": 3}, *HEAD)
    model = build_model(spec, SHAPE, 10, initializer="tutorial", seed=3)
    conv, dense = model.layers[1], model.layers[3]
    kernel = np.asarray(conv.kernel)
    assert np.abs(kernel).max() <= 0.2 + 1e-6  # truncated at 2 standard deviations of 0.1
    assert 0.05 < kernel.std() < 0.1
    assert np.all(np.asarray(conv.bias) == 0.0)  # first layer's biases 0
    assert np.all(np.asarray(dense.bias) == 1.0)  # the others 1.0
    again = build_model(spec, SHAPE, 10, initializer="tutorial", seed=3)
    assert np.array_equal(np.asarray(again.layers[1].kernel), kernel)


def test_shipped_params_file_is_valid_yaml_with_the_contract_keys():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("dataset", "mirrors", "validation_size"):
        assert key in raw["data"]
    for key in ("batch_size", "steps", "learning_rate", "seeds"):
        assert key in raw["train"]
    assert raw["train"]["batch_size"] == 16 and raw["train"]["steps"] == 1001
    assert raw["train"]["learning_rate"] == 0.05
    assert isinstance(raw["data"]["mirrors"], list) and isinstance(raw["train"]["seeds"], list)


def test_transposed_bias0_is_transposed_with_zero_conv_transpose_biases(shipped):
    transposed, control = shipped.variants["transposed"], shipped.variants["transposed_bias0"]
    assert list(shipped.variants).index("transposed_bias0") == list(shipped.variants).index("transposed") + 1
    assert "bias-1.0 hypothesis" in control.description
    changed = [i for i, (a, b) in enumerate(zip(transposed.layers, control.layers, strict=True)) if a != b]
    assert changed == [1]
    assert control.layers[1].model_copy(update={"bias_init": None}) == transposed.layers[1]
    assert control.layers[1].bias_init == 0.0
    assert summarize_layers(control) == "conv16k5s2 > conv_transpose16k5s2bias0 > flatten > dense64 > dense10"


@pytest.mark.parametrize("initializer", ["tutorial", "keras"])
def test_bias_init_sets_a_built_models_initial_biases_exactly(shipped, initializer):
    # transposed_bias0: conv_transpose starts at 0; the other layers keep train.initializer's biases
    model = build_model(shipped.variants["transposed_bias0"], SHAPE, 10, initializer=initializer, seed=1)
    biases = {layer.name: np.asarray(layer.bias) for layer in model.layers if getattr(layer, "bias", None) is not None}
    assert list(biases) == ["0_conv", "1_conv_transpose", "3_dense", "4_dense"]
    later = 1.0 if initializer == "tutorial" else 0.0
    assert np.all(biases["0_conv"] == 0.0)
    assert np.all(biases["1_conv_transpose"] == 0.0)
    assert np.all(biases["3_dense"] == later) and np.all(biases["4_dense"] == later)
    # null keeps the initializer's: the tutorial's 1.0 on the transposed convolution of `transposed`
    plain = build_model(shipped.variants["transposed"], SHAPE, 10, initializer=initializer, seed=1)
    assert np.all(np.asarray(plain.get_layer("1_conv_transpose").bias) == later)
    # same seed, same kernels: only the bias differs
    assert np.array_equal(
        np.asarray(plain.get_layer("1_conv_transpose").kernel), np.asarray(model.get_layer("1_conv_transpose").kernel)
    )
    mixed = variant(
        {"type": "conv", "filters": 2, "bias_init": -0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": None, "bias_init": 2.5},
    )
    built = build_model(mixed, SHAPE, 10, initializer=initializer, seed=2)
    assert np.all(np.asarray(built.layers[1].bias) == np.float32(-0.25))
    assert np.all(np.asarray(built.layers[3].bias) == np.float32(2.5))
