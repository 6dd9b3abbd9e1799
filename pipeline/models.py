"""Build a Keras model from a declarative variant spec; check its shapes; count params and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import (
    BatchNorm,
    Conv,
    ConvTranspose,
    Dense,
    Dropout,
    Flatten,
    MaxPool,
    Upsample,
    Variant,
)
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import keras

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a resolved variant: its output shape, weights and forward FLOPs per image."""

    index: int
    type: str
    output_shape: Shape
    params: int
    flops: int


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output size of a convolution (Keras/TensorFlow convention)."""
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def conv_transpose_output_size(
    size: int, kernel: int, stride: int, padding: str, output_padding: int | None = None
) -> int:
    """Spatial output size of a transposed convolution (Keras' deconv_output_length)."""
    if output_padding is None:
        if padding == "same":
            return size * stride
        return size * stride + max(kernel - stride, 0)
    pad = kernel // 2 if padding == "same" else 0
    return (size - 1) * stride + kernel - 2 * pad + output_padding


def _spatial(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(
            f"{what} needs an image input (height, width, channels), got shape {shape}: put it before flatten"
        )
    return shape  # type: ignore[return-value]


def describe(variant: Variant, input_shape: Shape, num_classes: int) -> list[LayerInfo]:
    """Walk a spec layer by layer, checking that shapes work; no TensorFlow needed.

    Raises ValueError naming the layer when a shape cannot work.
    """
    shape: Shape = tuple(input_shape)
    infos: list[LayerInfo] = []
    for index, layer in enumerate(variant.layers):
        params = flops = 0
        where = f"layer {index} ({layer.type})"
        if isinstance(layer, Conv | ConvTranspose):
            h, w, c = _spatial(shape, where)
            if isinstance(layer, Conv):
                out_h = conv_output_size(h, layer.kernel_size, layer.strides, layer.padding)
                out_w = conv_output_size(w, layer.kernel_size, layer.strides, layer.padding)
                flops = 2 * layer.kernel_size**2 * c * layer.filters * out_h * out_w
            else:
                if layer.output_padding is not None and layer.output_padding >= layer.strides:
                    raise ValueError(
                        f"{where}: output_padding ({layer.output_padding}) must be smaller than strides"
                        f" ({layer.strides})"
                    )
                out_h = conv_transpose_output_size(
                    h, layer.kernel_size, layer.strides, layer.padding, layer.output_padding
                )
                out_w = conv_transpose_output_size(
                    w, layer.kernel_size, layer.strides, layer.padding, layer.output_padding
                )
                # every input pixel scatters a kernel x kernel x filters patch
                flops = 2 * layer.kernel_size**2 * c * layer.filters * h * w
            if out_h < 1 or out_w < 1:
                raise ValueError(f"{where}: a {h}x{w} input is too small for kernel {layer.kernel_size}")
            params = layer.kernel_size**2 * c * layer.filters + layer.filters
            shape = (out_h, out_w, layer.filters)
        elif isinstance(layer, Upsample):
            h, w, c = _spatial(shape, where)
            shape = (h * layer.size, w * layer.size, c)
        elif isinstance(layer, MaxPool):
            h, w, c = _spatial(shape, where)
            stride = layer.strides or layer.pool_size
            out_h = conv_output_size(h, layer.pool_size, stride, layer.padding)
            out_w = conv_output_size(w, layer.pool_size, stride, layer.padding)
            if out_h < 1 or out_w < 1:
                raise ValueError(f"{where}: a {h}x{w} input is too small for pool_size {layer.pool_size}")
            shape = (out_h, out_w, c)
        elif isinstance(layer, BatchNorm):
            params = 4 * shape[-1]  # gamma, beta (trainable) + moving mean, variance
        elif isinstance(layer, Flatten):
            size = 1
            for dim in shape:
                size *= dim
            shape = (size,)
        elif isinstance(layer, Dense):
            if len(shape) != 1:
                raise ValueError(
                    f"{where}: dense needs a flat input, got shape {shape}: add {{type: flatten}} before it"
                )
            params = shape[0] * layer.units + layer.units
            flops = 2 * shape[0] * layer.units
            shape = (layer.units,)
        elif isinstance(layer, Dropout):
            pass
        infos.append(LayerInfo(index, layer.type, shape, params, flops))
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


def trainable_params(infos: list[LayerInfo], variant: Variant) -> int:
    """Trainable parameter count (batch norm's moving statistics are not trainable)."""
    total = 0
    for info, layer in zip(infos, variant.layers, strict=True):
        total += info.params // 2 if isinstance(layer, BatchNorm) else info.params
    return total


def flops_per_image(infos: list[LayerInfo]) -> int:
    """Forward FLOPs (2 per multiply-add) of convolutions and dense layers; others are negligible."""
    return sum(info.flops for info in infos)


def summarize_layers(variant: Variant) -> str:
    """A one-line human description, e.g. 'conv16k5s2 > conv_transpose16k5s2 > flatten > dense64 > dense10'."""
    parts = []
    for layer in variant.layers:
        if isinstance(layer, Conv | ConvTranspose):
            parts.append(f"{layer.type}{layer.filters}k{layer.kernel_size}s{layer.strides}")
        elif isinstance(layer, Dense):
            parts.append(f"dense{layer.units}")
        elif isinstance(layer, Upsample):
            parts.append(f"upsample{layer.size}{layer.interpolation[0]}")
        elif isinstance(layer, Dropout):
            parts.append(f"dropout{layer.rate:g}")
        else:
            parts.append(layer.type)
    return " > ".join(parts)


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
    weighted_index = 0
    for index, layer in enumerate(variant.layers):
        name = f"{index}_{layer.type}"
        kwargs: dict = {"name": name}
        if isinstance(layer, Conv | ConvTranspose | Dense):
            if initializer == "tutorial":
                kwargs["kernel_initializer"] = keras.initializers.TruncatedNormal(stddev=0.1, seed=seed * 1000 + index)
                kwargs["bias_initializer"] = keras.initializers.Constant(0.0 if weighted_index == 0 else 1.0)
            else:
                kwargs["kernel_initializer"] = keras.initializers.GlorotUniform(seed=seed * 1000 + index)
            if layer.l2:
                kwargs["kernel_regularizer"] = keras.regularizers.L2(layer.l2)
            kwargs["activation"] = layer.activation or "linear"
            weighted_index += 1
        if isinstance(layer, Conv):
            x = keras.layers.Conv2D(
                layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding, **kwargs
            )(x)
        elif isinstance(layer, ConvTranspose):
            x = keras.layers.Conv2DTranspose(
                layer.filters,
                layer.kernel_size,
                strides=layer.strides,
                padding=layer.padding,
                output_padding=layer.output_padding,
                **kwargs,
            )(x)
        elif isinstance(layer, Dense):
            x = keras.layers.Dense(layer.units, **kwargs)(x)
        elif isinstance(layer, Upsample):
            x = keras.layers.UpSampling2D(layer.size, interpolation=layer.interpolation, **kwargs)(x)
        elif isinstance(layer, MaxPool):
            x = keras.layers.MaxPooling2D(layer.pool_size, strides=layer.strides, padding=layer.padding, **kwargs)(x)
        elif isinstance(layer, Dropout):
            x = keras.layers.Dropout(layer.rate, seed=seed * 1000 + index, **kwargs)(x)
        elif isinstance(layer, BatchNorm):
            x = keras.layers.BatchNormalization(**kwargs)(x)
        elif isinstance(layer, Flatten):
            x = keras.layers.Flatten(**kwargs)(x)
    return keras.Model(inputs, x, name="variant")


def upsampling_layer_names(variant: Variant) -> list[str]:
    """Keras layer names (see build_model) of every upsampling layer, and of the layer after an upsample."""
    layers, names = variant.layers, []
    for index, layer in enumerate(layers):
        if isinstance(layer, ConvTranspose | Upsample):
            names.append(f"{index}_{layer.type}")
        if isinstance(layer, Upsample) and index + 1 < len(layers):
            names.append(f"{index + 1}_{layers[index + 1].type}")
    return names


def activations(model: keras.Model, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the named layers for a batch of images (to look at what upsampling layers produce)."""
    import keras

    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    outputs = probe(images, training=False)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    return {name: np.asarray(output) for name, output in zip(names, outputs, strict=True)}
