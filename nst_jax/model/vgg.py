"""Frozen VGG-19 feature extractor in Flax (NHWC), truncated at the deepest layer asked for."""

import dataclasses
import functools
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Tuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from nst_jax.model.layers import BLOCK_CHANNELS, LAYER_ORDER, canonical_layer, layer_block, layer_level
from nst_jax.model.extent import Extent
from nst_jax.model.ops import ADJOINT, SHIPPED, ConvImpl, max_pool_2x2, recomputed_in_backward

POOLINGS = ("max", "avg")
# (layer name, x) -> that convolution layer's output: how `run_layers` computes a convolution.
ConvLayer = Callable[[str, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Network:
    """How the network computes, whatever form it runs in (whole, by blocks, in tiles)."""

    pooling: str = "max"  # POOLINGS
    dtype: Any = jnp.float32  # of the arithmetic; parameters stay float32
    conv: ConvImpl = SHIPPED  # how its 3×3 convolutions are computed




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


def check_image(image: jax.Array) -> None:
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (N, H, W, 3), got {image.shape}")


def _pool(x, pooling):
    return max_pool_2x2(x) if pooling == "max" else nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def layers_to_run(outputs: Sequence[str], pooling: str) -> Tuple[Tuple[str, ...], FrozenSet[str]]:
    """(the layers from conv1_1 to the deepest of `outputs`, the canonical names of `outputs`)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    wanted = frozenset(canonical_layer(name) for name in outputs)
    return tuple(LAYER_ORDER[: max(LAYER_ORDER.index(name) for name in wanted) + 1]), wanted


def run_layers(names: Sequence[str], wanted: FrozenSet[str], pooling: str, conv_layer: ConvLayer, x: jax.Array,
               relu: Callable[[jax.Array], jax.Array] = nn.relu,
               after: Optional[Callable[[str, jax.Array], jax.Array]] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """VGG-19's layer loop, for every form of the network (`VGG19`, `features_by_block`,
    `tiles.features_in_tiles`).

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


def inside_only(extent: Optional[Extent], wanted: FrozenSet[str]) -> Optional[Callable[[str, jax.Array], jax.Array]]:
    """`run_layers`' `after` for a padded image (None: the image fills its array, nothing to do):
    every ReLU's and pooling's output, and a convolution's that the loss reads, zeroed outside
    the true image (`Extent.keep_inside`). A convolution's own output needs nothing: its ReLU
    follows."""
    if extent is None:
        return None

    def after(name, x):
        if name.startswith("conv") and name not in wanted:
            return x
        return extent.keep_inside(x, layer_level(name))

    return after


def network_input(image: jax.Array, dtype: Any, extent: Optional[Extent]) -> jax.Array:
    """The image in the network's dtype, zero outside the true image (what "same" convolution's
    zero padding reads there)."""
    image = image.astype(dtype)
    return image if extent is None else extent.keep_inside(image, 1)


def params_conv_layer(params: Dict[str, Dict[str, Any]], network: Network) -> ConvLayer:
    """`conv_layer` for `run_layers` from a params dict (the network as a pure function)."""
    def conv_layer(name, x):
        layer = params[name]
        return _conv_layer(network.conv, network.dtype, x, layer["kernel"], layer["bias"], layer.get(ADJOINT))

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
    def __call__(self, x: jax.Array, extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
        """`extent`: the true image inside a padded x (None: x is the image)."""
        names, wanted = layers_to_run(self.outputs, self.pooling)

        def conv_layer(name, x):
            block = layer_block(name)
            return Conv3x3(BLOCK_CHANNELS[block], dtype=self.dtype, conv=self.conv, name=name)(x)

        return run_layers(names, wanted, self.pooling, conv_layer, network_input(x, self.dtype, extent),
                          after=inside_only(extent, wanted))[1]


def _pure_block(names, wanted, network, params_and_extent, x):
    """The layers `names` as a pure function of ((params, extent), x), recomputed in the backward pass."""
    params, extent = params_and_extent
    return run_layers(names, wanted, network.pooling, params_conv_layer(params, network), x,
                      after=inside_only(extent, wanted))


def features_by_block(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str],
                      network: Network = Network(), extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
    """`features` with each block (its convolutions, ReLUs and pooling) recomputed in the backward
    pass (`recomputed_in_backward`).

    The backward pass keeps only each block's input and the activations the loss reads, and
    recomputes a block's inner activations when it reaches it: the loop's temporaries shrink
    to about one block's worth, for one more forward pass per step. Same numbers as `features`.
    """
    names, wanted = layers_to_run(layers, network.pooling)
    x, activations = network_input(image, network.dtype, extent), {}
    for block in sorted({layer_block(name) for name in names}):  # conv1_1, relu1_1, pool1: block 1
        block_names = tuple(name for name in names if layer_block(name) == block)
        run = recomputed_in_backward(functools.partial(_pure_block, block_names,
                                                       wanted.intersection(block_names), network))
        x, kept = run(({name: params[name] for name in block_names if name in params}, extent), x)
        activations.update(kept)
    return activations


def layer_size(height: int, width: int, layer: str) -> Tuple[int, int]:
    """(H, W) of `layer`'s output for an H × W image: each 2×2 pooling halves, an odd last row
    or column dropped."""
    for _ in range(layer_level(canonical_layer(layer)) - 1):
        height, width = height // 2, width // 2
    return height, width


def features(params: Dict[str, Dict[str, Any]], image: jax.Array, layers: Sequence[str], pooling: str = "max",
             dtype: Any = jnp.float32, remat: bool = False, conv: ConvImpl = SHIPPED,
             extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
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
      extent: the true image inside a padded `image` (shape buckets): everything outside it is
        zeroed after every layer, so the activations inside equal the unpadded image's and are
        zero outside. None: the image fills its array (nothing masked, nothing to pay).

    Returns:
      {canonical layer name: activation (N, h, w, C)} for every name in `layers`.
    """
    check_image(image)
    if remat:
        return features_by_block(params, image, layers, Network(pooling, dtype, conv), extent)
    model = VGG19(outputs=tuple(layers), pooling=pooling, dtype=dtype, conv=conv)
    weights = {name: {k: v for k, v in layer.items() if k != ADJOINT} for name, layer in params.items()}
    adjoints = {name: {"kernel": layer[ADJOINT]} for name, layer in params.items() if ADJOINT in layer}
    return cast(Dict[str, jax.Array], model.apply({"params": weights, "adjoint": adjoints}, image, extent))
