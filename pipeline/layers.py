"""The layer vocabulary a variant is written in: one class per layer type.

Each class declares, together, its parameters (the pydantic fields, `type` being the tag params.yaml
uses), its output shape, its parameter count, its forward FLOPs, its summary label and its Keras layer.
Adding a layer type is one class here, listed in LAYER_CLASSES, plus its row in tests/unit/test_layers.py;
the union, the type names and the name -> class map are derived from LAYER_CLASSES.

Nothing heavy at import time: Keras is imported inside keras_layer().
"""

from __future__ import annotations

import functools
import operator
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from pipeline.schema import PositiveInt, Strict

if TYPE_CHECKING:
    import keras

Shape = tuple[int, ...]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Padding = Literal["same", "valid"]
Activation = Literal["relu", "linear", "sigmoid", "tanh", "elu", "gelu", "softmax", None]


@dataclass(frozen=True)
class Placement:
    """Where a layer sits in the model being built: its Keras name, seed and tutorial biases depend on it."""

    index: int  # position in the variant's layer list
    seed: int = 0  # the run's seed
    initializer: str = "tutorial"  # train.initializer: "tutorial" | "keras"
    first_weighted: bool = True  # no conv/conv_transpose/dense layer comes before this one

    @property
    def layer_seed(self) -> int:
        return self.seed * 1000 + self.index


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output size of a convolution or pooling (Keras/TensorFlow convention)."""
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


class LayerSpec(Strict):
    """Base of every layer type. Shapes exclude the batch axis; errors are ValueErrors a user can act on."""

    type: str  # each layer type narrows it to its Literal tag
    # how many layers, from this one on, show what upsampling does (their outputs get plotted); 0: none
    upsampling_outputs: ClassVar[int] = 0
    weighted: ClassVar[bool] = False  # takes the initializer policy (kernel and bias)

    def output_shape(self, shape: Shape) -> Shape:
        """The output shape for an input shape; ValueError when that input cannot work."""
        return shape

    def params(self, shape: Shape) -> int:
        """Number of weights, given the input shape."""
        return 0

    def trainable_params(self, shape: Shape) -> int:
        """Number of trainable weights, given the input shape."""
        return self.params(shape)

    def flops(self, shape: Shape) -> int:
        """Forward FLOPs per image (2 per multiply-add), given the input shape; 0 where negligible."""
        return 0

    def label(self) -> str:
        """Short name in summarize_layers, e.g. 'conv16k5s2'."""
        return self.type

    def keras_name(self, index: int) -> str:
        """The Keras layer name: position and type, e.g. '1_conv_transpose'."""
        return f"{index}_{self.type}"

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        raise NotImplementedError

    def _image(self, shape: Shape) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise ValueError(
                f"{self.type} needs an image input (height, width, channels), got shape {shape}: put it before flatten"
            )
        return shape  # type: ignore[return-value]


class _Weighted(LayerSpec):
    activation: Activation = "relu"
    l2: Annotated[float, Field(ge=0)] = 0.0
    bias_init: FiniteFloat | None = Field(
        None,
        description=(
            "the layer's biases start at exactly this value; null: what train.initializer gives"
            " (tutorial: 0 in the first layer with weights, 1.0 in the others; keras: 0)"
        ),
    )

    weighted: ClassVar[bool] = True

    def _bias_label(self) -> str:
        """The label's suffix for bias_init, e.g. 'bias0' or 'bias-0.5'; '' when null."""
        return "" if self.bias_init is None else f"bias{self.bias_init:g}"

    def _keras_kwargs(self, at: Placement) -> dict[str, Any]:
        """Name, initializers (train.initializer, then bias_init), L2 regularizer and activation."""
        import keras

        kwargs: dict[str, Any] = {"name": self.keras_name(at.index)}
        if at.initializer == "tutorial":  # the tutorial's: truncated normal(0.1); biases 0, then 1.0
            kwargs["kernel_initializer"] = keras.initializers.TruncatedNormal(stddev=0.1, seed=at.layer_seed)
            kwargs["bias_initializer"] = keras.initializers.Constant(0.0 if at.first_weighted else 1.0)
        else:  # Keras' defaults, seeded: Glorot uniform, zero biases
            kwargs["kernel_initializer"] = keras.initializers.GlorotUniform(seed=at.layer_seed)
        if self.bias_init is not None:
            kwargs["bias_initializer"] = keras.initializers.Constant(self.bias_init)
        if self.l2:
            kwargs["kernel_regularizer"] = keras.regularizers.L2(self.l2)
        kwargs["activation"] = self.activation or "linear"
        return kwargs


class _Convolution(_Weighted):
    """What a convolution and a transposed convolution share: filters, kernel, strides, padding."""

    filters: PositiveInt
    kernel_size: PositiveInt = 5
    strides: PositiveInt = 1
    padding: Padding = "same"

    def params(self, shape: Shape) -> int:
        return self.kernel_size**2 * shape[-1] * self.filters + self.filters

    def label(self) -> str:
        return f"{self.type}{self.filters}k{self.kernel_size}s{self.strides}{self._bias_label()}"


class Conv(_Convolution):
    """2-D convolution (Keras `Conv2D`)."""

    type: Literal["conv"]

    def output_shape(self, shape: Shape) -> Shape:
        h, w, _ = self._image(shape)
        out_h = conv_output_size(h, self.kernel_size, self.strides, self.padding)
        out_w = conv_output_size(w, self.kernel_size, self.strides, self.padding)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"a {h}x{w} input is too small for kernel {self.kernel_size}")
        return (out_h, out_w, self.filters)

    def flops(self, shape: Shape) -> int:
        out_h, out_w, _ = self.output_shape(shape)
        return 2 * self.kernel_size**2 * shape[-1] * self.filters * out_h * out_w

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding, **self._keras_kwargs(at)
        )


class ConvTranspose(_Convolution):
    """Transposed convolution (Keras `Conv2DTranspose`): upsamples by `strides`."""

    type: Literal["conv_transpose"]
    output_padding: Annotated[int, Field(ge=0)] | None = None

    upsampling_outputs: ClassVar[int] = 1

    def output_shape(self, shape: Shape) -> Shape:
        h, w, _ = self._image(shape)
        if self.output_padding is not None and self.output_padding >= self.strides:
            raise ValueError(f"output_padding ({self.output_padding}) must be smaller than strides ({self.strides})")
        args = (self.kernel_size, self.strides, self.padding, self.output_padding)
        out_h, out_w = conv_transpose_output_size(h, *args), conv_transpose_output_size(w, *args)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"a {h}x{w} input is too small for kernel {self.kernel_size}")
        return (out_h, out_w, self.filters)

    def flops(self, shape: Shape) -> int:
        h, w, c = shape
        return 2 * self.kernel_size**2 * c * self.filters * h * w  # each input pixel scatters a k x k x filters patch

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.Conv2DTranspose(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            output_padding=self.output_padding,
            **self._keras_kwargs(at),
        )


class Upsample(LayerSpec):
    """Repeats (nearest) or interpolates (bilinear) each pixel `size` times (Keras `UpSampling2D`)."""

    type: Literal["upsample"]
    size: PositiveInt = 2
    interpolation: Literal["nearest", "bilinear"] = "nearest"

    upsampling_outputs: ClassVar[int] = 2  # and the layer after it, which sees the repeated pixels

    def output_shape(self, shape: Shape) -> Shape:
        h, w, c = self._image(shape)
        return (h * self.size, w * self.size, c)

    def label(self) -> str:
        return f"{self.type}{self.size}{self.interpolation[0]}"

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.UpSampling2D(self.size, interpolation=self.interpolation, name=self.keras_name(at.index))


class _Pool(LayerSpec):
    """What max and average pooling share: their parameters, output shape and Keras call."""

    KERAS_CLASS: ClassVar[str]
    pool_size: PositiveInt = 2
    strides: PositiveInt | None = None
    padding: Padding = "valid"

    def output_shape(self, shape: Shape) -> Shape:
        h, w, c = self._image(shape)
        stride = self.strides or self.pool_size
        out_h = conv_output_size(h, self.pool_size, stride, self.padding)
        out_w = conv_output_size(w, self.pool_size, stride, self.padding)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"a {h}x{w} input is too small for pool_size {self.pool_size}")
        return (out_h, out_w, c)

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        pool = getattr(keras.layers, self.KERAS_CLASS)
        return pool(self.pool_size, strides=self.strides, padding=self.padding, name=self.keras_name(at.index))


class MaxPool(_Pool):
    """Max pooling (Keras `MaxPooling2D`); `strides` null: the pool size."""

    KERAS_CLASS = "MaxPooling2D"
    type: Literal["max_pool"]


class AvgPool(_Pool):
    """Average pooling (Keras `AveragePooling2D`); `strides` null: the pool size."""

    KERAS_CLASS = "AveragePooling2D"
    type: Literal["avg_pool"]


class Dropout(LayerSpec):
    """Drops a fraction `rate` of its inputs while training (Keras `Dropout`, seeded per run and layer)."""

    type: Literal["dropout"]
    rate: Annotated[float, Field(ge=0, lt=1)]

    def label(self) -> str:
        return f"{self.type}{self.rate:g}"

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.Dropout(self.rate, seed=at.layer_seed, name=self.keras_name(at.index))


class BatchNorm(LayerSpec):
    """Batch normalization over the last axis (Keras `BatchNormalization`)."""

    type: Literal["batch_norm"]

    def params(self, shape: Shape) -> int:
        return 4 * shape[-1]  # gamma, beta (trainable) + moving mean, moving variance

    def trainable_params(self, shape: Shape) -> int:
        return 2 * shape[-1]

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.BatchNormalization(name=self.keras_name(at.index))


class Flatten(LayerSpec):
    """Flattens an image to a vector, for the dense layers after it (Keras `Flatten`)."""

    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (functools.reduce(operator.mul, shape, 1),)

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.Flatten(name=self.keras_name(at.index))


class Dense(_Weighted):
    """Fully connected layer on a flat input (Keras `Dense`); the last layer gives the logits."""

    type: Literal["dense"]
    units: PositiveInt

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ValueError(f"dense needs a flat input, got shape {shape}: add {{type: flatten}} before it")
        return (self.units,)

    def params(self, shape: Shape) -> int:
        return shape[0] * self.units + self.units

    def flops(self, shape: Shape) -> int:
        return 2 * shape[0] * self.units

    def label(self) -> str:
        return f"{self.type}{self.units}{self._bias_label()}"

    def keras_layer(self, at: Placement) -> keras.layers.Layer:
        import keras

        return keras.layers.Dense(self.units, **self._keras_kwargs(at))


# --- the registry: everything else about the vocabulary is derived from this tuple ------------------

LAYER_CLASSES: tuple[type[LayerSpec], ...] = (
    Conv,
    ConvTranspose,
    Upsample,
    MaxPool,
    AvgPool,
    Dropout,
    BatchNorm,
    Flatten,
    Dense,
)


def _type_name(cls: type[LayerSpec]) -> str:
    (name,) = typing.get_args(cls.model_fields["type"].annotation)
    return name


LAYER_MODELS: dict[str, type[LayerSpec]] = {_type_name(cls): cls for cls in LAYER_CLASSES}
LAYER_TYPES: tuple[str, ...] = tuple(LAYER_MODELS)
# a layer as params.yaml writes it: pydantic picks the class by its `type`
Layer = Annotated[functools.reduce(operator.or_, LAYER_CLASSES), Field(discriminator="type")]


# --- the reference for users (docs/variants.md holds a copy; a test keeps them equal) ---------------


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _allowed(annotation: Any, metadata: list[Any]) -> str:
    """Allowed values of a field, e.g. 'same | valid', '> 0' or '>= 0 | null', from its type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(_yaml_value(value) for value in args)
    if origin is Annotated:
        inner = [item for meta in args[1:] for item in getattr(meta, "metadata", [meta])]  # Field(...) holds its own
        return _allowed(args[0], [*inner, *metadata])
    if origin in (typing.Union, types.UnionType):
        shown = [_allowed(arg, metadata) for arg in args if arg is not type(None)]
        return " | ".join([*(part for part in shown if part), *(["null"] if type(None) in args else [])])
    bounds = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
    shown = ", ".join(
        f"{symbol} {getattr(meta, attr)}" for meta in metadata for attr, symbol in bounds if hasattr(meta, attr)
    )
    return shown or ("a number" if annotation in (int, float) else "")


def markdown_reference() -> str:
    """A Markdown list of every layer type, its parameters, their defaults and allowed values."""
    lines = []
    for name, cls in LAYER_MODELS.items():
        fields = [(key, field) for key, field in cls.model_fields.items() if key != "type"]
        own = set(cls.__annotations__)
        # required first, then the type's own parameters, then the ones it shares (activation, l2)
        fields.sort(key=lambda item: (not item[1].is_required(), item[0] not in own))
        described = []
        for key, field in fields:
            text = f"`{key}`" if field.is_required() else f"`{key}: {_yaml_value(field.default)}`"
            notes = ["required"] if field.is_required() else []
            if constraint := _allowed(field.annotation, field.metadata):
                notes.append(constraint)
            if field.description:
                notes.append(field.description)
            described.append(text + (f" ({'; '.join(notes)})" if notes else ""))
        doc = (cls.__doc__ or "").strip()
        lines.append(f"- `{name}`: {doc}")
        lines.append(f"  Parameters: {', '.join(described)}." if described else "  No parameters.")
    return "\n".join(lines) + "\n"
