"""The stages around the optimization loop, as functions of arrays.

    images ─▶ sizes and colors ─▶ targets (once) ─▶ start image ─▶ [jitted loop] ─▶ colors ─▶ image
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.sharding import Mesh

from nst_jax.config.settings import Settings
from nst_jax.engine.buckets import pad_to
from nst_jax.engine.optimize import jit_with_loop_options
from nst_jax.imaging import color, images
from nst_jax.loss.objective import Objective, Targets, blend_grams, content_targets, style_grams
from nst_jax.model.extent import Extent
from nst_jax.model.layers import canonical_layer
from nst_jax.model.preprocess import mean_rgb
from nst_jax.model.vgg import layer_level
from nst_jax.weights.params_file import Params


# The coarsest pass of a multi-scale run is never smaller than this (long side, px).
MIN_SCALE_SIDE = 32


def scale_sizes(settings: Settings) -> List[int]:
    """Long sides of the coarse-to-fine passes: image_size / √2^k for k = scales−1 … 0.

    Each pass starts from the previous one's result, upsampled: the coarse passes settle the
    large structures cheaply, the last one adds detail at full size (crowsonkb's ×√2 steps).
    """
    return [max(MIN_SCALE_SIDE, round(settings.image.image_size / math.sqrt(2) ** k))
            for k in range(settings.image.scales - 1, -1, -1)]


def style_side(settings: Settings) -> int:
    """The long side style images are resized to: style_scale of the output's (at least 16 px)."""
    return max(16, round(settings.image.style_scale * settings.image.image_size))


@dataclasses.dataclass(frozen=True)
class InputShapes:
    """(height, width) of a run's content and style images as read: what its plan is made from
    (the CLI reads them from the files' headers, before decoding)."""

    content: Tuple[int, int]
    styles: Tuple[Tuple[int, int], ...]
    regions: int = 0  # spatial control's regions (engine/regions.py); 0: none

    @classmethod
    def of(cls, content: np.ndarray, styles: Sequence[np.ndarray], regions: int = 0) -> "InputShapes":
        return cls(_shape(content), tuple(_shape(style) for style in styles), regions)

    def working_shape(self, long_side: int) -> Tuple[int, int]:
        """The content's (height, width) at `long_side`: the shape the loop runs at."""
        return images.long_side_shape(*self.content, long_side)


def _shape(image):
    height, width = image.shape[:2]
    return int(height), int(width)


@dataclasses.dataclass(frozen=True)
class Undersized:
    """An image that the network would shrink to nothing (`undersized`): which one, its size
    where the network sees it, and the fewest pixels each side needs."""

    style_index: Optional[int]  # None: the content image
    shape: Tuple[int, int]
    needed: int


def undersized(settings: Settings, inputs: InputShapes, long_side: Optional[int] = None) -> Optional[Undersized]:
    """The first image too small for the deepest layer the loss reads at the run's smallest
    working size, or None. Each 2×2 pooling halves a side (dropping an odd row), so a layer after
    k poolings needs 2^k pixels; below that it has none, and the loss is NaN. `long_side`: the
    content's long side there (default: the coarsest scale's, scale_sizes(settings)[0])."""
    long_side = scale_sizes(settings)[0] if long_side is None else long_side
    layers = settings.loss.content_layers + settings.loss.style_layers
    needed = 2 ** (max(layer_level(canonical_layer(layer)) for layer in layers) - 1)
    at_size = settings.replace(image_size=long_side)
    shapes = [inputs.working_shape(long_side)]
    shapes += [images.long_side_shape(*shape, style_side(at_size)) for shape in inputs.styles]
    for index, shape in enumerate(shapes):
        if min(shape) < needed:
            return Undersized(None if index == 0 else index - 1, shape, needed)
    return None


def prepare_images(content: np.ndarray, styles: Sequence[np.ndarray],
                   settings: Settings) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """Resize content to the output size and styles to style_scale of it; gray them for luminance mode.

    Returns (content_rgb, content_pixels, style_pixels list): content_rgb is the resized color
    content (for recombining colors), the others are what the network sees, in [0, pixel_range].
    """
    content_rgb = images.resize_long_side(content, settings.image.image_size)
    style_rgbs = [images.resize_long_side(style, style_side(settings)) for style in styles]
    content_view: Union[np.ndarray, jax.Array]  # what the network sees: RGB, or luminance (jax)
    style_views: Sequence[Union[np.ndarray, jax.Array]]
    if settings.image.original_colors == "luminance":
        # Gatys et al. 2016: transfer on luminance only, the style's luminance matched to the content's.
        content_luminance = color.luminance(content_rgb)
        content_view = content_luminance[..., None]
        style_views = [color.match_luminance(color.luminance(s), content_luminance)[..., None]
                       for s in style_rgbs]
    else:
        content_view, style_views = content_rgb, style_rgbs
    pixel_range = settings.loss.pixel_range
    return (content_rgb, np.asarray(content_view, np.float32) * pixel_range,
            [np.asarray(s, np.float32) * pixel_range for s in style_views])


class _JitWithChunkOptions:
    """optimize.jit_with_loop_options(fn) with the Objective static: on a CPU the target passes
    then run on the loop's faster convolutions (11 % faster at 512 px). Jitted on first use, not
    at import, as the options depend on the backend, which must not start before JAX is set up
    (jax.distributed)."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def _jitted(self) -> Any:
        return jit_with_loop_options(self._fn, static_argnums=0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted.lower(*args, **kwargs)


# The true sizes of a run's padded images (shape buckets): (the content's, (each style's, ...)),
# or None where every image fills its array.
Extents = Optional[Tuple[Extent, Tuple[Extent, ...]]]
# Each painting's regions, {style layer: (R, h, w)} (engine/regions.py), or None: no regions.
StyleGuides = Optional[Sequence[Dict[str, Any]]]


@_JitWithChunkOptions
def targets(objective: Objective, params: Params, content_pixels: jax.Array, style_pixels: Sequence[jax.Array],
            blend_weights: Optional[jax.Array] = None, extents: Extents = None, style_guides: StyleGuides = None
            ) -> Tuple[Dict[str, jax.Array], List[Dict[str, jax.Array]], Optional[Dict[str, jax.Array]]]:
    """(content features, [Gram matrices of each style image], their blend or None).

    One compiled program per run, computed once before the loop; each style image at its own
    size. `blend_weights` (one per style, summing to 1) gives the blended target too. `extents`:
    the images' true sizes when they are padded to their buckets (traced: one program serves
    every photo and painting of the same buckets). `style_guides`: each painting's regions on
    its style layers (engine/regions.py): its Grams are then (R, C, C), one per region.
    """
    content_extent, style_extents = extents or (None, (None,) * len(style_pixels))
    guides = style_guides or (None,) * len(style_pixels)
    grams = [style_grams(objective, params, pixels, extent, guide)
             for pixels, extent, guide in zip(style_pixels, style_extents, guides)]
    blended = None if blend_weights is None else blend_grams(grams, blend_weights)
    return content_targets(objective, params, content_pixels, content_extent), grams, blended


# From this many content pixels on, the content's and each style's passes run as programs of
# their own: XLA's CPU compiler overlaps the passes of one program (1.8 × one image's
# activations for a content and a style image, 2.3 × with two styles; optimization barriers do not
# order them), which at print sizes needs more than the loop itself. Below it, one program
# compiles faster.
SEPARATE_PASSES_FROM = 2048 * 2048


@_JitWithChunkOptions
def content_pass(objective: Objective, params: Params, pixels: jax.Array,
                 extent: Optional[Extent] = None) -> Dict[str, jax.Array]:
    """The content targets of one image as a program of its own (print sizes; a video's frames)."""
    return content_targets(objective, params, pixels, extent)


@_JitWithChunkOptions
def _style_pass(objective: Objective, params: Params, pixels: jax.Array,
                extent: Optional[Extent] = None, guides: Optional[Dict[str, jax.Array]] = None) -> Dict[str, jax.Array]:
    return style_grams(objective, params, pixels, extent, guides)


def run_targets(objective: Objective, params: Params, content_pixels: jax.Array, style_pixels: Sequence[jax.Array],
                blend_weights: jax.Array, rows: Optional[Mesh] = None, separate_from: int = SEPARATE_PASSES_FROM,
                extents: Extents = None, style_guides: StyleGuides = None
                ) -> Tuple[Dict[str, jax.Array], List[Dict[str, jax.Array]], Dict[str, jax.Array]]:
    """`targets` for a run: one program on one device, or from `separate_from` content pixels on
    (print sizes) one per image, each split over `rows` (the mesh the loop splits the image over)
    if given. With `extents` (images padded to their buckets, as `targets` takes them) one
    program per image too: the content's bucket and each painting's compile apart, so a new
    painting or a new photo whose bucket ran before compiles nothing. `style_guides`: as
    `targets` takes them."""
    height, width = content_pixels.shape[:2]
    if height * width < separate_from and extents is None:
        content, grams, blended = targets(objective, params, content_pixels, style_pixels, blend_weights,
                                          style_guides=style_guides)
        assert blended is not None  # blend_weights given
        return content, grams, blended
    split = dataclasses.replace(objective, rows=rows)
    content_extent, style_extents = extents or (None, (None,) * len(style_pixels))
    content = content_pass(split, params, content_pixels, content_extent)
    guides = style_guides or (None,) * len(style_pixels)
    grams = [_style_pass(split, params, pixels, extent, guide)
             for pixels, extent, guide in zip(style_pixels, style_extents, guides)]
    return content, grams, _blend(grams, blend_weights)


# The blend as one program (per style count): outside jit each layer's products and sums would
# compile programs of their own (two per layer; each a compile on a GPU).
_blend = jax.jit(blend_grams)


def compute_targets(objective: Objective, params: Params, content_pixels: jax.Array, style_pixels: Iterable[jax.Array],
                    blend_weights: Optional[Sequence[float]] = None) -> Targets:
    """Content features and the blended style Gram matrices: computed once, before the loop."""
    content, grams, _ = targets(objective, params, content_pixels, list(style_pixels))
    if not grams:
        return Targets(content, {})
    weights = blend_weights if blend_weights is not None else (1.0,) * len(grams)
    return Targets(content, blend_grams(grams, weights))


def initial_pixels(settings: Settings, preprocessing: str, content_pixels: np.ndarray,
                   init_image: Optional[np.ndarray] = None, seed: Optional[int] = None,
                   bucket: Optional[Tuple[int, int]] = None) -> jax.Array:
    """The image the optimization starts from, shaped like content_pixels, or padded with zeros
    to `bucket` (its (height, width), when images are padded to shape buckets).

    A given `init_image` (RGB; the init file, or the previous scale's result) is always used;
    otherwise settings.image.init says what to start from.
    """
    shape, pixel_range = content_pixels.shape, settings.loss.pixel_range
    padded_to = (shape[0], shape[1]) if bucket is None else (bucket[0], bucket[1])
    if init_image is None and settings.image.init == "image":
        raise ValueError("init='image' needs an init image")
    if init_image is not None:
        start: Union[np.ndarray, jax.Array] = images.resize_to(init_image, shape[0], shape[1])
        if shape[-1] == 1:
            start = color.luminance(start)[..., None]
        return jax.device_put(pad_to(np.asarray(start, np.float32) * np.float32(pixel_range), padded_to))
    if settings.image.init == "content":
        return jax.device_put(pad_to(content_pixels, padded_to))
    if settings.image.init == "gray":
        return jax.device_put(pad_to(np.full(shape, 0.5 * pixel_range, np.float32), padded_to))
    # "noise": the training set's mean color (a zero VGG input) plus Gaussian noise.
    mean = mean_rgb(preprocessing)
    if shape[-1] == 1:
        mean = np.asarray(color.luminance(mean))[None]
    noise_args = (np.int32(settings.image.seed if seed is None else seed), np.asarray(mean, np.float32),
                  np.float32(settings.image.init_noise_std), np.float32(pixel_range))
    if bucket is None:
        return _noise_start(*noise_args, shape)
    return _noise_start_in_bucket(*noise_args, np.int32(shape[0]), np.int32(shape[1]), (*padded_to, shape[2]))


def _start_from_noise(noise, mean, std, pixel_range):
    return jnp.clip(mean + noise * std, 0.0, 1.0) * pixel_range


@functools.partial(jax.jit, static_argnums=4)
def _noise_start(seed, mean, std, pixel_range, shape):
    """(mean colour + Gaussian noise, clipped to [0, 1]) × pixel_range: one compiled program."""
    return _start_from_noise(jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32), mean, std, pixel_range)


@functools.partial(jax.jit, static_argnums=6)
def _noise_start_in_bucket(seed, mean, std, pixel_range, height, width, bucket):
    """`_noise_start` of a height × width image in the top left of zeros of shape `bucket`, its
    size traced: one program per bucket. The noise inside is jax.random.normal(PRNGKey(seed),
    (height, width, C))'s: JAX's partitionable Threefry draws element i of a flat array from
    counter i, so the bucket's longer flat draw starts with the image's own (its transform
    fused otherwise: within 1e-7 of the pixel range; tests/test_buckets.py)."""
    flat = jax.random.normal(jax.random.PRNGKey(seed), (int(np.prod(bucket)),), jnp.float32)
    rows, columns, channels = (jnp.arange(n, dtype=jnp.int32) for n in bucket)
    inside = (rows[:, None, None] < height) & (columns[None, :, None] < width)
    index = (rows[:, None, None] * width + columns[None, :, None]) * bucket[2] + channels[None, None, :]
    return jnp.where(inside, _start_from_noise(flat[jnp.where(inside, index, 0)], mean, std, pixel_range), 0.0)


def finish_image(pixels: npt.ArrayLike, content_rgb: np.ndarray, settings: Settings,
                 keep: Optional[np.ndarray] = None) -> np.ndarray:
    """Optimized pixels -> RGB in [0, 1], with the content's colors where asked, and the
    content's own pixels where `keep` (H, W), the stylized share of each pixel, is below 1."""
    rgb = np.clip(np.asarray(pixels, np.float32) / settings.loss.pixel_range, 0.0, 1.0)
    if rgb.shape[-1] == 1:  # luminance-only: stylized Y, content's I and Q
        rgb = np.repeat(rgb, 3, axis=-1)
        rgb = color.recombine_colors(rgb, content_rgb, space="yiq")
    elif settings.image.original_colors == "recombine":
        rgb = color.recombine_colors(rgb, content_rgb, space="ycbcr")
    if keep is not None:
        rgb = keep[..., None] * np.asarray(rgb, np.float32) + (1.0 - keep[..., None]) * content_rgb
    return np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)
