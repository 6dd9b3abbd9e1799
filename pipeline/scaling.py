"""data.scaling: the one map from raw pixels k = 0..255 to the values a network trains on.

"centered" is (k - 127.5) / 255, in [-0.5, 0.5], as the Udacity notebooks the tutorial builds on;
"unit" is k / 255, in [0, 1]. The prepare stage applies the map to the data (`scale_pixels`), the
logged classifier applies it to its input as a Keras Rescaling layer (`rescaling`), and
`pixels_from_scaled` inverts it. Plain numpy: the prepare stage imports this without TensorFlow.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.errors import ConfigError

# data.scaling's values, as params.yaml accepts them (pipeline.config); SCALINGS has one map for each
Scaling = Literal["centered", "unit"]

# each scaling as (shift, divisor): pixel k to (k - shift) / divisor
SCALINGS: dict[str, tuple[float, float]] = {"centered": (127.5, 255.0), "unit": (0.0, 255.0)}


def shift_and_divisor(scaling: str) -> tuple[float, float]:
    """The map of a data.scaling value; a ConfigError naming the known ones for any other value
    (a run.json or meta.json written by hand: params.yaml is already checked by pipeline.config)."""
    if scaling not in SCALINGS:
        raise ConfigError(f"data.scaling must be one of {sorted(SCALINGS)}, got {scaling!r}")
    return SCALINGS[scaling]


def scale_pixels(images: np.ndarray, scaling: str) -> np.ndarray:
    """uint8 pixels to float32 by the map, computed in float32: (k - shift) / divisor."""
    shift, divisor = shift_and_divisor(scaling)
    return (images.astype(np.float32) - np.float32(shift)) / np.float32(divisor)


def rescaling(scaling: str) -> tuple[float, float]:
    """The map as a Keras Rescaling layer's (scale, offset), which computes x * scale + offset:
    1 / divisor and -shift / divisor (0.0 - ..., so that "unit" gets offset 0.0, not -0.0)."""
    shift, divisor = shift_and_divisor(scaling)
    return 1.0 / divisor, 0.0 - shift / divisor


def pixels_from_scaled(scaled: np.ndarray, scaling: str) -> np.ndarray:
    """The raw pixels (float32, 0-255) that the map turned into `scaled`: its inverse, rounded, exact
    for every pixel value. The train stage holds only scaled images, and the logged model's input
    example must be raw pixels."""
    scale, offset = rescaling(scaling)
    return np.clip(np.rint((np.asarray(scaled, np.float32) - offset) / scale), 0, 255).astype(np.float32)
