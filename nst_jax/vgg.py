"""Frozen VGG-19 feature extractor in Flax (NHWC), truncated at the deepest layer asked for."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from nst_jax.layers import BLOCK_CHANNELS, LAYER_ORDER, canonical_layer

POOLINGS = ("max", "avg")

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def _conv3x3_same(x, kernel, precision):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC_HWIO,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_same(x, kernel, precision=None):
    """3×3, stride 1, "same" convolution (NHWC × HWIO) whose input gradient is NHWC × HWIO too.

    JAX differentiates a convolution into one that swaps the kernel's input and output feature
    dimensions through its dimension numbers ("01oi"). XLA's CPU compiler rewrites such a
    convolution into the canonical form its fast kernels need only in the entry computation
    (ConvCanonicalization), so inside the optimizer's lax.fori_loop every backward-data
    convolution fell back to naive loops: 5-7x slower steps (BENCHMARKS.md, "What we tried").
    Here the input gradient is a plain convolution with the kernel flipped and transposed, which
    XLA handles alike everywhere; it sums the same products. Not forward-mode differentiable
    (jax.jvp), as with any custom_vjp.
    """
    return _conv3x3_same(x, kernel, precision)


def _conv3x3_same_forward(x, kernel, precision):
    return _conv3x3_same(x, kernel, precision), (x, kernel)


def _conv3x3_same_backward(precision, residuals, cotangent):
    x, kernel = residuals
    # Correlation's adjoint for a symmetric (1, 1) pad: correlate with the kernel rotated 180°
    # and its in/out channels swapped.
    flipped = jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)
    x_gradient = _conv3x3_same(cotangent, flipped, precision)
    # The kernel's cotangent, for completeness: XLA drops it when nobody asks (only the image
    # is differentiated in style transfer).
    _, kernel_vjp = jax.vjp(lambda k: _conv3x3_same(x, k, precision), kernel)
    return x_gradient, kernel_vjp(cotangent)[0]


conv3x3_same.defvjp(_conv3x3_same_forward, _conv3x3_same_backward)


def _flax_conv(inputs, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None):
    """nn.Conv's `conv_general_dilated` hook, for the one convolution VGG-19 uses."""
    plain = all(s == 1 for s in window_strides) and feature_group_count == 1 and all(
        d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    if padding != "SAME" or not plain or kernel.shape[:2] != (3, 3):
        raise ValueError("conv3x3_same implements only 3x3, stride 1, undilated 'SAME' convolutions")
    return conv3x3_same(inputs, kernel, precision)


class VGG19(nn.Module):
    """The convolutional part of VGG-19; returns {layer name: activation} for `outputs`.

    Only the layers up to the deepest requested output are built and run, so asking for
    relu2_1 costs two blocks, not five.
    """

    outputs: Sequence[str]
    pooling: str = "max"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        wanted = {canonical_layer(name) for name in self.outputs}
        last = max(LAYER_ORDER.index(name) for name in wanted)
        x = x.astype(self.dtype)
        activations = {}
        for name in LAYER_ORDER[: last + 1]:
            if name.startswith("conv"):
                block = int(name[4])
                x = nn.Conv(BLOCK_CHANNELS[block], (3, 3), padding="SAME", dtype=self.dtype,
                            param_dtype=jnp.float32, conv_general_dilated=_flax_conv,
                            name=name)(x)
            elif name.startswith("relu"):
                x = nn.relu(x)
            elif self.pooling == "max":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            else:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            if name in wanted:
                activations[name] = x
        return activations


def features(params, image, layers, pooling="max", dtype=jnp.float32):
    """Named VGG-19 activations of a preprocessed NHWC image.

    Args:
      params: {"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...} as loaded from a params file.
        Layers past the deepest one asked for may be absent.
      image: (N, H, W, 3) array, already preprocessed for these weights.
      layers: layer names (Caffe/NST names such as relu4_2, or Keras aliases).
      pooling: "max" or "avg".
      dtype: compute dtype (float32, or bfloat16 for speed); parameters stay float32.

    Returns:
      {canonical layer name: activation (N, h, w, C)} for every name in `layers`.
    """
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (N, H, W, 3), got {image.shape}")
    model = VGG19(outputs=tuple(layers), pooling=pooling, dtype=dtype)
    return model.apply({"params": params}, image)
