"""Small JPEG previews of a run's images, and the side they are made at."""

import base64
import io
from typing import Sequence

import numpy as np
from PIL import Image

# The long side of a preview by how many images share the page: a single image large, a grid of
# sixteen small. What the page shows; the files written are full size.
SIDES = ((1, 512), (4, 384), (9, 320))
SMALLEST_SIDE = 256
FRAME_SIDE = 160  # a finished video frame in the page's strip
QUALITY = 85  # JPEG quality: about 20–40 KB for 512 px


def preview_side(images: int) -> int:
    """The long side of each preview when `images` are shown side by side."""
    return next((side for most, side in SIDES if images <= most), SMALLEST_SIDE)


def thumbnail(rgb: np.ndarray, side: int) -> Image.Image:
    """An RGB image in [0, 1] (H, W, 3) as a PIL image whose long side is at most `side`."""
    picture = Image.fromarray(np.asarray(np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5, np.uint8), "RGB")
    picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return picture


def jpeg(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def data_uri(encoded: bytes) -> str:
    """JPEG bytes as a data: URI, which the page sets as an <img>'s source."""
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode("ascii")


def previews(images: Sequence[np.ndarray], side: int) -> list:
    """Each RGB image as a JPEG data URI of long side at most `side`."""
    return [data_uri(jpeg(thumbnail(np.asarray(image, np.float32), side))) for image in images]
