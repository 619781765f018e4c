"""VGG input conventions: RGB pixels in [0, 1] <-> what the weights were trained on.

The convention comes from the params file's metadata, so no user ever types a mean or a std.
"""

from typing import TypeVar

import jax
import numpy as np

PREPROCESSINGS = ("caffe", "torch")

# Caffe/Oxford weights: BGR, 0..255, minus these per-channel means (in BGR order).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
# torchvision weights: RGB in [0, 1], minus mean, divided by std.
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)

# numpy in, numpy out; jax in, jax out.
ArrayT = TypeVar("ArrayT", np.ndarray, jax.Array)


def _check(preprocessing):
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing convention must be one of {PREPROCESSINGS}, not {preprocessing!r}")


def preprocess(rgb: ArrayT, preprocessing: str) -> ArrayT:
    """RGB in [0, 1] (..., 3) -> the VGG input the weights expect. Works on numpy and jax arrays."""
    _check(preprocessing)
    if preprocessing == "caffe":
        return rgb[..., ::-1] * 255.0 - CAFFE_MEAN_BGR  # flip first, then subtract
    return (rgb - TORCH_MEAN_RGB) / TORCH_STD_RGB


def deprocess(vgg_input: ArrayT, preprocessing: str) -> ArrayT:
    """Inverse of `preprocess`: VGG input -> RGB in [0, 1] (not clipped)."""
    _check(preprocessing)
    if preprocessing == "caffe":
        return (vgg_input + CAFFE_MEAN_BGR)[..., ::-1] / 255.0
    return vgg_input * TORCH_STD_RGB + TORCH_MEAN_RGB


def mean_rgb(preprocessing: str) -> np.ndarray:
    """The training-set mean color, RGB in [0, 1]: what a zero VGG input looks like."""
    return np.asarray(deprocess(np.zeros(3, np.float32), preprocessing), np.float32)
