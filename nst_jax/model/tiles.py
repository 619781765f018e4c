"""VGG-19 for print sizes: blocks 1-2 computed in column tiles, one at a time (`--remat tiles`)."""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax.model.extent import Extent
from nst_jax.model.layers import canonical_layer, layer_block, layer_level
from nst_jax.model.ops import relu_keeping_bits
from nst_jax.model.vgg import (Network, check_image, inside_only, layer_size, layers_to_run, network_input,
                               params_conv_layer, run_layers)

# features_in_tiles computes blocks 1 and 2 in column tiles: at full and half resolution their
# activations are 2/3 of the network's (to relu5_1), and their working set in the backward pass
# is what remat by blocks cannot shrink. Deeper blocks reach too far to tile cheaply (a tile
# through pool3 needs 22 columns of halo on each side).
FRONT_BLOCKS = 2
TILE_COLUMNS = 256  # at most this many columns per tile ...
MIN_TILES = 4  # ... and at least this many tiles: a tile's working set stays a fraction of the rest


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """How `features_in_tiles` splits an image's columns.

    `count` tiles of `width` columns (a multiple of 2^pools, pools being the poolings the tiled
    layers include, so that every pooling window of a tile is one of the whole image's); each is
    read with `halo` more columns on both sides, which covers what its convolutions reach (8
    through pool2). At level l (layer resolution 1/2^(l-1)) everything is 2^(l-1) times narrower.
    `image_width`: the image's columns; the last tile may run past them.
    """

    image_width: int
    width: int
    count: int
    halo: int

    @classmethod
    def for_layers(cls, layers: Sequence[str], image_width: int, pooling: str = "max",
                   tiles: Optional[int] = None) -> "TileGrid":
        """The grid for a network computing `layers` on an image `image_width` columns wide.

        `tiles`: about how many (default: MIN_TILES, more if a tile would exceed TILE_COLUMNS
        columns). Widths are rounded up to a multiple of 2^pools, so the count that covers the
        image can come out lower than asked (40 columns in 7 tiles: 5 tiles of 8).
        """
        names = front_layers(layers, pooling)
        pools = sum(name.startswith("pool") for name in names)
        reach = 0  # columns an output column depends on, on each side, walking back to the input
        for level in range(max(layer_level(name) for name in names), 0, -1):
            convs = sum(name.startswith("conv") and layer_level(name) == level for name in names)
            reach = (2 * reach if any(layer_level(name) == level + 1 for name in names) else reach) + convs
        step = 2 ** pools
        count = tiles or max(MIN_TILES, -(-image_width // TILE_COLUMNS))
        width = -(-max(1, -(-image_width // count)) // step) * step
        return cls(image_width, width, -(-image_width // width), -(-reach // step) * step)

    def scale(self, layer: str) -> int:
        return 2 ** (layer_level(layer) - 1)

    def tile_width(self, layer: str) -> int:
        """A tile's own columns at `layer`."""
        return self.width // self.scale(layer)

    def layer_width(self, layer: str) -> int:
        """The whole image's columns at `layer`."""
        return layer_size(1, self.image_width, layer)[1]

    def padded_width(self, layer: str) -> int:
        """Columns at `layer` of all tiles together (≥ layer_width)."""
        return self.count * self.tile_width(layer)


def front_layers(layers: Sequence[str], pooling: str = "max") -> Tuple[str, ...]:
    """The layers `features_in_tiles` computes in tiles: those of the first FRONT_BLOCKS blocks
    (their pooling included) that the network runs for `layers`."""
    names, _ = layers_to_run(layers, pooling)
    return tuple(name for name in names if layer_block(name) <= FRONT_BLOCKS)


def features_in_tiles(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str],
                      network: Network = Network(), *,
                      reduce_tile: Optional[Callable[[Dict[str, jax.Array], jax.Array], Any]] = None,
                      kept: Sequence[str] = (), grid: Optional[TileGrid] = None,
                      extent: Optional[Extent] = None) -> Tuple[Dict[str, jax.Array], Any]:
    """VGG-19 for print sizes: the first two blocks computed in column tiles, one at a time.

    A `lax.scan` over the tiles runs blocks 1-2 on each tile (its columns plus a halo), under
    `jax.checkpoint`: the backward pass recomputes one tile at a time, so no full-resolution
    activation, and no gradient of one, ever exists whole. What the loss needs from those layers
    must therefore be a sum over tiles: `reduce_tile(activations, i)` gets tile i's own columns of
    each front layer in `layers` ({layer: (N, H_l, tile_width, C)}, columns past the image zero;
    tile i starts at column i·tile_width) and returns arrays to add up (a Gram matrix's FᵀF, a
    squared distance). Deeper layers run whole, their ReLUs keeping bits (`relu_keeping_bits`).

    Returns ({layer: activation} for the layers in `layers` past the front and for the front
    layers in `kept` (assembled from the tiles: for passes without a backward), the sums of
    reduce_tile (None without one)). Same numbers as `features` within float32 reordering.
    `extent`: the true image inside a padded `image` (as `vgg.features` takes it); the tiles
    then zero what lies outside it, rows and columns.
    """
    check_image(image)
    pooling = network.pooling
    names, wanted = layers_to_run(layers, pooling)
    front = front_layers(layers, pooling)
    back = names[len(front):]
    grid = grid or TileGrid.for_layers(layers, image.shape[2], pooling)
    kept = tuple(name for name in front if name in {canonical_layer(layer) for layer in kept})
    assembled = kept + ((front[-1],) if back and front[-1] not in kept else ())
    padded = jnp.pad(network_input(image, network.dtype, extent), ((0, 0), (0, 0),
                                           (grid.halo, grid.padded_width(front[0]) - image.shape[2] + grid.halo),
                                           (0, 0)))
    conv_layer = params_conv_layer(params, network)

    def tile(i):
        """({front layer: tile i's own columns} for the layers asked for, and the last one)."""
        def inside_image(name, x):
            if name.startswith("conv") and name not in wanted:
                return x  # the ReLU after it is zeroed
            # Columns past the image are the next convolution's zero padding (and add nothing
            # to a sum), not activations.
            first_column = i * grid.tile_width(name) - grid.halo // grid.scale(name)
            if extent is not None:
                return extent.keep_inside(x, layer_level(name), first_column)
            column = first_column + jnp.arange(x.shape[2])
            inside = (column >= 0) & (column < grid.layer_width(name))
            return jnp.where(inside[None, None, :, None], x, jnp.zeros((), x.dtype))

        x = lax.dynamic_slice_in_dim(padded, i * grid.width, grid.width + 2 * grid.halo, axis=2)
        _, activations = run_layers(front, wanted.union(assembled), pooling, conv_layer, x, after=inside_image)
        return {name: x[:, :, grid.halo // grid.scale(name):][:, :, :grid.tile_width(name)]
                for name, x in activations.items()}

    def reduced(own, i):
        return reduce_tile({name: own[name] for name in front if name in wanted}, i) if reduce_tile else ()

    def body(total, i):
        own = tile(i)
        return jax.tree_util.tree_map(jnp.add, total, reduced(own, i)), {name: own[name] for name in assembled}

    zero = jax.tree_util.tree_map(lambda shape: jnp.zeros(shape.shape, shape.dtype),
                                  jax.eval_shape(lambda: reduced(tile(0), jnp.int32(0))))
    sums, tiles = lax.scan(jax.checkpoint(body, prevent_cse=False), zero, jnp.arange(grid.count))
    whole = {}
    for name, columns in tiles.items():  # (tiles, N, H, tile_width, C) -> (N, H, W, C)
        joined = jnp.moveaxis(columns, 0, 2)
        whole[name] = joined.reshape(joined.shape[:2] + (-1, joined.shape[-1]))[:, :, :grid.layer_width(name)]
    activations = {name: whole[name] for name in kept}
    if back:
        activations.update(run_layers(back, wanted, pooling, conv_layer, whole[front[-1]], relu=relu_keeping_bits,
                                      after=inside_only(extent, wanted))[1])
    return activations, (sums if reduce_tile else None)
