"""Spatial control for a run (Gatys et al. 2017): which region of the output takes which style.

    Regions (guides of the content and the paintings, who takes what)
      ─▶ per scale: guides at the working sizes, carried to every style layer (model.guides)
      ─▶ guided Gram targets per painting (stages.run_targets), mixed per member and region
      ─▶ Targets.style (R, C, C) per layer and Targets.guides (loss.objective.RegionGuides)

A region's style target is the mix of its paintings' guided Gram matrices (each painting's own
region where it has a map, the whole painting where it has none); a region with no painting
keeps the content, and the output there is the content's own pixels (`keep`). Each region's
style loss weighs λ_r (1/n over the n regions with a style, the paper's choice), 0 on a layer
where the region or a painting's share of it is empty.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from nst_jax.engine.buckets import pad_to
from nst_jax.errors import UserInputError
from nst_jax.imaging.regions import feathered, resize_guides
from nst_jax.loss.objective import RegionGuides
from nst_jax.model.guides import layer_guides
from nst_jax.model.vgg import layer_size


@dataclasses.dataclass(frozen=True)
class Regions:
    """A run's regions as arrays (the Python API's input; the CLI makes them from --content-seg,
    --style-seg and --mask).

    Attributes:
      content: (R, H, W) guides of the content image in [0, 1], any size (resized to each
        scale's working size): how much each pixel belongs to each region.
      styles: per style image, its (R, Hs, Ws) guides, or None: the whole painting serves every
        region it is mixed into. Empty: None for every style.
      styles_of: (R, S) how much of each painting each region takes (rows are normalized; a row
        of zeros: the region keeps the content). None: region k takes painting k when R == S,
        else every painting, as the blend weights say.
      weights: λ_r of each region's style loss; None: 1/n for the n regions with a style.
      feather: Gaussian radius (px, at the output size) of the seam where the content is kept.
      content_weights, tv_weights: per region, a multiplier of the content loss and of TV at its
        positions (1 where no region lies); None: the plain terms.
    """

    content: npt.ArrayLike
    styles: Tuple[Optional[npt.ArrayLike], ...] = ()
    styles_of: Optional[npt.ArrayLike] = None
    weights: Optional[Sequence[float]] = None
    feather: float = 0.0
    content_weights: Optional[Sequence[float]] = None
    tv_weights: Optional[Sequence[float]] = None

    @property
    def count(self) -> int:
        return int(np.shape(self.content)[0])

    def checked(self, style_count: int) -> "Regions":
        """These regions with every array made float32 and every default filled in for
        `style_count` paintings; UserInputError (one line) where they cannot be used."""
        content = np.asarray(self.content, np.float32)
        if content.ndim != 3 or content.shape[0] < 1:
            raise UserInputError(f"regions: the content's guides must be (R, H, W), got {content.shape}")
        listed = [("the content's", content)] + [(f"style {index + 1}'s", np.asarray(given, np.float32))
                                                 for index, given in enumerate(self.styles) if given is not None]
        for name, values in listed:
            if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
                raise UserInputError(f"regions: {name} guides must lie in [0, 1]")
        count = content.shape[0]
        styles = list(self.styles) or [None] * style_count
        if len(styles) != style_count:
            raise UserInputError(f"regions: {len(styles)} style guides for {style_count} style images")
        style_guides: List[Optional[np.ndarray]] = []
        for index, guides in enumerate(styles):
            if guides is not None:
                guides = np.asarray(guides, np.float32)
                if guides.ndim != 3 or guides.shape[0] != count:
                    raise UserInputError(f"regions: style {index + 1}'s guides must be ({count}, H, W), "
                                         f"got {guides.shape}")
            style_guides.append(guides)
        if self.styles_of is None:
            mix = np.eye(count, style_count, dtype=np.float32) if count == style_count else np.ones(
                (count, style_count), np.float32)
        else:
            mix = np.asarray(self.styles_of, np.float32)
            if mix.shape != (count, style_count) or (mix < 0).any():
                raise UserInputError(f"regions: styles_of must be ({count}, {style_count}) non-negative "
                                     f"weights, got {mix.shape}")
        styled = mix.sum(axis=1) > 0
        if not styled.any():
            raise UserInputError("regions: no region takes a style (every region keeps the content)")
        if self.weights is None:
            weights = np.where(styled, 1.0 / styled.sum(), 0.0).astype(np.float32)
        else:
            weights = np.asarray(self.weights, np.float32)
            if weights.shape != (count,) or (weights < 0).any() or not weights.sum() > 0:
                raise UserInputError(f"regions: weights must be {count} non-negative numbers with a positive sum")
        for index in range(count):
            if not content[index].any():
                raise UserInputError(f"regions: region {index + 1} covers no pixel of the content")
            for style, guides in enumerate(style_guides):
                if mix[index, style] > 0 and guides is not None and not guides[index].any():
                    raise UserInputError(f"regions: region {index + 1} takes style {style + 1}, whose map "
                                         f"has none of it")
        multipliers = []
        for name, given in (("content_weights", self.content_weights), ("tv_weights", self.tv_weights)):
            if given is not None and (len(given) != count or min(given) < 0):
                raise UserInputError(f"regions: {name} must be {count} non-negative numbers, got {list(given)}")
            multipliers.append(None if given is None else tuple(float(value) for value in given))
        return Regions(content, tuple(style_guides), mix, tuple(float(w) for w in weights), self.feather,
                       *multipliers)

    def keep(self, height: int, width: int, scale: float, content: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """(height, width) share of each output pixel that is stylized, where a region keeps the
        content (None where every region has a style): 1 less the kept regions' guides (`content`,
        default the regions' own; a pixel in no region is stylized), feathered by `feather` px at
        the output size (`scale`: this size's share of it)."""
        kept = np.asarray(self.styles_of).sum(axis=1) == 0
        if not kept.any():
            return None
        guides = np.asarray(self.content if content is None else content)
        outside = resize_guides(guides[kept], height, width).sum(axis=0)
        return feathered(np.clip(1.0 - outside, 0.0, 1.0), self.feather * scale)


def _on_layers(guides: np.ndarray, shape: Tuple[int, int], padded_shape: Tuple[int, int], layers: Sequence[str],
               propagation: str, grow: int) -> Dict[str, np.ndarray]:
    """{layer: (R, h, w)} of guides resized to an image of `shape`, carried to each layer, padded
    with zeros to the layer's size in a `padded_shape` image (its shape bucket)."""
    on_layers = layer_guides(resize_guides(guides, *shape), layers, propagation, grow)
    return {layer: pad_to(guide, layer_size(*padded_shape, layer), first_axis=1) for layer, guide in on_layers.items()}


@dataclasses.dataclass(frozen=True)
class GuideMaking:
    """How a scale's guides are made: the layers that read them, the propagation and the sizes."""

    style_layers: Tuple[str, ...]
    content_layers: Tuple[str, ...]
    propagation: str
    grow: int
    shape: Tuple[int, int]  # the image's true (height, width) at this scale
    padded: Tuple[int, int]  # its array's (its shape bucket)

    def on_layers(self, guides: np.ndarray) -> Dict[str, np.ndarray]:
        return _on_layers(guides, self.shape, self.padded, self.style_layers + self.content_layers,
                          self.propagation, self.grow)

    def on_pixels(self, guides: np.ndarray) -> np.ndarray:
        return pad_to(resize_guides(guides, *self.shape), self.padded, first_axis=1)


def _weight_map(guides: np.ndarray, multipliers: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    """(h, w): 1 + Σ_r (m_r − 1)·t_r, each position's weight where region r weighs m_r (1 where
    no region lies); None without multipliers."""
    if multipliers is None:
        return None
    factors = np.asarray(multipliers, np.float32)[:, None, None] - 1.0
    return (1.0 + np.sum(factors * guides, axis=0)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ScaleGuides:
    """A run's regions at one working size: what the targets and the loop read."""

    content: Dict[str, np.ndarray]  # {style and content layer: (R, h, w)} of the image being optimized
    pixels: np.ndarray  # (R, H, W) of its pixels
    styles: List[Dict[str, np.ndarray]]  # {style layer: (R, h, w)} of each painting, at its own size
    regions: Regions  # checked
    making: GuideMaking

    def with_content(self, guides: npt.ArrayLike) -> "ScaleGuides":
        """The same with the image's guides made from other (R, H, W) ones (a video frame's)."""
        guides = np.asarray(guides, np.float32)
        return dataclasses.replace(self, content=self.making.on_layers(guides), pixels=self.making.on_pixels(guides))

    def member_mix(self, style_index: Optional[int], blend: Sequence[float]) -> np.ndarray:
        """(R, S) rows summing to 1 (or 0: no style) of how a member's regions mix the paintings:
        its own painting in every region with a style (a batch of one output per painting), or
        the blend weights times each region's share."""
        mix = np.asarray(self.regions.styles_of, np.float64)
        if style_index is not None:
            mix = np.where(mix.sum(axis=1, keepdims=True) > 0, np.eye(mix.shape[1])[style_index][None], 0.0)
        else:
            mix = mix * np.asarray(blend, np.float64)[None]
        total = mix.sum(axis=1, keepdims=True)
        return np.divide(mix, total, out=np.zeros_like(mix), where=total > 0).astype(np.float32)

    def region_guides(self, mix: np.ndarray) -> RegionGuides:
        """The loop's RegionGuides for a member mixing the paintings as `mix` says: λ_r on each
        style layer, 0 where the region or a painting it mixes is empty there; the content's and
        TV's weight maps where the regions weigh them."""
        weights = np.asarray(self.regions.weights, np.float32)
        per_layer = {}
        for layer in self.making.style_layers:
            guide = self.content[layer]
            present = guide.reshape(guide.shape[0], -1).any(axis=1)
            for style, guides in enumerate(self.styles):
                present &= (mix[:, style] == 0) | guides[layer].reshape(guide.shape[0], -1).any(axis=1)
            per_layer[layer] = np.where(present & (mix.sum(axis=1) > 0), weights, 0.0).astype(np.float32)
        content = None
        if self.regions.content_weights is not None:
            content = {layer: _weight_map(self.content[layer], self.regions.content_weights)
                       for layer in self.making.content_layers}
        return RegionGuides({layer: self.content[layer] for layer in self.making.style_layers}, per_layer,
                            content, _weight_map(self.pixels, self.regions.tv_weights))


def scale_guides(regions: Regions, style_layers: Sequence[str], content_layers: Sequence[str], propagation: str,
                 grow: int, content_shape: Tuple[int, int], style_shapes: Sequence[Tuple[int, int]],
                 content_bucket: Optional[Tuple[int, int]] = None,
                 style_buckets: Optional[Sequence[Tuple[int, int]]] = None) -> ScaleGuides:
    """`regions` (checked) at one scale: the content's guides at `content_shape` on every loss
    layer and its pixels, each painting's at its own size on every style layer, padded to their
    buckets where given."""
    padded = content_bucket or content_shape
    making = GuideMaking(tuple(style_layers), tuple(content_layers), propagation, grow,
                         (content_shape[0], content_shape[1]), (padded[0], padded[1]))
    content = np.asarray(regions.content, np.float32)
    styles = []
    for index, (guides, shape) in enumerate(zip(regions.styles, style_shapes)):
        whole = np.ones((regions.count,) + tuple(shape), np.float32) if guides is None else np.asarray(guides)
        bucket = style_buckets[index] if style_buckets is not None else shape
        styles.append(_on_layers(whole, shape, bucket, style_layers, propagation, grow))
    return ScaleGuides(making.on_layers(content), making.on_pixels(content), styles, regions, making)


@jax.jit
def mix_grams(grams_per_style: Sequence[Dict[str, jax.Array]], mix: jax.Array) -> Dict[str, jax.Array]:
    """{layer: (R, C, C)}: region r's target Σ_s mix[r, s]·G_s[r], from each painting's guided
    Grams {layer: (R, C, C)}. One program per style count (a member's mix is traced)."""
    return jax.tree_util.tree_map(
        lambda *grams: jnp.einsum("rs,srij->rij", mix, jnp.stack(grams)), *grams_per_style)
