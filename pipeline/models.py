"""Build a Keras model from a declarative variant spec; check its shapes; count params and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Variant
from pipeline.errors import ConfigError
from pipeline.layers import Dense, Placement, Shape
from pipeline.layers import conv_output_size as conv_output_size  # re-exported: part of this module's API
from pipeline.layers import conv_transpose_output_size as conv_transpose_output_size

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a resolved variant: its output shape, weights and forward FLOPs per image."""

    index: int
    type: str
    output_shape: Shape
    params: int
    flops: int
    trainable_params: int  # params less batch norm's moving statistics


def describe(variant: Variant, input_shape: Shape, num_classes: int) -> list[LayerInfo]:
    """Walk a spec layer by layer, checking that shapes work; no TensorFlow needed.

    Raises ValueError naming the layer when a shape cannot work.
    """
    shape: Shape = tuple(input_shape)
    infos: list[LayerInfo] = []
    for index, layer in enumerate(variant.layers):
        try:
            output_shape = layer.output_shape(shape)
        except ValueError as exc:
            # counted from 1, as users count the layers of their list
            raise ValueError(f"layer {index + 1} ({layer.type}): {exc}") from None
        params, trainable = layer.params(shape), layer.trainable_params(shape)
        infos.append(LayerInfo(index, layer.type, output_shape, params, layer.flops(shape), trainable))
        shape = output_shape
    last = variant.layers[-1]
    if not isinstance(last, Dense) or last.units != num_classes or last.activation not in (None, "linear"):
        raise ValueError(
            f"the last layer must be {{type: dense, units: {num_classes}, activation: null}} (the logits),"
            f" got {last.model_dump(exclude_defaults=True)}"
        )
    return infos


def check_variant(name: str, variant: Variant, input_shape: Shape, num_classes: int) -> list[LayerInfo]:
    """describe() with errors that name the variant, for messages before any training."""
    try:
        return describe(variant, input_shape, num_classes)
    except ValueError as exc:
        raise ConfigError(f"variants.{name}: {exc}") from None


def trainable_params(infos: list[LayerInfo]) -> int:
    """Trainable parameter count (batch norm's moving statistics are not trainable)."""
    return sum(info.trainable_params for info in infos)


def flops_per_image(infos: list[LayerInfo]) -> int:
    """Forward FLOPs (2 per multiply-add) of convolutions and dense layers; others are negligible."""
    return sum(info.flops for info in infos)


def summarize_layers(variant: Variant) -> str:
    """A one-line human description, e.g. 'conv16k5s2 > conv_transpose16k5s2 > flatten > dense64 > dense10'."""
    return " > ".join(layer.label() for layer in variant.layers)


def build_model(
    variant: Variant, input_shape: Shape, num_classes: int, *, initializer: str = "tutorial", seed: int = 0
) -> keras.Model:
    """Keras functional model for a spec. Output: logits.

    initializer "tutorial": kernels truncated normal (stddev 0.1); biases 0 for the first weighted
    layer and 1.0 for the others, as in the tutorial. "keras": Keras defaults (Glorot uniform, zeros).
    """
    import keras

    describe(variant, input_shape, num_classes)  # fail on a bad spec before building anything
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, layer in enumerate(variant.layers):
        first_weighted = not any(earlier.weighted for earlier in variant.layers[:index])
        x = layer.keras_layer(Placement(index, seed, initializer, first_weighted))(x)
    return keras.Model(inputs, x, name="variant")


def upsampling_layer_names(variant: Variant) -> list[str]:
    """Keras layer names (see build_model) of every upsampling layer, and of the layer after an upsample."""
    layers, names = variant.layers, []
    for index, layer in enumerate(layers):
        for shown in range(index, min(index + layer.upsampling_outputs, len(layers))):
            names.append(layers[shown].keras_name(shown))
    return names


def activations(model: keras.Model, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the named layers for a batch of images (to look at what upsampling layers produce)."""
    import keras

    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    outputs = probe(images, training=False)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    return {name: np.asarray(output) for name, output in zip(names, outputs, strict=True)}
