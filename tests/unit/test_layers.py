"""The layer vocabulary: every registered type's shape, params, FLOPs, label and Keras layer; the README's list."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from support import ROOT

from pipeline import layers
from pipeline.layers import LAYER_CLASSES, LAYER_MODELS, LAYER_TYPES, Layer, LayerSpec, Placement, markdown_reference

# type -> cases: (the layer as params.yaml writes it, input shape, output shape, params, trainable params,
# FLOPs per image, summary label). A new layer type needs at least one row here, with values counted by hand.
CASES: dict[str, list[tuple[dict, tuple, tuple, int, int, int, str]]] = {
    "conv": [
        # 25*1*16 + 16 weights; 2 * 25*1*16 multiply-adds at each of 14*14 outputs
        ({"filters": 16, "kernel_size": 5, "strides": 2}, (28, 28, 1), (14, 14, 16), 416, 416, 156_800, "conv16k5s2"),
        ({"filters": 4, "kernel_size": 3, "padding": "valid"}, (28, 28, 1), (26, 26, 4), 40, 40, 48_672, "conv4k3s1"),
    ],
    "conv_transpose": [
        # each of 14*14 input pixels scatters 25*16*16 multiply-adds
        (
            {"filters": 16, "kernel_size": 5, "strides": 2},
            (14, 14, 16),
            (28, 28, 16),
            6_416,
            6_416,
            2_508_800,
            "conv_transpose16k5s2",
        ),
        # (13-1)*2 + 3 + output_padding 1 = 28
        (
            {"filters": 3, "kernel_size": 3, "strides": 2, "padding": "valid", "output_padding": 1},
            (13, 13, 4),
            (28, 28, 3),
            111,
            111,
            36_504,
            "conv_transpose3k3s2",
        ),
        # bias_init changes no count, only the starting biases (and the label)
        (
            {"filters": 16, "kernel_size": 5, "strides": 2, "bias_init": 0.0},
            (14, 14, 16),
            (28, 28, 16),
            6_416,
            6_416,
            2_508_800,
            "conv_transpose16k5s2bias0",
        ),
    ],
    "upsample": [
        ({}, (14, 14, 16), (28, 28, 16), 0, 0, 0, "upsample2n"),
        ({"size": 3, "interpolation": "bilinear"}, (7, 7, 2), (21, 21, 2), 0, 0, 0, "upsample3b"),
    ],
    "max_pool": [
        ({}, (28, 28, 4), (14, 14, 4), 0, 0, 0, "max_pool"),
        ({"pool_size": 3, "strides": 1, "padding": "same"}, (28, 28, 4), (28, 28, 4), 0, 0, 0, "max_pool"),
    ],
    "avg_pool": [
        ({}, (28, 28, 4), (14, 14, 4), 0, 0, 0, "avg_pool"),
        ({"pool_size": 3, "strides": 2}, (28, 28, 4), (13, 13, 4), 0, 0, 0, "avg_pool"),  # (28-3)//2 + 1
    ],
    "dropout": [({"rate": 0.3}, (784,), (784,), 0, 0, 0, "dropout0.3")],
    "batch_norm": [({}, (26, 26, 4), (26, 26, 4), 16, 8, 0, "batch_norm")],  # gamma, beta trainable; moving stats not
    "flatten": [({}, (7, 7, 16), (784,), 0, 0, 0, "flatten")],
    "dense": [
        ({"units": 64}, (784,), (64,), 50_240, 50_240, 100_352, "dense64"),
        ({"units": 64, "bias_init": -0.5}, (784,), (64,), 50_240, 50_240, 100_352, "dense64bias-0.5"),
    ],
}
ALL_CASES = [
    pytest.param(name, *case, id=f"{name}-{i}") for name, cases in CASES.items() for i, case in enumerate(cases)
]
ADAPTER = TypeAdapter(Layer)


def parse(name: str, fields: dict) -> LayerSpec:
    return ADAPTER.validate_python({"type": name, **fields})


@pytest.mark.parametrize("name", LAYER_TYPES)
def test_every_layer_type_has_hand_counted_cases(name):
    assert CASES.get(name), f"layer type {name!r} has no row in CASES: add its shape, params and FLOPs"


def test_the_registry_is_the_one_list():
    assert set(CASES) == set(LAYER_TYPES)
    assert tuple(LAYER_MODELS.values()) == LAYER_CLASSES
    assert set(typing.get_args(typing.get_args(Layer)[0])) == set(LAYER_CLASSES)
    concrete = {
        cls
        for cls in vars(layers).values()
        if isinstance(cls, type)
        and issubclass(cls, LayerSpec)
        and typing.get_origin(cls.model_fields["type"].annotation) is typing.Literal
    }
    assert concrete == set(LAYER_CLASSES), "a layer class is defined but missing from LAYER_CLASSES"


@pytest.mark.parametrize(("name", "fields", "shape", "output", "params", "trainable", "flops", "label"), ALL_CASES)
def test_shape_params_flops_and_label(name, fields, shape, output, params, trainable, flops, label):
    layer = parse(name, fields)
    assert type(layer) is LAYER_MODELS[name]
    assert layer.output_shape(shape) == output
    assert (layer.params(shape), layer.trainable_params(shape), layer.flops(shape)) == (params, trainable, flops)
    assert layer.label() == label


@pytest.mark.parametrize(("name", "fields", "shape", "output", "params", "trainable", "flops", "label"), ALL_CASES)
def test_keras_layer_agrees(name, fields, shape, output, params, trainable, flops, label):
    import keras

    layer = parse(name, fields)
    built = layer.keras_layer(Placement(index=3, seed=2))
    result = built(keras.Input(shape=shape))
    assert built.name == f"3_{name}"
    assert tuple(result.shape[1:]) == output
    assert built.count_params() == params
    assert sum(int(np.prod(w.shape)) for w in built.trainable_weights) == trainable


@pytest.mark.parametrize(
    ("name", "fields", "shape", "message"),
    [
        ("conv", {"filters": 3}, (784,), "conv needs an image input (height, width, channels), got shape (784,)"),
        ("conv_transpose", {"filters": 3}, (784,), "conv_transpose needs an image input"),
        ("upsample", {}, (784,), "upsample needs an image input"),
        ("max_pool", {}, (784,), "max_pool needs an image input"),
        ("avg_pool", {}, (784,), "avg_pool needs an image input"),
        ("conv", {"filters": 3, "kernel_size": 29, "padding": "valid"}, (28, 28, 1), "28x28 input is too small"),
        ("avg_pool", {"pool_size": 3}, (2, 2, 1), "a 2x2 input is too small for pool_size 3"),
        ("conv_transpose", {"filters": 3, "strides": 2, "output_padding": 2}, (7, 7, 1), "output_padding (2) must"),
        ("dense", {"units": 4}, (7, 7, 1), "dense needs a flat input, got shape (7, 7, 1): add {type: flatten}"),
    ],
)
def test_shapes_that_cannot_work(name, fields, shape, message):
    with pytest.raises(ValueError) as err:
        parse(name, fields).output_shape(shape)
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["conv", "conv_transpose", "dense"])
def test_weighted_layers_take_the_initializer_policy(name):
    import keras

    fields = {"units": 8} if name == "dense" else {"filters": 8}
    layer = parse(name, {**fields, "activation": None, "l2": 0.01})
    first = layer.keras_layer(Placement(index=2, seed=3, initializer="tutorial", first_weighted=True))
    assert isinstance(first.kernel_initializer, keras.initializers.TruncatedNormal)
    assert first.kernel_initializer.get_config()["stddev"] == 0.1
    assert first.kernel_initializer.seed == 3002
    assert first.bias_initializer.get_config() == {"value": 0.0}
    assert first.activation is keras.activations.linear
    assert first.kernel_regularizer.get_config() == {"l2": pytest.approx(0.01)}
    later = layer.keras_layer(Placement(index=2, seed=3, initializer="tutorial", first_weighted=False))
    assert later.bias_initializer.get_config() == {"value": 1.0}
    glorot = parse(name, fields).keras_layer(Placement(index=4, seed=1, initializer="keras", first_weighted=False))
    assert isinstance(glorot.kernel_initializer, keras.initializers.GlorotUniform)
    assert glorot.kernel_initializer.seed == 1004
    assert isinstance(glorot.bias_initializer, keras.initializers.Zeros)
    assert glorot.kernel_regularizer is None
    assert glorot.activation is keras.activations.relu


WITH_BIAS = [name for name in LAYER_TYPES if "bias_init" in LAYER_MODELS[name].model_fields]
WITHOUT_BIAS = [name for name in LAYER_TYPES if name not in WITH_BIAS]


def test_the_layers_with_a_bias_take_bias_init():
    assert WITH_BIAS == ["conv", "conv_transpose", "dense"]


def _built_bias(name: str, at: Placement, **fields) -> np.ndarray:
    import keras

    shape, size = ((5,), {"units": 3}) if name == "dense" else ((6, 6, 2), {"filters": 3, "kernel_size": 3})
    built = parse(name, {**size, **fields}).keras_layer(at)
    built(keras.Input(shape=shape))  # creates the weights
    return np.asarray(built.bias)


@pytest.mark.parametrize("name", ["conv", "conv_transpose", "dense"])
@pytest.mark.parametrize("initializer", ["tutorial", "keras"])
@pytest.mark.parametrize("first_weighted", [True, False])
@pytest.mark.parametrize("value", [0.0, 0.25, -1.5])
def test_bias_init_sets_every_initial_bias_exactly(name, initializer, first_weighted, value):
    at = Placement(index=1, seed=4, initializer=initializer, first_weighted=first_weighted)
    bias = _built_bias(name, at, bias_init=value)
    assert bias.shape == (3,)
    assert np.all(bias == np.float32(value))


@pytest.mark.parametrize("name", ["conv", "conv_transpose", "dense"])
@pytest.mark.parametrize(
    ("initializer", "first_weighted", "expected"),
    [("tutorial", True, 0.0), ("tutorial", False, 1.0), ("keras", True, 0.0), ("keras", False, 0.0)],
)
def test_bias_init_null_keeps_the_initializers_bias(name, initializer, first_weighted, expected):
    at = Placement(index=1, seed=4, initializer=initializer, first_weighted=first_weighted)
    assert parse(name, {"units": 3} if name == "dense" else {"filters": 3}).bias_init is None
    assert np.all(_built_bias(name, at) == expected)
    assert np.all(_built_bias(name, at, bias_init=None) == expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "zero"])
def test_bias_init_must_be_a_finite_number(value):
    with pytest.raises(ValidationError, match="bias_init"):
        parse("conv", {"filters": 3, "bias_init": value})


@pytest.mark.parametrize("name", WITHOUT_BIAS)
def test_a_layer_without_a_bias_rejects_bias_init_naming_variant_layer_and_key(name):
    from pipeline.config import parse_params
    from pipeline.errors import ConfigError

    fields = {**CASES[name][0][0], "bias_init": 0.0}
    layers_ = [
        {"type": "conv", "filters": 2},
        {"type": name, **fields},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]
    with pytest.raises(ConfigError) as err:
        parse_params({"variants": {"mine": {"layers": layers_}}})
    message = str(err.value)
    assert f"variants.mine.layers[1].bias_init: variant 'mine', layer 2 ({name}) has no bias" in message
    assert "layers with a bias: conv, conv_transpose, dense" in message


def test_dropout_is_seeded_by_run_and_position():
    built = parse("dropout", {"rate": 0.5}).keras_layer(Placement(index=5, seed=2))
    assert built.seed == 2005 and built.rate == 0.5


@pytest.mark.parametrize("name", [n for n in LAYER_TYPES if LAYER_MODELS[n].model_fields.keys() - {"type"}])
def test_unknown_keys_are_rejected(name):
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        parse(name, {**CASES[name][0][0], "colour": "red"})


def test_reference_lists_every_type_with_its_parameters():
    text = markdown_reference()
    for name, cls in LAYER_MODELS.items():
        assert f"- `{name}`: " in text
        for field in cls.model_fields.keys() - {"type"}:
            assert f"`{field}" in text.split(f"- `{name}`: ")[1].split("\n- ")[0], (name, field)
    assert "`filters` (required; > 0)" in text
    assert "`padding: same` (same | valid)" in text
    assert "`output_padding: null` (>= 0 | null)" in text
    assert "`rate` (required; >= 0, < 1)" in text
    assert "`bias_init: null` (a number | null; the layer's biases start at exactly this value; null: what" in text


START, END = "<!-- layer-types:start -->", "<!-- layer-types:end -->"


def test_variants_doc_layer_list_is_the_vocabulary():
    lines = (ROOT / "docs" / "variants.md").read_text().splitlines()
    # the block is what users read for the layer types: without it the list cannot be checked, and fails
    assert START in lines and END in lines, f"docs/variants.md has lost its {START} ... {END} block (the layer types)"
    block = "\n".join(lines[lines.index(START) + 1 : lines.index(END)])
    assert block.strip() == markdown_reference().strip(), (
        "docs/variants.md's layer list is out of date: replace the lines between the markers with the output of"
        " `python -c 'from pipeline.layers import markdown_reference as m; print(m(), end=\"\")'`"
    )
