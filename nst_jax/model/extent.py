"""The true image inside a padded array (shape buckets): its size as traced values, and the masks
that make the padded network compute what the unpadded one does.

A run whose photo is padded to its bucket (engine/buckets.py) carries an `Extent`: the true
(height, width) as int32 scalars, so one compiled program serves every photo of the bucket. The
network zeroes what lies outside the true image after its input and after every ReLU and pooling
(`keep_inside`): the next convolution then reads zeros past the true border, as the unpadded
network's zero padding gives it, and a pooling window that straddles the border lands outside the
next level's true size, as the unpadded network's "VALID" pooling drops it. The losses read the
true sizes from here for their normalizers.
"""

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.model.layers import canonical_layer, layer_level


@dataclasses.dataclass(frozen=True)
class Extent:
    """The true (height, width) of an image at the network's input, as int32 scalars (traced
    inside programs). Rows and columns past them are padding."""

    height: Any
    width: Any

    @classmethod
    def of(cls, height: int, width: int) -> "Extent":
        """Host values: they reach the device with the run's other inputs (no compile per size)."""
        return cls(np.int32(height), np.int32(width))

    def at_level(self, level: int) -> Tuple[Any, Any]:
        """The true (height, width) at resolution level `level` (1: the input; each 2×2 pooling
        halves, an odd last row or column dropped, as `vgg.layer_size` says)."""
        shift = level - 1
        return jnp.right_shift(self.height, shift), jnp.right_shift(self.width, shift)

    def at(self, layer: str) -> Tuple[Any, Any]:
        """The true (height, width) of `layer`'s output."""
        return self.at_level(layer_level(canonical_layer(layer)))

    def inside(self, level: int, rows: int, columns: int, first_column: Any = 0) -> jax.Array:
        """(1, rows, columns, 1) booleans: which entries of an array at `level` lie in the true
        image; its first column is the level's column `first_column` (a tile's offset)."""
        height, width = self.at_level(level)
        row = jnp.arange(rows, dtype=jnp.int32)[:, None] < height
        column = jnp.arange(columns, dtype=jnp.int32)[None, :] + first_column
        return (row & (column >= 0) & (column < width))[None, :, :, None]

    def keep_inside(self, x: jax.Array, level: int, first_column: Any = 0) -> jax.Array:
        """x (N, H, W, C) at `level` with everything outside the true image zeroed."""
        return jnp.where(self.inside(level, x.shape[1], x.shape[2], first_column), x, jnp.zeros((), x.dtype))


jax.tree_util.register_dataclass(Extent, data_fields=["height", "width"], meta_fields=[])
