"""Frozen VGG-19 feature extractor in Flax (NHWC), truncated at the deepest layer asked for."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from nst_jax.layers import BLOCK_CHANNELS, LAYER_ORDER, canonical_layer

POOLINGS = ("max", "avg")


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
                            param_dtype=jnp.float32, name=name)(x)
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
