"""Region maps -> guide channels: color-coded segmentations and plain masks (spatial control).

A guide is an (H, W) float32 array in [0, 1]: how much each pixel belongs to a region. A run's
regions are (R, H, W) guides of the content and, optionally, of each style image
(engine/regions.py). Segmentation maps are hand-painted or exported with anti-aliased edges, so a
pixel belongs to the listed color nearest to it, as long as it lies within a tolerance; pixels
far from every color belong to no region.
"""

from typing import List, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

# Colors by name (CSS's for the common ones; those the neural-style-pt and deep-photo forks use).
NAMED_COLORS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    "gray": (128, 128, 128), "grey": (128, 128, 128), "orange": (255, 165, 0), "purple": (128, 0, 128),
    "lightblue": (0, 255, 255), "pink": (255, 192, 203), "brown": (165, 42, 42),
}
Color = Tuple[int, int, int]

# A color found in a map (`find_colors`) covers at least this share of it; fewer pixels are the
# anti-aliased seams between regions, not regions.
MIN_COLOR_SHARE = 0.002
MOST_COLORS = 16


def parse_color(text: str) -> Color:
    """'red', '#ff0000', 'ff0000' or '255/0/0' -> (255, 0, 0); ValueError saying what is wrong."""
    name = text.strip().lower()
    if name in NAMED_COLORS:
        return NAMED_COLORS[name]
    digits = name[1:] if name.startswith("#") else name
    if len(digits) == 6 and all(c in "0123456789abcdef" for c in digits):
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    parts = name.split("/")
    if len(parts) == 3 and all(part.isdigit() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)  # type: ignore[return-value]
    raise ValueError(f"{text!r} is not a color: a name ({', '.join(sorted(NAMED_COLORS))}), "
                     f"#rrggbb or r/g/b")


def color_name(color: Color) -> str:
    """A color's name if it has one, else #rrggbb."""
    named = next((name for name, value in NAMED_COLORS.items() if value == tuple(color)), None)
    return named or "#{:02x}{:02x}{:02x}".format(*color)


def _levels(rgb: npt.ArrayLike) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> the same in 0..255 floats."""
    pixels = np.asarray(rgb, np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"a segmentation map must be (H, W, 3) RGB, got {pixels.shape}")
    return pixels * 255.0


def _between(color: np.ndarray, first: Color, second: Color, tolerance: float) -> bool:
    """Whether `color` lies within `tolerance` of the line from `first` to `second`: a blend of
    the two, as an anti-aliased seam between their regions paints it."""
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    share = np.clip(np.dot(color - b, a - b) / max(np.dot(a - b, a - b), 1e-9), 0.0, 1.0)
    return bool(np.abs(color - (share * a + (1 - share) * b)).max() <= tolerance)


def find_colors(rgb: npt.ArrayLike, tolerance: float) -> List[Color]:
    """The colors that paint regions of a map, the most common first: each covers at least
    MIN_COLOR_SHARE of it once the pixels within `tolerance` (0..255, per channel) of a more
    common color are counted as that color's; a blend of two more common colors is a seam
    between their regions, not a region. At most MOST_COLORS."""
    levels = np.rint(_levels(rgb)).astype(np.int32).reshape(-1, 3)
    colors, counts = np.unique(levels, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    colors, counts = colors[order], counts[order]
    taken: List[Color] = []
    left = np.ones(len(colors), bool)
    for index in range(len(colors)):
        if not left[index]:
            continue
        near = left & (np.abs(colors - colors[index]).max(axis=1) <= tolerance)
        if counts[near].sum() < MIN_COLOR_SHARE * len(levels):
            break  # the rest are rarer still
        left &= ~near
        if any(_between(colors[index].astype(np.float64), a, b, tolerance)
               for position, a in enumerate(taken) for b in taken[position + 1:]):
            continue
        taken.append(tuple(int(v) for v in colors[index]))  # type: ignore[arg-type]
        if len(taken) == MOST_COLORS:
            break
    return taken


def color_guides(rgb: npt.ArrayLike, colors: Sequence[Color], tolerance: float) -> np.ndarray:
    """(R, H, W) 0/1 guides, one per color: each pixel joins the nearest color if no channel
    differs from it by more than `tolerance` (0..255), else no region."""
    levels = _levels(rgb)
    palette = np.asarray(colors, np.float32)  # (R, 3)
    distance = np.abs(levels[None] - palette[:, None, None, :]).max(axis=-1)  # (R, H, W)
    nearest = np.argmin(distance, axis=0)
    within = np.take_along_axis(distance, nearest[None], axis=0)[0] <= tolerance
    return np.stack([(nearest == index) & within for index in range(len(colors))]).astype(np.float32)


def mask_guide(rgb: npt.ArrayLike) -> np.ndarray:
    """A plain mask (white: the region, black: outside; gray: partly) as an (H, W) guide."""
    return np.clip(np.asarray(rgb, np.float32).mean(axis=-1), 0.0, 1.0)


def resize_guides(guides: npt.ArrayLike, height: int, width: int) -> np.ndarray:
    """(R, H, W) guides resized to (R, height, width): area-averaged when shrinking (an edge pixel
    gets the share of the region it covers), bilinear when enlarging; never outside [0, 1]."""
    channels = np.asarray(guides, np.float32)
    if channels.shape[1:] == (height, width):
        return channels
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(channel)).resize(
        (width, height), Image.Resampling.BOX if channel.shape[0] >= height else Image.Resampling.BILINEAR))
        for channel in channels]).clip(0.0, 1.0)


def feathered(guide: npt.ArrayLike, radius: float) -> np.ndarray:
    """An (H, W) guide with its edges softened by a Gaussian blur of `radius` px (0: as is), in
    8 bits (an alpha channel's: Pillow blurs no float image): 0 and 1 stay exact."""
    channel = np.asarray(guide, np.float32)
    if radius <= 0:
        return channel
    levels = Image.fromarray(np.rint(np.clip(channel, 0.0, 1.0) * 255).astype(np.uint8))
    return np.asarray(levels.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
