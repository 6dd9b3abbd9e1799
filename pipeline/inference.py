"""A trained network as users call it: raw pixels in, class probabilities out.

The logged MLflow model (and so `mlflow models serve` and `python -m pipeline predict`) is the
trained network wrapped with the pixel scaling it was trained with in front and a softmax behind.
It takes float32 images N x 28 x 28 with pixel values 0-255, as an IDX or PNG file holds them; nobody
has to know `data.scaling` to use it.
"""

from __future__ import annotations

from typing import Any

from pipeline.scaling import rescaling


def classifier(network: Any, scaling: str, name: str = "classifier") -> Any:
    """The trained network (logits) with the pixel scaling in front and a softmax behind.

    The weights are the network's own (shared, not copied). Its input is raw pixels 0-255 as float32,
    N x H x W for a one-channel network (the channel axis is added inside), else N x H x W x C.
    """
    import keras

    scale, offset = rescaling(scaling)  # data.scaling's map (pipeline.scaling); checks the value
    shape = tuple(network.input_shape[1:])
    plain = shape[:-1] if shape[-1] == 1 else shape  # grayscale images as files hold them: no channel axis
    inputs = keras.Input(shape=plain, dtype="float32", name="pixels")
    images = inputs if plain == shape else keras.layers.Reshape(shape, name="channel")(inputs)
    scaled = keras.layers.Rescaling(scale, offset=offset, name=f"scaling_{scaling}")(images)
    probabilities = keras.layers.Softmax(name="probabilities")(network(scaled, training=False))
    return keras.Model(inputs, probabilities, name=name)
