"""Shape buckets: photos of close working sizes share one compiled program.

Every working size compiles its programs afresh (29–31 s on an H200, ~0.6 s each on the project's
CPU), so a user stylizing one photo after another pays that on nearly every run. With buckets on,
an image is padded to its bucket's shape and carries its true size as traced values
(`model.extent.Extent`): the network and the losses mask the padding so the result equals the
unpadded run's (tests/test_buckets.py), and every photo of the bucket runs the same programs.

The bucket of an image keeps its long side (the run's --image-size) and rounds the short side up
to a multiple of 1/8 of the long side (in whole multiples of 8 px), with at most 1/12 more
pixels (halved steps where 1/8 would add more): at 256 px a 1024×768 and a 960×662 photo share
256×192, at 512 px photos from 4:3 to 1.44:1 share 512×384.
Whether to bucket (`--shape-buckets auto`) weighs the compile a bucket saves against what the
padding costs in every step (`buckets_pay`; BENCHMARKS.md, "Shape buckets", has the measurements).
"""

import math
from typing import List, Sequence, Tuple

import numpy as np

from nst_jax.config.settings import Settings
from nst_jax.model.extent import Extent

# At most this share of padding (8.3 %), give or take the pixel that rounds a short side: on the
# project's CPU a step costs about what its pixels do, and at 1/8 the worst position in a bucket
# cost 1.15-1.17x the unpadded step (BENCHMARKS.md, "Shape buckets").
MOST_PADDING = 1 / 12


def bucket_side(short: int, long: int) -> int:
    """The short side of the bucket of an image whose sides are (short, long), short <= long."""
    step = -(-max(1, -(-long // 8)) // 8) * 8  # 1/8 of the long side, a multiple of 8 px
    while step > 1:
        side = min(-(-short // step) * step, long)
        if side <= short * (1 + MOST_PADDING) + 1:
            return side
        step //= 2
    return short


def bucket_shape(height: int, width: int) -> Tuple[int, int]:
    """(height, width) of the bucket an image of this shape runs in: the long side kept."""
    if height >= width:
        return height, bucket_side(width, height)
    return bucket_side(height, width), width


def padding_share(height: int, width: int) -> float:
    """How many more pixels the bucket has than the image (0.0: it fills its bucket)."""
    bucket_height, bucket_width = bucket_shape(height, width)
    return bucket_height * bucket_width / (height * width) - 1


def pad_to(array: np.ndarray, shape: Tuple[int, int], first_axis: int = 0) -> np.ndarray:
    """`array` (pixels (H, W, C), or a stack of them or of masks: rows and columns at axes
    `first_axis` and the next) in the top left corner of zeros `shape` rows and columns large
    (what the network masks out anyway: zeros keep the padding finite and compressible)."""
    array = np.asarray(array, np.float32)
    height, width = array.shape[first_axis:first_axis + 2]
    if (height, width) == tuple(shape):
        return array
    widths = [(0, 0)] * array.ndim
    widths[first_axis], widths[first_axis + 1] = (0, shape[0] - height), (0, shape[1] - width)
    return np.pad(array, widths)


def padded(pixels: np.ndarray) -> Tuple[np.ndarray, Extent]:
    """(pixels padded to their bucket, their Extent)."""
    height, width = pixels.shape[:2]
    return pad_to(pixels, bucket_shape(height, width)), Extent.of(height, width)


def loop_shape(settings: Settings, shape: Tuple[int, int]) -> Tuple[int, int]:
    """The (height, width) the programs run at for an image of `shape`: its bucket's when
    settings.network.shape_buckets is "on" (resolved by the run's plan), else its own."""
    return bucket_shape(*shape) if settings.network.shape_buckets == "on" else (shape[0], shape[1])


def pad_images(content_pixels: np.ndarray, style_pixels: Sequence[np.ndarray]
               ) -> Tuple[np.ndarray, List[np.ndarray], Tuple[Extent, Tuple[Extent, ...]]]:
    """The content and style pixels padded to their buckets, and their extents (as
    `stages.targets` takes them)."""
    content, content_extent = padded(content_pixels)
    styles, style_extents = zip(*(padded(pixels) for pixels in style_pixels)) if style_pixels else ((), ())
    return content, list(styles), (content_extent, tuple(style_extents))


# Measured on the project's 2-core CPU (BENCHMARKS.md, "Shape buckets"): the compile a new photo
# saves with buckets (3 programs compiled afresh against 6 loaded from the cache: 1.3 s at 256 px,
# 2.3 s at 512), and a step's seconds per megapixel and member (neural-style's loss: 9.1 at 256
# px, 8.6 at 512). An accelerator's compile is 29-31 s against 13 ms steps (H200, 512 px): always.
COMPILE_SECONDS = {"cpu": 2.0}
STEP_SECONDS_PER_MEGAPIXEL = {"cpu": 9.0}
# What the masks cost a step in a bucket the photo fills: nothing measurable (0.98-0.99x).
MASK_SHARE = 0.0


def buckets_pay(platform: str, shapes: Sequence[Tuple[int, int]], steps: int, members: int = 1) -> bool:
    """Whether padding images of these working shapes (one per coarse-to-fine scale, `steps` each,
    `members` images per device) to their buckets costs less than the compile of a new working
    size it saves: always on accelerators (a compile is minutes of steps there); on a CPU only for
    short or small runs, or photos that (nearly) fill their bucket."""
    if platform not in COMPILE_SECONDS:
        return True
    padding = sum(((math.prod(bucket_shape(*shape)) - math.prod(shape)) / 1e6 + MASK_SHARE * math.prod(shape) / 1e6)
                  * STEP_SECONDS_PER_MEGAPIXEL[platform] * steps * members for shape in shapes)
    return padding < COMPILE_SECONDS[platform] * len(shapes)
