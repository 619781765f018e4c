"""The terms of neural style transfer as pure functions of arrays (jit, vmap and grad friendly).

Every reference system weighs and normalizes the terms differently (docs/CONVENTIONS.md, "Loss
conventions"); the string options below express each of them exactly, so a preset only names them.

Features are the VGG activation of ONE image, (1, H, W, C) or (H, W, C). A batch is handled outside
with `jax.vmap`, so a leading axis other than 1 is an error rather than something summed over.
Sums run in at least float32: bfloat16 features are cast before any arithmetic.
"""

from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# The options of each term, in the order --help lists them (nst_jax.config.settings.CHOICES reads
# these: the flags --content-loss, --gram-normalization, --style-loss and --tv-loss).
GRAM_NORMALIZATIONS = ("raw", "hw", "chw")
CONTENT_LOSSES = ("half_sum", "sum", "mean")
STYLE_LOSSES = ("gatys", "mse", "sum", "keras_example")
TV_LOSSES = ("l2", "l1", "power")

# fchollet's Keras example divides by 4·channels²·size² with channels = 3 fixed, whatever the layer.
KERAS_EXAMPLE_CHANNELS = 3


def _check_option(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")


def _at_least_float32(array):
    """Cast to float32, or keep float64 (x64 tests); bfloat16 sums lose too many digits."""
    array = jnp.asarray(array)
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def _single_image(array, name):
    """(1, H, W, C) or (H, W, C) -> (H, W, C), at least float32."""
    array = jnp.asarray(array)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(
                f"{name} has shape {array.shape}, a batch of {array.shape[0]}: losses take one "
                f"image, (1, H, W, C) or (H, W, C); map over a batch with jax.vmap")
        array = array[0]
    elif array.ndim != 3:
        raise ValueError(f"{name} must have shape (1, H, W, C) or (H, W, C), got {array.shape}")
    return _at_least_float32(array)


def gram_product(features: ArrayLike) -> jax.Array:
    """Fᵀ F of one image's features, or of a tile of them (sums over tiles add up to the whole):
    every axis but the last (channels) counts as positions, in at least float32, not normalized."""
    image = _at_least_float32(features)
    return _symmetric_product(image.reshape(-1, image.shape[-1]))


def _product(a, b):
    # HIGHEST: accelerators default to bfloat16 passes, and a Gram entry sums H·W products.
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


@jax.custom_jvp
def _symmetric_product(matrix):
    """matrixᵀ · matrix, with the tangent written as P + Pᵀ, P = matrixᵀ · tangent.

    JAX's own rule has two products of the matrix's size in the backward pass (F·dG and F·dGᵀ,
    then a sum; at a 256 px relu1_1 two 65,536 × 64 results); transposing P + Pᵀ gives one,
    F·(dG + dGᵀ): 15.9 → 10.4 ms for that layer's Gram and gradient on the project's CPU, 2-5 %
    of an L-BFGS step (BENCHMARKS.md). A JVP rule, so forward mode (jax.jvp, jacfwd) still works.
    """
    return _product(matrix.T, matrix)


@_symmetric_product.defjvp
def _symmetric_product_jvp(primals, tangents):
    (matrix,), (tangent,) = primals, tangents
    half = _product(matrix.T, tangent)
    return _product(matrix.T, matrix), half + half.T


def guided_gram_products(features: ArrayLike, guides: ArrayLike) -> jax.Array:
    """(R, C, C): for each region r, (F∘t_r)ᵀ(F∘t_r) = Σ_p t_r(p)² f_p f_pᵀ (Gatys et al. 2017,
    the features times the guide, not its square root), not normalized.

    features: (1, H, W, C) or (H, W, C); guides: (R, H, W), each region's guide on this layer's
    grid. Rematerialized: the backward pass recomputes each F∘t_r from F and the guide instead of
    keeping R more copies of every style layer through the step.
    """
    image = _single_image(features, "features")
    guide = _at_least_float32(guides)
    if guide.ndim != 3 or guide.shape[1:] != image.shape[:2]:
        raise ValueError(f"guides of shape {jnp.shape(guides)} do not match features of shape {jnp.shape(features)}")
    return _guided_products(image, guide)


@jax.checkpoint
def _guided_products(image, guide):
    channels = image.shape[-1]
    weighted = guide[..., None] * image[None]  # (R, H, W, C)
    return jax.vmap(_symmetric_product)(weighted.reshape(guide.shape[0], -1, channels))


def guide_mass(guides: ArrayLike) -> jax.Array:
    """(R,): Σ_p t_r(p)², each region's positions as its guided Gram counts them (the H·W of an
    unguided layer: a guide of ones has mass H·W)."""
    guide = _at_least_float32(guides)
    return jnp.sum(jnp.square(guide), axis=(1, 2))


def normalized_guided_grams(products: jax.Array, mass: jax.Array, gram_normalization: str) -> jax.Array:
    """(R, C, C) `guided_gram_products` divided as `normalized_gram` divides an unguided one, the
    region's mass standing for H·W; an empty region's (mass 0) stays 0."""
    _check_option("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    if gram_normalization == "raw":
        return products
    positions = jnp.maximum(mass, jnp.finfo(jnp.float32).tiny)
    if gram_normalization == "chw":
        positions = positions * products.shape[-1]
    return products / positions[:, None, None]


def guided_gram_distance(image_grams: jax.Array, target_grams: ArrayLike, mass: jax.Array,
                         region_weights: ArrayLike, style_loss: str = "gatys",
                         image_positions: Optional[ArrayLike] = None) -> jax.Array:
    """Σ_r λ_r · `gram_distance`(G_r, A_r), each region's mass standing for the layer's M = H·W
    in the "gatys" divisor 4N²M². `region_weights` λ (R,): 0 leaves a region out (one with no
    style, or empty on this layer)."""
    _check_style_loss(style_loss, image_positions)
    target = _at_least_float32(target_grams)
    weights = _at_least_float32(region_weights)
    if target.shape != image_grams.shape:
        raise ValueError(f"target Grams of shape {target.shape} for image Grams of shape {image_grams.shape}")
    difference = image_grams - target
    if style_loss == "mse":
        per_region = jnp.mean(jnp.square(difference), axis=(1, 2))
    elif style_loss == "sum":
        per_region = jnp.sum(jnp.square(difference), axis=(1, 2))
    else:
        if style_loss == "gatys":
            scale = 2.0 * image_grams.shape[-1] * jnp.maximum(mass, jnp.finfo(jnp.float32).tiny)
        else:
            scale = jnp.broadcast_to(2.0 * KERAS_EXAMPLE_CHANNELS * jnp.asarray(image_positions, difference.dtype),
                                     mass.shape)
        per_region = jnp.sum(jnp.square(difference / scale[:, None, None]), axis=(1, 2))
    return jnp.sum(jnp.where(weights > 0, weights * per_region, 0.0))


def size_product(*factors: Any) -> Any:
    """The product of sizes as a float: Python's for ints, float32 for traced sizes (a padded
    image's true size). Either way the exact product rounded once: at print sizes C·H·W passes
    int32 (64 × 8192² = 2³²), which JAX refuses as an int."""
    if all(isinstance(factor, int) for factor in factors):
        return float(np.prod(factors, dtype=object))
    total = jnp.float32(1)
    for factor in factors:  # C, then H, then W: each partial product exact below 2²⁴
        total = total * jnp.asarray(factor, jnp.float32)
    return total


def normalized_gram(product: jax.Array, height: Any, width: Any, gram_normalization: str) -> jax.Array:
    """A `gram_product` of an (H, W, C) layer divided as `gram_normalization` says (H and W ints, or
    traced: the true size of a padded layer)."""
    _check_option("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    if gram_normalization == "raw":
        return product
    channels = product.shape[-1]
    return product / (size_product(height, width) if gram_normalization == "hw" else size_product(channels, height, width))


def _gram_of_image(image, gram_normalization):
    height, width, _ = image.shape
    return normalized_gram(gram_product(image), height, width, gram_normalization)


def gram(features: ArrayLike, gram_normalization: str = "raw") -> jax.Array:
    """Gram matrix G = Fᵀ F of one image's features, F being them reshaped to (H·W, C).

    Args:
      features: (1, H, W, C) or (H, W, C).
      gram_normalization: "raw" (G, the paper), "hw" (G / (H·W), TF tutorial) or "chw"
        (G / (C·H·W), neural-style and the PyTorch tutorial).

    Returns:
      (C, C), float32 (float64 if the features are).
    """
    _check_option("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    return _gram_of_image(_single_image(features, "features"), gram_normalization)


def content_loss(features: ArrayLike, target: ArrayLike, content_loss: str = "half_sum",
                 layer_size: Optional[Sequence[Any]] = None, position_weights: Optional[ArrayLike] = None) -> jax.Array:
    """Distance between an image's features and the content target at one layer.

    Args:
      features, target: (1, H, W, C) or (H, W, C), the same (H, W, C).
      content_loss: "sum" Σ(F−P)² (thesis, Sandahl, Keras example), "mean" mean (F−P)² (MSE:
        neural-style, TF and PyTorch tutorials) or "half_sum" ½·Σ(F−P)² (Gatys et al.).
      layer_size: the layer's true (H, W) when the arrays are padded (zero past it in both):
        "mean" divides by its H·W·C. None: the arrays' own.
      position_weights: (H, W) weights of each position's squared distance (regions that hold
        the content more or less tightly); the divisors stay the unweighted ones, so weights of
        1 are the plain loss.
    """
    _check_option("content_loss", content_loss, CONTENT_LOSSES)
    image = _single_image(features, "features")
    goal = _single_image(target, "target")
    if image.shape != goal.shape:
        raise ValueError(f"features have shape {jnp.shape(features)} but the content target has "
                         f"shape {jnp.shape(target)}")
    squared = jnp.square(image - goal)
    if position_weights is not None:
        squared = _at_least_float32(position_weights)[..., None] * squared
    if layer_size is not None:
        return content_loss_of_sum(jnp.sum(squared), size_product(*layer_size, image.shape[-1]), content_loss)
    if content_loss == "mean":
        return jnp.mean(squared)
    return content_loss_of_sum(jnp.sum(squared), squared.size, content_loss)


def content_loss_of_sum(squared_sum: jax.Array, size: Any, content_loss: str = "half_sum") -> jax.Array:
    """`content_loss` from Σ(F−P)² and the number of elements it summed (a layer's H·W·C, an int or
    a traced float): what a run that sums over tiles of the image has (tiles.features_in_tiles)."""
    _check_option("content_loss", content_loss, CONTENT_LOSSES)
    if content_loss == "mean":
        return squared_sum / (float(size) if isinstance(size, int) else size)
    return 0.5 * squared_sum if content_loss == "half_sum" else squared_sum


def style_layer_loss(features: ArrayLike, target_gram: ArrayLike, *, gram_normalization: str = "raw",
                     style_loss: str = "gatys", image_positions: Optional[ArrayLike] = None,
                     layer_size: Optional[Sequence[Any]] = None) -> jax.Array:
    """Distance between the Gram matrix of an image's features and a style target at one layer.

    With G = gram(features, gram_normalization), A = target_gram, N = C channels and M = H·W
    positions of this layer:
      "gatys"          Σ(G−A)² / (4 N² M²), the paper's E_l.
      "mse"            mean (G−A)² (neural-style, TF and PyTorch tutorials).
      "sum"            Σ(G−A)² (McCafferty's thesis).
      "keras_example"  Σ(G−A)² / (4 · 3² · P²), P = `image_positions`. fchollet's Keras example
                       divides by `channels = 3` and `size = img_nrows * img_ncols`, the channels
                       and pixel count of the IMAGE, not of the layer, so every layer gets the
                       same divisor. Reproducing that example needs P = the content image's H·W.

    Args:
      features: (1, H, W, C) or (H, W, C).
      target_gram: (C, C), made by `gram` with the same normalization.
      image_positions: required by "keras_example" (an int, or an array under vmap); ignored by
        the other style losses so a caller may pass it always.
      layer_size: the layer's true (H, W) when the features are padded (zero past it); None: the
        features' own.
    """
    _check_option("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    _check_style_loss(style_loss, image_positions)
    image = _single_image(features, "features")
    size = tuple(layer_size) if layer_size is not None else image.shape[:2]
    image_gram = normalized_gram(gram_product(image), size[0], size[1], gram_normalization)
    if jnp.shape(target_gram) != image_gram.shape:
        raise ValueError(f"target_gram has shape {jnp.shape(target_gram)} but features of shape "
                         f"{jnp.shape(features)} give a Gram matrix of shape {image_gram.shape}")
    return gram_distance(image_gram, target_gram, size, style_loss, image_positions)


def _check_style_loss(style_loss, image_positions):
    _check_option("style_loss", style_loss, STYLE_LOSSES)
    if style_loss == "keras_example" and image_positions is None:
        raise ValueError("style_loss='keras_example' needs image_positions, the content image's H·W")


def gram_distance(image_gram: jax.Array, target_gram: ArrayLike, layer_size: Sequence[int],
                  style_loss: str = "gatys", image_positions: Optional[ArrayLike] = None) -> jax.Array:
    """`style_layer_loss` from the image's Gram matrix (normalized like the target) and the
    layer's (H, W) (ints, or traced: a padded layer's true size): what a run that sums the Gram
    matrix over tiles of the image has."""
    _check_style_loss(style_loss, image_positions)
    target = _at_least_float32(target_gram)
    difference = image_gram - target
    if style_loss == "mse":
        return jnp.mean(jnp.square(difference))
    if style_loss == "sum":
        return jnp.sum(jnp.square(difference))
    # Divide before squaring (Σ(d/2NM)² == Σd²/4N²M²): raw Grams of large images are big enough
    # that their squares summed would come close to float32's range.
    if style_loss == "gatys":
        scale: Union[float, jax.Array] = 2.0 * size_product(image_gram.shape[-1], *layer_size)
    else:
        # An array, so an int32 image_positions under vmap cannot overflow when squared.
        scale = 2.0 * KERAS_EXAMPLE_CHANNELS * jnp.asarray(image_positions, difference.dtype)
    return jnp.sum(jnp.square(difference / scale))


def total_variation(image: ArrayLike, tv_loss: str = "l2", tv_beta: float = 2.5,
                    size: Optional[Sequence[Any]] = None, position_weights: Optional[ArrayLike] = None) -> jax.Array:
    """Total variation of one image, (1, H, W, C) or (H, W, C), summed over channels.

    With Δh = x[1:, :] − x[:-1, :] and Δw = x[:, 1:] − x[:, :-1]:
      "l1"     Σ|Δh| + Σ|Δw| over their full ranges (tf.image.total_variation, neural-style-pt).
      "l2"     ½·Σ(Δh² + Δw²) over the common (H−1)×(W−1) grid anchored at the top left: the
               loss whose gradient jcjohnson/neural-style's TVLoss writes by hand (it defines no
               loss value of its own).
      "power"  Σ(Δh² + Δw²)^(β/2) over the same grid (Keras example, Sandahl et al., β = 2.5).
               Its gradient is 0, not NaN, where both differences are 0, as long as β ≥ 2.

    `size`: the true (H, W) of a padded image (traced values); the sums then run over the
    differences inside it, whatever the padding holds. `position_weights`: (H, W) weights of
    each term, taken at the pixel a difference starts from (its top left).
    """
    _check_option("tv_loss", tv_loss, TV_LOSSES)
    pixels = _single_image(image, "image")
    down = pixels[1:, :] - pixels[:-1, :]
    right = pixels[:, 1:] - pixels[:, :-1]
    weights = None if position_weights is None else _at_least_float32(position_weights)

    def inside(array, rows_past, columns_past):  # zero where a difference reaches past the image
        if size is None:
            return array
        row = jnp.arange(array.shape[0])[:, None] + rows_past < size[0]
        column = jnp.arange(array.shape[1])[None, :] + columns_past < size[1]
        return jnp.where((row & column)[..., None], array, jnp.zeros((), array.dtype))

    def weighted(array):  # each term times its top-left pixel's weight
        return array if weights is None else weights[:array.shape[0], :array.shape[1], None] * array

    if tv_loss == "l1":
        return jnp.sum(weighted(jnp.abs(inside(down, 1, 0)))) + jnp.sum(weighted(jnp.abs(inside(right, 0, 1))))
    # Both differences taken at the same pixel (i, j), i < H−1 and j < W−1.
    squared = inside(jnp.square(down[:, :-1]) + jnp.square(right[:-1, :]), 1, 1)
    if tv_loss == "l2":
        return 0.5 * jnp.sum(weighted(squared))
    return jnp.sum(weighted(jnp.power(squared, tv_beta / 2)))


def weighted_sum(terms: Union[Mapping[Any, ArrayLike], Sequence[ArrayLike]],
                 weights: Union[Mapping[Any, ArrayLike], Sequence[ArrayLike]]) -> jax.Array:
    """Σ weight · term, pairing mappings by key (e.g. layer name) or sequences by position."""
    if isinstance(terms, Mapping) != isinstance(weights, Mapping):
        raise ValueError("terms and weights must both be mappings or both be sequences")
    if isinstance(terms, Mapping):
        if set(terms) != set(weights):
            raise ValueError(
                f"terms have keys {sorted(terms)} but weights have keys {sorted(weights)}")
        pairs = [(terms[key], weights[key]) for key in terms]
    else:
        if len(terms) != len(weights):
            raise ValueError(f"{len(terms)} terms but {len(weights)} weights")
        pairs = list(zip(terms, weights))
    total = jnp.zeros((), jnp.float32)
    for term, weight in pairs:
        total = total + weight * _at_least_float32(term)
    return total
