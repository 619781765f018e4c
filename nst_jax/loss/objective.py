"""The style-transfer objective: pure functions of (pixels, params, targets, loss weights).

    loss(x) = α·Σ_l c_l·content_l(x) + β·Σ_l w_l·style_l(x) + γ·tv(x)

Targets (content features, blended style Gram matrices) are computed once, outside the
optimization loop, and passed in as arrays; so are α, β, γ, which lets one compiled loop serve
many weight settings at once under jax.vmap.
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax.loss import terms as losses
from nst_jax.model.extent import Extent
from nst_jax.model.layers import LAYER_ORDER, canonical_layer
from nst_jax.model.preprocess import preprocess
from nst_jax.model.ops import SHIPPED, ConvImpl
from nst_jax.model.tiles import TileGrid, features_in_tiles, front_layers
from nst_jax.model.vgg import Network, features, layer_size

# The network's arithmetic (vgg_features) and its rematerialization (Objective.remat); the
# settings' choices (--compute-dtype; --remat adds "auto", config.settings.REMAT_CHOICES, which
# a run's plan resolves: engine.plan).
COMPUTE_DTYPES = ("float32", "bfloat16")
REMATS = ("none", "blocks", "tiles")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The static (hashable) part of the loss: which layers, which normalizations, which network."""

    preprocessing: str
    content_layers: Tuple[str, ...]
    content_layer_weights: Tuple[float, ...]
    style_layers: Tuple[str, ...]
    style_layer_weights: Tuple[float, ...]
    # The same-named fields of settings.loss and settings.network (their defaults are there).
    pooling: str
    compute_dtype: str
    content_loss: str
    gram_normalization: str
    style_loss: str
    tv_loss: str
    tv_beta: float
    pixel_range: float
    normalize_gradients: bool
    # "blocks": each VGG block recomputed in the backward pass (vgg.features_by_block); "tiles":
    # blocks 1-2 computed and recomputed in column tiles, the rest keeping ReLU bits (features_in_tiles).
    remat: str
    # A 1-D mesh with an axis "rows": the network's input is split by rows over it (XLA's SPMD
    # partitioner adds the convolutions' halo exchanges and the Grams' all-reduces), including
    # heights the device count does not divide. None: one device, or a batch split by member.
    rows: Optional[Mesh] = None
    conv: ConvImpl = SHIPPED  # how the network convolves: the benchmarks vary it, runs never do

    @classmethod
    def from_settings(cls, settings: Any, preprocessing: str) -> "Objective":  # a config.Settings (a layer up)
        """The static part of settings.loss and settings.network: every field of theirs the
        Objective has, as is, but the layers (canonical names, weights filled in) and remat.

        The loss weights α, β, γ are not in it (`loss_weights`: traced, one per member).
        """
        loss, network = settings.loss, settings.network
        content = tuple(canonical_layer(n) for n in loss.content_layers)
        style = tuple(canonical_layer(n) for n in loss.style_layers)
        own = {field.name for field in dataclasses.fields(cls)}
        same = {field.name: getattr(group, field.name) for group in (loss, network)
                for field in dataclasses.fields(group) if field.name in own}
        return cls(**{
            **same, "preprocessing": preprocessing,
            "content_layers": content, "content_layer_weights": layer_weights(content, loss.content_layer_weights),
            "style_layers": style, "style_layer_weights": layer_weights(style, loss.style_layer_weights),
            "remat": _resolved_remat(network.remat)})

    @property
    def layers(self) -> Tuple[str, ...]:
        """Every layer the loss reads, in network order (the network stops at the last one)."""
        return tuple(sorted(set(self.content_layers + self.style_layers), key=LAYER_ORDER.index))


def layer_weights(layers: Sequence[str], weights: Optional[Sequence[float]]) -> Tuple[float, ...]:
    """Per-layer weights as a tuple of floats (1 each when not given)."""
    return tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(layers)


def _resolved_remat(remat: str) -> str:
    if remat not in REMATS:  # "auto": a run's plan chooses (engine.plan), nothing else may guess
        raise ValueError(f"remat {remat!r} must be resolved by the run's plan (engine.plan.plan_run) first")
    return remat


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """α, β, γ (and a video frame's temporal weight) as float32 arrays: traced, so sweeping them
    never recompiles, and stacked along a leading member axis for a batch."""

    content: Any
    style: Any
    tv: Any
    temporal: Any = None  # video frames only


@dataclasses.dataclass(frozen=True)
class TemporalTarget:
    """A video frame's previous result warped onto it (like pixels) and its (H, W) confidence mask."""

    previous: Any
    mask: Any


@dataclasses.dataclass(frozen=True)
class RegionGuides:
    """The regions of the image being optimized (spatial control, Gatys et al. 2017): each style
    layer's guide (R, h, w) on that layer's grid (model.guides.layer_guides) and each region's
    weight λ_r (R,) there, 0 where the region has no style or is empty on that layer. Regions
    that weigh the content or TV otherwise: their weight at each position of each content layer
    and of the pixels (1 where no region says otherwise)."""

    layers: Any  # {style layer: (R, h, w) float32}
    weights: Any  # {style layer: (R,) float32}
    content: Any = None  # {content layer: (h, w) float32}, or None: the plain content loss
    tv: Any = None  # (H, W) float32, or None: the plain TV


@dataclasses.dataclass(frozen=True)
class Targets:
    """What the loss compares the image with, computed once before the loop.

    content: {layer: features of the content image}; style: {layer: Gram matrix of the style
    (or the blend of styles)}; temporal: video frames only; extent: the true image inside the
    padded one the loop optimizes (shape buckets), None where the image fills its array (the
    exact-shape program: no masking compiled in); guides: the image's regions, whose style
    targets are then (R, C, C) per layer, one guided Gram matrix per region.
    """

    # Typed Any, not Dict: vmap's in_axes are a Targets of axis numbers (optimize.BATCH_AXES).
    content: Any
    style: Any
    temporal: Optional[TemporalTarget] = None
    extent: Any = None  # Optional[Extent]
    guides: Any = None  # Optional[RegionGuides]


for _contract in (LossWeights, TemporalTarget, RegionGuides, Targets):  # pytrees: they cross jit and vmap
    jax.tree_util.register_dataclass(
        _contract, data_fields=[field.name for field in dataclasses.fields(_contract)], meta_fields=[])


def loss_weights(content_weight: float, style_weight: float, tv_weight: float,
                 temporal_weight: Optional[float] = None) -> LossWeights:
    """α, β, γ as float32 scalars (a batch of settings is then a batch of arrays).

    Host values: they reach the device with the run's other inputs (no compile per value).
    """
    return LossWeights(np.float32(content_weight), np.float32(style_weight), np.float32(tv_weight),
                       None if temporal_weight is None else np.float32(temporal_weight))


def _network_input(objective: Objective, pixels: jax.Array) -> jax.Array:
    """The (1, H, W, 3) preprocessed image the network reads, split by rows when asked."""
    rgb = pixels / objective.pixel_range
    if rgb.shape[-1] == 1:  # luminance-only transfer feeds the gray image to all three channels
        rgb = jnp.broadcast_to(rgb, rgb.shape[:-1] + (3,))
    image = preprocess(rgb[None], objective.preprocessing)
    if objective.rows is not None:
        image = jax.lax.with_sharding_constraint(
            image, NamedSharding(objective.rows, PartitionSpec(None, "rows")))
    return image


def _dtype(objective: Objective) -> Any:
    return jnp.bfloat16 if objective.compute_dtype == "bfloat16" else jnp.float32


def _network(objective):
    return Network(objective.pooling, _dtype(objective), objective.conv)


def vgg_features(objective: Objective, params: Dict[str, Any], pixels: jax.Array,
                 layers: Optional[Sequence[str]] = None, extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
    """VGG activations of an (H, W, 1 or 3) image of pixels in [0, pixel_range]; `extent`: the
    true image inside padded pixels (activations zero outside it)."""
    image, layers = _network_input(objective, pixels), layers or objective.layers
    if objective.remat == "tiles":  # whole activations: for passes without a backward
        return features_in_tiles(params, image, layers, _network(objective), kept=layers, extent=extent)[0]
    return features(params, image, layers, pooling=objective.pooling, dtype=_dtype(objective),
                    remat=objective.remat == "blocks", conv=objective.conv, extent=extent)


def _layer_size(pixels: jax.Array, layer: str, extent: Optional[Extent]) -> Tuple[Any, Any]:
    """(H, W) of `layer` for these pixels: static, or the true size's traced one when padded."""
    return layer_size(pixels.shape[0], pixels.shape[1], layer) if extent is None else extent.at(layer)


def _tiled_layer_statistics(objective: Objective, params: Dict[str, Any], pixels: jax.Array,
                            content: Optional[Dict[str, jax.Array]] = None, extent: Optional[Extent] = None,
                            guides: Optional[Dict[str, jax.Array]] = None,
                            content_weights: Optional[Dict[str, jax.Array]] = None
                            ) -> Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]:
    """({style layer: normalized Gram matrix}, {content layer: content loss}) of an image, the
    first two blocks computed in column tiles (remat "tiles": vgg.features_in_tiles).

    Their Gram matrices and content distances are sums over the tiles; deeper layers' come from
    their whole activations. `content`: {layer: target features}; None: Gram matrices only.
    `guides`: {style layer: (R, h, w)}: guided Gram matrices (R, C, C), each tile's product
    taken with its own columns of the guides. `content_weights`: {content layer: (h, w)}, each
    position's weight in the content distance (RegionGuides.content).
    """
    if objective.normalize_gradients:
        raise ValueError("remat 'tiles' cannot normalize gradients: the norm spans the whole image")
    image = _network_input(objective, pixels)
    layers = objective.layers if content is not None else objective.style_layers
    grid = TileGrid.for_layers(layers, image.shape[2], objective.pooling)
    front = front_layers(layers, objective.pooling)
    # Each front content target padded with zero columns to the tiles' width: a tile's share of
    # Σ(F−P)² is then one slice, and columns past the image (F = P = 0 there) add nothing.
    padded = {layer: jnp.pad(target.reshape(target.shape[-3:]).astype(jnp.float32),
                             ((0, 0), (0, grid.padded_width(layer) - grid.layer_width(layer)), (0, 0)))
              for layer, target in (content or {}).items() if layer in front}
    padded_guides = {layer: jnp.pad(guide.astype(jnp.float32),
                                    ((0, 0), (0, 0), (0, grid.padded_width(layer) - guide.shape[2])))
                     for layer, guide in (guides or {}).items() if layer in front}
    padded_weights = {layer: jnp.pad(weights.astype(jnp.float32),
                                     ((0, 0), (0, grid.padded_width(layer) - weights.shape[1])))
                      for layer, weights in (content_weights or {}).items() if layer in front}

    def tile_columns(array, layer, i, axis):
        return jax.lax.dynamic_slice_in_dim(array, i * grid.tile_width(layer), grid.tile_width(layer), axis=axis)

    def tile_product(own, layer, i):
        if guides is None:
            return losses.gram_product(own[layer])
        return losses.guided_gram_products(own[layer], tile_columns(padded_guides[layer], layer, i, 2))

    def reduce_tile(own, i):
        grams = {layer: tile_product(own, layer, i) for layer in objective.style_layers if layer in front}
        def squared(layer, target):
            distance = jnp.square(own[layer][0].astype(jnp.float32) - tile_columns(target, layer, i, 1))
            if layer in padded_weights:
                distance = tile_columns(padded_weights[layer], layer, i, 1)[..., None] * distance
            return jnp.sum(distance)

        distances = {layer: squared(layer, target) for layer, target in padded.items()}
        return grams, distances

    activations, (products, distances) = features_in_tiles(params, image, layers, _network(objective),
                                                           reduce_tile=reduce_tile, grid=grid, extent=extent)

    def gram(layer):
        if guides is not None:
            product = (products[layer] if layer in products
                       else losses.guided_gram_products(activations[layer], guides[layer]))
            return losses.normalized_guided_grams(product, losses.guide_mass(guides[layer]),
                                                  objective.gram_normalization)
        product = products[layer] if layer in products else losses.gram_product(activations[layer])
        return losses.normalized_gram(product, *_layer_size(pixels, layer, extent), objective.gram_normalization)

    def content_loss(layer, target):
        if layer not in distances:
            return losses.content_loss(activations[layer], target, objective.content_loss,
                                       None if extent is None else extent.at(layer),
                                       None if content_weights is None else content_weights[layer])
        size = target.size if extent is None else losses.size_product(*extent.at(layer), target.shape[-1])
        return losses.content_loss_of_sum(distances[layer], size, objective.content_loss)

    return ({layer: gram(layer) for layer in objective.style_layers},
            {layer: content_loss(layer, target) for layer, target in (content or {}).items()})


def content_targets(objective: Objective, params: Dict[str, Any], content_pixels: jax.Array,
                    extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
    """{layer: features} of the content image at the content layers (float32; zero outside
    `extent`, the true image inside padded pixels)."""
    activations = vgg_features(objective, params, content_pixels, objective.content_layers, extent)
    return {layer: activations[layer].astype(jnp.float32) for layer in objective.content_layers}


def style_grams(objective: Objective, params: Dict[str, Any], style_pixels: jax.Array,
                extent: Optional[Extent] = None, guides: Optional[Dict[str, jax.Array]] = None) -> Dict[str, jax.Array]:
    """{layer: Gram matrix} of one style image at the style layers (`extent`: the true image
    inside padded pixels; the Grams are the unpadded image's). `guides`: {layer: (R, h, w)}, the
    painting's regions on each style layer's grid: {layer: (R, C, C)}, a guided Gram per region."""
    if objective.remat == "tiles":
        return _tiled_layer_statistics(objective, params, style_pixels, extent=extent, guides=guides)[0]
    activations = vgg_features(objective, params, style_pixels, objective.style_layers, extent)
    if guides is not None:
        return {layer: _guided_grams(objective, activations[layer], guides[layer]) for layer in objective.style_layers}
    return {layer: losses.normalized_gram(losses.gram_product(activations[layer]),
                                          *_layer_size(style_pixels, layer, extent), objective.gram_normalization)
            for layer in objective.style_layers}


def _guided_grams(objective: Objective, features: jax.Array, guides: jax.Array) -> jax.Array:
    return losses.normalized_guided_grams(losses.guided_gram_products(features, guides),
                                          losses.guide_mass(guides), objective.gram_normalization)


def blend_grams(grams_per_style: Sequence[Dict[str, jax.Array]], blend_weights: Any) -> Dict[str, jax.Array]:
    """Σ_i b_i·G_i / Σ_i b_i, layer by layer: one style target from several paintings.

    `blend_weights`: numbers, or an array traced inside a program (a run's targets pass them
    already summing to 1, so the division changes nothing there and needs no host round trip).
    """
    weights = [blend_weights[index] for index in range(len(grams_per_style))]
    total = sum(weights)
    if isinstance(total, (int, float)) and total <= 0:
        raise ValueError(f"style blend weights must have a positive sum, got {blend_weights}")
    return jax.tree_util.tree_map(
        lambda *grams: sum(weight / total * gram for weight, gram in zip(weights, grams)), *grams_per_style)


@jax.custom_vjp
def l1_normalized_gradient(features: jax.Array, strength: jax.Array) -> jax.Array:
    """Identity whose backward pass divides the gradient by its L1 norm, strength kept.

    neural-style's -normalize_gradients: each loss layer hands back
    strength · ∂E/∂F / (‖∂E/∂F‖₁ + 1e-8) instead of strength · ∂E/∂F.
    """
    return features


def _l1_normalized_forward(features, strength):
    return features, strength


def _l1_normalized_backward(strength, cotangent):
    # The cotangent is strength · ∂E/∂F; dividing by ‖cotangent‖₁/|strength| leaves strength in.
    magnitude = jnp.maximum(jnp.abs(strength), 1e-30)
    norm = jnp.sum(jnp.abs(cotangent.astype(jnp.float32))) / magnitude
    return (cotangent / (norm + 1e-8)).astype(cotangent.dtype), jnp.zeros_like(strength)


l1_normalized_gradient.defvjp(_l1_normalized_forward, _l1_normalized_backward)


def loss_terms(objective: Objective, params: Dict[str, Any], pixels: jax.Array, targets: Targets,
               weights: LossWeights) -> Dict[str, jax.Array]:
    """The weighted content, style and TV terms and their total, each a float32 scalar.

    With targets.temporal (video frames) and weights.temporal, the total also holds the
    temporal loss (`temporal_loss`).
    """
    extent: Optional[Extent] = targets.extent
    image_positions = pixels.shape[0] * pixels.shape[1] if extent is None else extent.height * extent.width
    true_size = None if extent is None else (extent.height, extent.width)
    guides: Optional[RegionGuides] = targets.guides

    def style_distance(layer, image_gram):
        if guides is None:
            return losses.gram_distance(image_gram, targets.style[layer], _layer_size(pixels, layer, extent),
                                        objective.style_loss, image_positions)
        return losses.guided_gram_distance(image_gram, targets.style[layer], losses.guide_mass(guides.layers[layer]),
                                           guides.weights[layer], objective.style_loss, image_positions)

    content_weights = None if guides is None else guides.content
    if objective.remat == "tiles":
        grams, content_losses = _tiled_layer_statistics(objective, params, pixels, targets.content, extent,
                                                        None if guides is None else guides.layers, content_weights)
        content_terms = [content_losses[layer] for layer in objective.content_layers]
        style_terms = [style_distance(layer, grams[layer]) for layer in objective.style_layers]
    else:
        activations = vgg_features(objective, params, pixels, extent=extent)

        def true_layer_size(layer):
            return None if extent is None else extent.at(layer)

        def layer_input(layer, strength):
            if not objective.normalize_gradients:
                return activations[layer]
            return l1_normalized_gradient(activations[layer], jnp.float32(strength))

        content_terms = [losses.content_loss(layer_input(layer, w * weights.content), targets.content[layer],
                                             objective.content_loss, true_layer_size(layer),
                                             None if content_weights is None else content_weights[layer])
                         for layer, w in zip(objective.content_layers, objective.content_layer_weights)]
        if guides is None:
            style_terms = [losses.style_layer_loss(
                layer_input(layer, w * weights.style), targets.style[layer],
                gram_normalization=objective.gram_normalization, style_loss=objective.style_loss,
                image_positions=image_positions, layer_size=true_layer_size(layer))
                for layer, w in zip(objective.style_layers, objective.style_layer_weights)]
        else:
            style_terms = [style_distance(layer, _guided_grams(objective, layer_input(layer, w * weights.style),
                                                                guides.layers[layer]))
                           for layer, w in zip(objective.style_layers, objective.style_layer_weights)]
    content = losses.weighted_sum(content_terms, objective.content_layer_weights)
    style = losses.weighted_sum(style_terms, objective.style_layer_weights)
    tv = losses.total_variation(pixels, objective.tv_loss, objective.tv_beta, true_size,
                                None if guides is None else guides.tv)
    terms = {"content": weights.content * content, "style": weights.style * style, "tv": weights.tv * tv}
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    if targets.temporal is not None:  # video frames only: the single-image program stays as it was
        # Added to the total alone: the optimization loop's terms have a fixed structure.
        terms["total"] = terms["total"] + weights.temporal * temporal_loss(
            pixels, targets.temporal.previous, targets.temporal.mask, true_size)
    return terms


def temporal_loss(pixels: jax.Array, previous: jax.Array, mask: jax.Array,
                  size: Optional[Tuple[Any, Any]] = None) -> jax.Array:
    """Ruder et al. 2016's temporal loss: (1/D) Σ c·(x − ω(x_prev))², D = H·W·C.

    previous: the previous frame's result warped onto this one, like pixels; mask: (H, W) c,
    0 at disocclusions and motion boundaries, 1 elsewhere. In pixel units (0..pixel_range).
    The long-term loss stacks K earlier frames: previous (K, H, W, C), mask (K, H, W), summed.
    `size`: the true (H, W) of padded pixels, whose mask is 0 past it (D counts the true pixels).
    """
    difference = jnp.asarray(pixels, jnp.float32) - previous
    total = jnp.sum(mask[..., None] * jnp.square(difference))
    return total / pixels.size if size is None else total / losses.size_product(*size, pixels.shape[-1])


def total_loss(objective: Objective, params: Dict[str, Any], pixels: jax.Array, targets: Targets,
               weights: LossWeights) -> jax.Array:
    """The scalar the optimizer minimizes."""
    return loss_terms(objective, params, pixels, targets, weights)["total"]
