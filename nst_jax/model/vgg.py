"""Frozen VGG-19 feature extractor in Flax (NHWC), truncated at the deepest layer asked for."""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.model.layers import BLOCK_CHANNELS, LAYER_ORDER, canonical_layer, layer_block

POOLINGS = ("max", "avg")

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def _conv3x3_same(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC_HWIO)


def adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """The HWIO kernel whose "same" correlation is the adjoint of correlating with `kernel`:
    rotated 180° with its input and output channels swapped (for a symmetric (1, 1) pad)."""
    return jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)


_TAPS = tuple((dy, dx) for dy in range(3) for dx in range(3))  # HWIO's (kh, kw) order
# Up to this many input channels (conv1_1 has 3) the input gradient is a matrix product and a
# scatter of its columns: XLA CPU's convolution with 3 output channels was 4-5x slower.
FEW_CHANNELS = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv3x3_same(x: jax.Array, kernel: jax.Array, adjoint: jax.Array,
                 few_channels: int = FEW_CHANNELS) -> jax.Array:
    """3×3, stride 1, "same" convolution (NHWC × HWIO) whose input gradient is NHWC × HWIO too.

    `adjoint` is `adjoint_kernel(kernel)`, passed in so that it can be made once per run
    (`with_adjoint_kernels`) instead of in every step: XLA's CPU transposes cost 3-7 % of a step.

    JAX differentiates a convolution into one that swaps the kernel's input and output feature
    dimensions through its dimension numbers ("01oi"). XLA's CPU compiler rewrites such a
    convolution into the canonical form its fast kernels need only in the entry computation
    (ConvCanonicalization), so inside the optimizer's lax.fori_loop every backward-data
    convolution fell back to naive loops: 5-7x slower steps (BENCHMARKS.md, "What we tried").
    Here the input gradient is a plain convolution with the adjoint kernel, which XLA handles
    alike everywhere; it sums the same products. Not forward-mode differentiable (jax.jvp), as
    with any custom_vjp. `adjoint` gets no gradient.

    Up to `few_channels` input channels the input gradient is `_few_channel_input_gradient`
    instead (0: always the convolution; the benchmarks compare both).
    """
    return _conv3x3_same(x, kernel)


def _conv3x3_same_forward(x, kernel, adjoint, few_channels):
    return _conv3x3_same(x, kernel), (x, kernel, adjoint)


def _few_channel_input_gradient(cotangent, kernel):
    """Input gradient of a 3×3 "same" correlation with few input channels, without a convolution.

    Each output pixel's cotangent is spread back over its 3×3 neighbourhood: one product with
    the kernel as a (9·C_in, C_out) matrix gives every tap's share, then each share is added at
    its offset (the adjoint of extracting 3×3 patches).
    """
    height, width, channels = cotangent.shape[1], cotangent.shape[2], kernel.shape[2]
    shares = jnp.einsum("nhwo,ko->nhwk", cotangent, kernel.reshape(-1, kernel.shape[3]))
    padded = sum(jnp.pad(shares[..., tap * channels:(tap + 1) * channels],
                         ((0, 0), (dy, 2 - dy), (dx, 2 - dx), (0, 0)))
                 for tap, (dy, dx) in enumerate(_TAPS))
    return cast(jax.Array, padded)[:, 1:height + 1, 1:width + 1, :]  # a sum of nine taps, never sum's 0


def _conv3x3_same_backward(few_channels, residuals, cotangent):
    x, kernel, adjoint = residuals
    if kernel.shape[2] <= few_channels:
        x_gradient = _few_channel_input_gradient(cotangent, kernel)
    else:
        x_gradient = _conv3x3_same(cotangent, adjoint)
    # The kernel's cotangent, for completeness: XLA drops it when nobody asks (only the image
    # is differentiated in style transfer).
    _, kernel_vjp = jax.vjp(lambda k: _conv3x3_same(x, k), kernel)
    return x_gradient, kernel_vjp(cotangent)[0], None


conv3x3_same.defvjp(_conv3x3_same_forward, _conv3x3_same_backward)


@dataclasses.dataclass(frozen=True)
class ConvImpl:
    """How the network computes its 3×3 convolutions: the defaults are what nst_jax ships.

    The benchmarks pass other choices (bench/investigate.py: JAX's own differentiation of
    lax.conv_general_dilated, kernels rotated behind an optimization barrier, conv1_1's input
    gradient as a convolution) to measure what each is worth. Hashable, so it can be part of a
    static argument (`Objective.conv`).
    """

    # (x, HWIO kernel, adjoint kernel) -> y.
    convolve: Callable = conv3x3_same
    # HWIO kernel -> its adjoint, for layers whose params carry none (`with_adjoint_kernels`).
    rotate: Callable = adjoint_kernel


SHIPPED = ConvImpl()

ADJOINT = "adjoint_kernel"  # the params entry with_adjoint_kernels adds beside kernel and bias


def with_adjoint_kernels(params: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """`params` with each convolution's adjoint kernel added (params[layer]["adjoint_kernel"]).

    Do it once per run, outside the optimization loop: `features` then uses them instead of
    rotating every kernel again in each step. Made with numpy on the host, so preparing compiles
    nothing. The result is a new dict (numpy arrays); `params` is unchanged.
    """
    def adjoint(kernel):
        return np.ascontiguousarray(np.swapaxes(np.flip(np.asarray(kernel), (0, 1)), 2, 3))

    return {name: {**layer, ADJOINT: adjoint(layer["kernel"])} if "kernel" in layer else layer
            for name, layer in params.items()}


def _conv_layer(conv, dtype, x, kernel, bias, adjoint=None):
    """One convolution layer: x ⋆ kernel + bias in `dtype`; `adjoint` None: rotated here, in every
    evaluation (correct; 3-7 % slower on CPU than preparing it with `with_adjoint_kernels`)."""
    if adjoint is None:
        adjoint = conv.rotate(kernel)
    return conv.convolve(x, kernel.astype(dtype), adjoint.astype(dtype)) + bias.astype(dtype)


class Conv3x3(nn.Module):
    """A 3×3 "same" convolution plus bias, with nn.Conv's parameter names and initializers."""

    features: int
    dtype: Any = jnp.float32
    conv: ConvImpl = SHIPPED

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        adjoint = self.get_variable("adjoint", "kernel") if self.has_variable("adjoint", "kernel") else None
        return _conv_layer(self.conv, self.dtype, x, kernel, bias, adjoint)


def _pool_windows(x):
    """(N, H, W, C) -> (N, H/2, 2, W/2, 2, C): each 2×2 window's four values ("VALID": an odd
    last row or column is dropped)."""
    n, height, width, channels = x.shape
    return x[:, : height // 2 * 2, : width // 2 * 2].reshape(n, height // 2, 2, width // 2, 2, channels)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2, stride-2 max pooling of NHWC ("VALID"), as nn.max_pool, with a cheaper gradient.

    XLA's CPU backend runs nn.max_pool's gradient (a select-and-scatter) slowly: 90 ms for
    256²×64 where this one's compares and multiplies take 13 (BENCHMARKS.md), 9–10 % of a step.
    The gradient goes to the first maximum of each window in row-major order, as
    select-and-scatter and torch's max_pool2d give it: the same numbers, also where a flat
    region of the image makes neighbouring activations tie. Not forward-mode differentiable.
    """
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_forward(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, cotangent):
    x, pooled = residuals
    is_max = _pool_windows(x) == pooled[:, :, None, :, None, :]
    taken = jnp.zeros(pooled.shape, bool)
    firsts = {}
    for dy in range(2):  # row-major: the first maximum claims the window
        for dx in range(2):
            firsts[dy, dx] = is_max[:, :, dy, :, dx, :] & ~taken
            taken = taken | firsts[dy, dx]
    mask = jnp.stack([jnp.stack([firsts[dy, dx] for dx in range(2)], axis=3) for dy in range(2)], axis=2)
    gradient = (mask * cotangent[:, :, None, :, None, :]).astype(x.dtype)
    n, height, width, channels = x.shape
    gradient = gradient.reshape(n, height // 2 * 2, width // 2 * 2, channels)
    return (jnp.pad(gradient, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


def _check_image(image):
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (N, H, W, 3), got {image.shape}")


def _pool(x, pooling):
    return max_pool_2x2(x) if pooling == "max" else nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _layers_to_run(outputs, pooling):
    """(the layers from conv1_1 to the deepest of `outputs`, the canonical names of `outputs`)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    wanted = frozenset(canonical_layer(name) for name in outputs)
    return LAYER_ORDER[: max(LAYER_ORDER.index(name) for name in wanted) + 1], wanted


def _run_layers(names, wanted, pooling, conv_layer, x, relu=nn.relu, after=None):
    """VGG-19's layer loop, for every form of the network (`VGG19`, `features_by_block`,
    `features_in_tiles`).

    Runs the layers `names` in order on x; `conv_layer(name, x)` computes a convolution layer,
    `relu` a ReLU; `after(name, output)`, if given, replaces each layer's output (tiles zero
    their columns past the image). Returns (the last output, {name: activation} for the names
    in `wanted`).
    """
    activations = {}
    for name in names:
        if name.startswith("conv"):
            x = conv_layer(name, x)
        elif name.startswith("relu"):
            x = relu(x)
        else:
            x = _pool(x, pooling)
        if after is not None:
            x = after(name, x)
        if name in wanted:
            activations[name] = x
    return x, activations


def _params_conv_layer(params, dtype, conv):
    """`conv_layer` for `_run_layers` from a params dict (the network as a pure function)."""
    def conv_layer(name, x):
        layer = params[name]
        return _conv_layer(conv, dtype, x, layer["kernel"], layer["bias"], layer.get(ADJOINT))

    return conv_layer


class VGG19(nn.Module):
    """The convolutional part of VGG-19; returns {layer name: activation} for `outputs`.

    Only the layers up to the deepest requested output are built and run, so asking for
    relu2_1 costs two blocks, not five.
    """

    outputs: Sequence[str]
    pooling: str = "max"
    dtype: Any = jnp.float32
    conv: ConvImpl = SHIPPED

    @nn.compact
    def __call__(self, x: jax.Array) -> Dict[str, jax.Array]:
        names, wanted = _layers_to_run(self.outputs, self.pooling)

        def conv_layer(name, x):
            block = layer_block(name)
            return Conv3x3(BLOCK_CHANNELS[block], dtype=self.dtype, conv=self.conv, name=name)(x)

        return _run_layers(names, wanted, self.pooling, conv_layer, x.astype(self.dtype))[1]


def _pure_block(names, wanted, pooling, dtype, conv, params, x):
    """The layers `names` as a pure function of (params, x), recomputed in the backward pass."""
    return _run_layers(names, wanted, pooling, _params_conv_layer(params, dtype, conv), x)


def recomputed_in_backward(fn: Callable[[Any, jax.Array], Any]) -> Callable[[Any, jax.Array], Any]:
    """`fn(params, x)` whose backward pass recomputes fn's activations from x instead of keeping them.

    What jax.checkpoint does, written by hand because XLA's CPU compiler undoes jax.checkpoint:
    it drops the optimization barriers and common-subexpression elimination then merges the
    recomputation with the forward pass, which keeps every activation after all. Here the
    recomputation starts from x + 0·c, c one element of the incoming cotangent, which no pass can
    merge with the forward (it depends on the backward's data) and which equals x exactly for a
    finite c (a non-finite cotangent makes the gradient non-finite either way): the gradient is
    bit-identical to the plain one. Only x's cotangent is used; XLA drops the params' unused one.
    """
    @jax.custom_vjp
    def run(params, x):
        return fn(params, x)

    def forward(params, x):
        return fn(params, x), (params, x)

    def backward(saved, cotangent):
        params, x = saved
        anchor = jax.tree_util.tree_leaves(cotangent)[0].ravel()[0] * 0
        return jax.vjp(fn, params, x + anchor.astype(x.dtype))[1](cotangent)

    run.defvjp(forward, backward)
    return run


def features_by_block(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str], pooling: str = "max",
                      dtype: Any = jnp.float32, conv: ConvImpl = SHIPPED) -> Dict[str, jax.Array]:
    """`features` with each block (its convolutions, ReLUs and pooling) recomputed in the backward
    pass (`recomputed_in_backward`).

    The backward pass keeps only each block's input and the activations the loss reads, and
    recomputes a block's inner activations when it reaches it: the loop's temporaries shrink
    to about one block's worth, for one more forward pass per step. Same numbers as `features`.
    """
    names, wanted = _layers_to_run(layers, pooling)
    x, activations = image.astype(dtype), {}
    for block in sorted({layer_block(name) for name in names}):  # conv1_1, relu1_1, pool1: block 1
        block_names = tuple(name for name in names if layer_block(name) == block)
        run = recomputed_in_backward(functools.partial(_pure_block, block_names,
                                                       wanted.intersection(block_names), pooling, dtype, conv))
        x, kept = run({name: params[name] for name in block_names if name in params}, x)
        activations.update(kept)
    return activations


@jax.custom_vjp
def relu_keeping_bits(x: jax.Array) -> jax.Array:
    """max(x, 0) whose backward pass keeps one bit per activation, not the float32 activation.

    Only the image is differentiated, so a convolution's backward pass needs its kernel, never
    its input: what the plain network keeps per layer is the ReLU's input, for the mask x > 0.
    XLA fuses that comparison into the backward pass, so even a boolean residual becomes the
    float one again; packed bits (a reduction over channels, which XLA does not move) stay
    bits: 1/32 of the memory. Same gradient as jax.nn.relu (0 where x <= 0 or x is NaN).
    """
    return jnp.maximum(x, 0)


def _relu_bits_forward(x):
    return jnp.maximum(x, 0), jnp.packbits(x > 0, axis=-1)


def _relu_bits_backward(bits, cotangent):
    positive = jnp.unpackbits(bits, axis=-1, count=cotangent.shape[-1]).astype(bool)
    return (jnp.where(positive, cotangent, 0).astype(cotangent.dtype),)


relu_keeping_bits.defvjp(_relu_bits_forward, _relu_bits_backward)

# features_in_tiles computes blocks 1 and 2 in column tiles: at full and half resolution their
# activations are 2/3 of the network's (to relu5_1), and their working set in the backward pass
# is what remat by blocks cannot shrink. Deeper blocks reach too far to tile cheaply (a tile
# through pool3 needs 22 columns of halo on each side).
FRONT_BLOCKS = 2
TILE_COLUMNS = 256  # at most this many columns per tile ...
MIN_TILES = 4  # ... and at least this many tiles: a tile's working set stays a fraction of the rest


def layer_level(name: str) -> int:
    """The resolution level of a canonical layer's output: 1 full size, 2 half, ... (pool1 is 2)."""
    return layer_block(name) + (1 if name.startswith("pool") else 0)


def layer_size(height: int, width: int, layer: str) -> Tuple[int, int]:
    """(H, W) of `layer`'s output for an H × W image: each 2×2 pooling halves, an odd last row
    or column dropped."""
    for _ in range(layer_level(canonical_layer(layer)) - 1):
        height, width = height // 2, width // 2
    return height, width


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
    names, _ = _layers_to_run(layers, pooling)
    return tuple(name for name in names if layer_block(name) <= FRONT_BLOCKS)


def features_in_tiles(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str],
                      reduce_tile: Optional[Callable[[Dict[str, jax.Array], jax.Array], Any]] = None,
                      kept: Sequence[str] = (), pooling: str = "max", dtype: Any = jnp.float32,
                      conv: ConvImpl = SHIPPED, grid: Optional[TileGrid] = None) -> Tuple[Dict[str, jax.Array], Any]:
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
    """
    _check_image(image)
    names, wanted = _layers_to_run(layers, pooling)
    front = front_layers(layers, pooling)
    back = names[len(front):]
    grid = grid or TileGrid.for_layers(layers, image.shape[2], pooling)
    kept = tuple(name for name in front if name in {canonical_layer(layer) for layer in kept})
    assembled = kept + ((front[-1],) if back and front[-1] not in kept else ())
    padded = jnp.pad(image.astype(dtype), ((0, 0), (0, 0),
                                           (grid.halo, grid.padded_width(front[0]) - image.shape[2] + grid.halo),
                                           (0, 0)))
    conv_layer = _params_conv_layer(params, dtype, conv)

    def tile(i):
        """({front layer: tile i's own columns} for the layers asked for, and the last one)."""
        def inside_image(name, x):
            if name.startswith("conv") and name not in wanted:
                return x  # the ReLU after it is zeroed
            # Columns past the image are the next convolution's zero padding (and add nothing
            # to a sum), not activations.
            column = i * grid.tile_width(name) - grid.halo // grid.scale(name) + jnp.arange(x.shape[2])
            inside = (column >= 0) & (column < grid.layer_width(name))
            return jnp.where(inside[None, None, :, None], x, jnp.zeros((), x.dtype))

        x = lax.dynamic_slice_in_dim(padded, i * grid.width, grid.width + 2 * grid.halo, axis=2)
        _, activations = _run_layers(front, wanted.union(assembled), pooling, conv_layer, x, after=inside_image)
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
        activations.update(_run_layers(back, wanted, pooling, conv_layer, whole[front[-1]], relu=relu_keeping_bits)[1])
    return activations, (sums if reduce_tile else None)


def features(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str], pooling: str = "max",
             dtype: Any = jnp.float32, remat: bool = False, conv: ConvImpl = SHIPPED) -> Dict[str, jax.Array]:
    """Named VGG-19 activations of a preprocessed NHWC image.

    Args:
      params: {"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...} as loaded from a params file.
        Layers past the deepest one asked for may be absent. Entries made by
        `with_adjoint_kernels` are used for the input gradient (faster; same numbers).
      image: (N, H, W, 3) array, already preprocessed for these weights.
      layers: layer names (Caffe/NST names such as relu4_2, or Keras aliases).
      pooling: "max" or "avg".
      dtype: compute dtype (float32, or bfloat16 for speed); parameters stay float32.
      remat: recompute each block's activations in the backward pass instead of keeping them
        (`features_by_block`): less memory, one more forward pass.
      conv: how the 3×3 convolutions are computed (`ConvImpl`); the shipped way by default.

    Returns:
      {canonical layer name: activation (N, h, w, C)} for every name in `layers`.
    """
    _check_image(image)
    if remat:
        return features_by_block(params, image, layers, pooling, dtype, conv)
    model = VGG19(outputs=tuple(layers), pooling=pooling, dtype=dtype, conv=conv)
    weights = {name: {k: v for k, v in layer.items() if k != ADJOINT} for name, layer in params.items()}
    adjoints = {name: {"kernel": layer[ADJOINT]} for name, layer in params.items() if ADJOINT in layer}
    return cast(Dict[str, jax.Array], model.apply({"params": weights, "adjoint": adjoints}, image))
