"""data.scaling's one map (pipeline.scaling): exact float32 values for every pixel value, the same map
as a Keras Rescaling layer's constants, and an inverse that gives back every pixel exactly."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.scaling import SCALINGS, Scaling, pixels_from_scaled, rescaling, scale_pixels

# every pixel value 0..255 and what each data.scaling makes of it, exactly (float32 arithmetic)
PIXELS = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)


def test_unit_scaling_is_k_over_255_exactly():
    scaled = scale_pixels(PIXELS, "unit")
    assert scaled.dtype == np.float32
    assert scaled[0, 0, 0] == 0.0 and scaled[0, -1, -1] == 1.0
    assert scaled.ravel()[51] == np.float32(51) / np.float32(255) == np.float32(0.2)
    np.testing.assert_array_equal(scaled.ravel(), np.arange(256, dtype=np.float32) / np.float32(255))


def test_centered_scaling_is_k_minus_127_5_over_255_exactly():
    """The Udacity notebooks' (pixel - pixel_depth / 2) / pixel_depth with pixel_depth 255."""
    scaled = scale_pixels(PIXELS, "centered")
    assert scaled.dtype == np.float32
    assert scaled[0, 0, 0] == -0.5 and scaled[0, -1, -1] == 0.5
    assert scaled.ravel()[127] == np.float32(-0.5 / 255) and scaled.ravel()[128] == np.float32(0.5 / 255)
    np.testing.assert_array_equal(
        scaled.ravel(), (np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(255)
    )
    # symmetric about zero: pixel k and 255 - k map to opposite values
    np.testing.assert_array_equal(scaled.ravel(), -scaled.ravel()[::-1])


def bits(array: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns: equal arrays have the same bytes (signed zeros too)."""
    return np.ascontiguousarray(array, np.float32).view(np.uint32)


def test_each_scaling_is_the_float32_arithmetic_the_prepared_data_was_made_with():
    """Byte for byte what prepared data holds: k / 255 and (k - 127.5) / 255, in float32."""
    k = PIXELS.astype(np.float32)
    np.testing.assert_array_equal(bits(scale_pixels(PIXELS, "unit")), bits(k / np.float32(255.0)))
    np.testing.assert_array_equal(
        bits(scale_pixels(PIXELS, "centered")), bits((k - np.float32(127.5)) / np.float32(255.0))
    )


def test_the_keras_constants_are_those_the_logged_models_were_built_with():
    assert rescaling("centered") == (1.0 / 255.0, -0.5)
    scale, offset = rescaling("unit")
    assert (scale, offset) == (1.0 / 255.0, 0.0) and math.copysign(1.0, offset) == 1.0  # 0.0, not -0.0


@pytest.mark.parametrize("scaling", ["centered", "unit"])
def test_pixels_from_scaled_gives_back_every_pixel_exactly(scaling):
    back = pixels_from_scaled(scale_pixels(PIXELS, scaling), scaling)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, PIXELS.astype(np.float32))


def test_params_yaml_accepts_exactly_the_scalings_that_have_a_map():
    assert set(get_args(Scaling)) == set(SCALINGS)


@pytest.mark.parametrize("use", [scale_pixels, pixels_from_scaled])
def test_an_unknown_scaling_is_a_config_error(use):
    with pytest.raises(ConfigError, match=r"data.scaling must be one of \['centered', 'unit'\], got 'minmax'"):
        use(PIXELS, "minmax")
