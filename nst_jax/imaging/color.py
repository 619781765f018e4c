"""Color spaces for keeping the content's colors: pure functions on (..., 3) RGB arrays in [0, 1].

Both spaces share the luminance Y = 0.299 R + 0.587 G + 0.114 B, and their two chroma rows sum to
zero, so recombining (stylized Y, content chroma) gives the same RGB in either space; they differ
only in the chroma values they report. Results are not clipped: saving an image clips.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

SPACES = ("ycbcr", "yiq")

# NTSC YIQ, the standard matrix. Gatys et al. 2016 take its Y as the luminance.
_YIQ_FROM_RGB = np.array([
    [0.299, 0.587, 0.114],
    [0.5959, -0.2746, -0.3213],
    [0.2115, -0.5227, 0.3112],
])
# Full-range YCbCr of JPEG/JFIF (BT.601 weights), Cb and Cr centered at 0.5 instead of 128/255.
_YCBCR_FROM_RGB = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
_YCBCR_OFFSET = np.array([0.0, 0.5, 0.5])
# Inverted here in float64: a published inverse table is rounded, so not an exact inverse.
_RGB_FROM_YIQ = np.linalg.inv(_YIQ_FROM_RGB)
_RGB_FROM_YCBCR = np.linalg.inv(_YCBCR_FROM_RGB)


def _at_least_float32(array):
    array = jnp.asarray(array)
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def _as_color(array, name):
    array = _at_least_float32(array)
    if array.shape[-1:] != (3,):
        raise ValueError(f"{name} must have 3 channels on its last axis, got shape {array.shape}")
    return array


def _times_matrix(colors, matrix):
    """Apply a 3×3 matrix to every color of (..., 3)."""
    return jnp.einsum("...j,ij->...i", colors, jnp.asarray(matrix, colors.dtype),
                      precision=jax.lax.Precision.HIGHEST)


def _offset(colors, offset):
    # Broadcast explicitly so the functions work under jax_numpy_rank_promotion="raise".
    return colors + jnp.broadcast_to(jnp.asarray(offset, colors.dtype), colors.shape)


def rgb_to_yiq(rgb: ArrayLike) -> jax.Array:
    """RGB (..., 3) -> NTSC YIQ (..., 3); Y in [0, 1], I and Q centered at 0."""
    return _times_matrix(_as_color(rgb, "rgb"), _YIQ_FROM_RGB)


def yiq_to_rgb(yiq: ArrayLike) -> jax.Array:
    """Exact inverse of `rgb_to_yiq`."""
    return _times_matrix(_as_color(yiq, "yiq"), _RGB_FROM_YIQ)


def rgb_to_ycbcr(rgb: ArrayLike) -> jax.Array:
    """RGB (..., 3) -> full-range YCbCr (..., 3) in [0, 1], Cb and Cr centered at 0.5."""
    return _offset(_times_matrix(_as_color(rgb, "rgb"), _YCBCR_FROM_RGB), _YCBCR_OFFSET)


def ycbcr_to_rgb(ycbcr: ArrayLike) -> jax.Array:
    """Exact inverse of `rgb_to_ycbcr`."""
    return _times_matrix(_offset(_as_color(ycbcr, "ycbcr"), -_YCBCR_OFFSET), _RGB_FROM_YCBCR)


def luminance(rgb: ArrayLike) -> jax.Array:
    """Y of YIQ: (..., 3) RGB -> (...) luminance, the channel axis dropped."""
    return rgb_to_yiq(rgb)[..., 0]


def match_luminance(style_lum: ArrayLike, content_lum: ArrayLike) -> jax.Array:
    """Gatys et al. 2016: shift and scale the style luminance to the content's mean and std.

    (L_s − μ_s)·σ_c/σ_s + μ_c, statistics over all elements (population std); the two may differ
    in shape. A flat style (σ_s = 0) has no contrast to scale and becomes μ_c everywhere.
    """
    style = _at_least_float32(style_lum)
    content = _at_least_float32(content_lum)
    style_mean, style_std = jnp.mean(style), jnp.std(style)
    # Flatness by max == min, which is exact: the std of a constant comes out of float32
    # rounding of the mean as up to ~1e-6, not 0, and dividing by that would amplify noise.
    flat = jnp.max(style) == jnp.min(style)
    # The inner where keeps the division (and its gradient) finite on the branch not taken.
    scale = jnp.where(flat, 0.0, jnp.std(content) / jnp.where(flat, 1.0, style_std))
    return (style - style_mean) * scale + jnp.mean(content)


def recombine_colors(stylized_rgb: ArrayLike, content_rgb: ArrayLike, space: str = "ycbcr") -> jax.Array:
    """The luminance of the stylized image with the chroma of the content image (both (..., 3)).

    neural-style's original_colors does this in YUV; "ycbcr" and "yiq" give the same RGB (see the
    module docstring), so the choice only matters where a caller wants the intermediate space.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, not {space!r}")
    if jnp.shape(stylized_rgb) != jnp.shape(content_rgb):
        raise ValueError(f"stylized image has shape {jnp.shape(stylized_rgb)} but content image "
                         f"has shape {jnp.shape(content_rgb)}: resize the content to the output "
                         f"size first")
    to_space, from_space = {"ycbcr": (rgb_to_ycbcr, ycbcr_to_rgb),
                            "yiq": (rgb_to_yiq, yiq_to_rgb)}[space]
    stylized = to_space(stylized_rgb)
    content = to_space(content_rgb)
    mixed = jnp.concatenate([stylized[..., :1], content[..., 1:]], axis=-1)
    return from_space(mixed)
