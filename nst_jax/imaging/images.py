"""Image files <-> float32 RGB arrays (H, W, 3) in [0, 1]: loading, resizing, atomic saving.

Everything between loading and saving works on those arrays; this module owns the files.
"""

import contextlib
import io
import json
import math
import os
import struct
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, cast

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from nst_jax.atomic import PathLike, atomic_write, check_writable
from nst_jax.errors import UserInputError, reason

# Smaller images carry no usable content or style, and VGG's pooling leaves nothing of them.
MIN_SIDE = 8
# Images up to the largest output (16384², config.settings.MAX_IMAGE_SIDE) load: Pillow's own
# decompression-bomb limit (89 MP) would refuse a 100 MP photo. Beyond it: refused, one line.
MAX_LOAD_PIXELS = 16384 * 16384

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF"}

RESAMPLING = Image.Resampling.LANCZOS

_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

# Pillow has no 16-bit colour mode: it decodes 16-bit RGB(A) samples to 8 bits by keeping the most
# significant byte. Decoding the same data once more as the opposite byte order keeps the least
# significant byte instead (the row and filter arithmetic is the same for both), and the two bytes
# together are the full sample. Only for decoders where the tile's raw mode is all that differs.
_OTHER_BYTE_ORDER = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B",
                     "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B"}
_BYTE_ORDER_DECODERS = ("zip", "raw")  # PNG, uncompressed TIFF


def load_image(path: PathLike, long_side: Optional[int] = None, max_pixels: int = MAX_LOAD_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB (H, W, 3) in [0, 1].

    Args:
      path: any image Pillow reads; the first frame of an animation; turned upright per EXIF;
        transparency composited over white; colour-managed to sRGB when it carries an ICC profile.
      long_side: if given, resize (Lanczos) so the longer side has this many pixels.
      max_pixels: larger files are refused as decompression bombs.

    Raises:
      UserInputError: naming `path`, when the file is missing, unreadable, damaged or too small.
    """
    if long_side is not None and long_side < 1:
        raise ValueError(f"long_side must be a positive number of pixels, not {long_side!r}")
    rgb = _read_rgb(path, max_pixels)
    _check_size(path, rgb.shape, "is")
    if long_side is not None:
        rgb = resize_long_side(rgb, long_side)
        _check_size(path, rgb.shape, f"resized to a long side of {long_side} px is")
    return rgb


# EXIF orientations (tag 0x0112) that show the stored picture turned a quarter: its sides swap.
_QUARTER_TURNS = (5, 6, 7, 8)


def header_shape(path: PathLike) -> Tuple[int, int]:
    """(height, width) of the picture `load_image` would give (upright per EXIF), from the file's
    header alone: what a run is planned from before anything is decoded. Raises UserInputError
    naming `path` as `load_image` does."""
    with _reading(path), Image.open(path) as image:
        width, height = image.size
        return (width, height) if image.getexif().get(0x0112) in _QUARTER_TURNS else (height, width)


# Float arrays a little past [0, 1] (a resampling filter's overshoot) are clipped; further out,
# they are most likely 0..255 data, which would turn white: refused.
UNIT_RANGE_SLACK = 0.5


def as_rgb(array: npt.ArrayLike, what: str) -> np.ndarray:
    """An image array from an API caller -> float32 (H, W, 3) in [0, 1], or a UserInputError
    naming `what` ("content", "style 2", ...).

    Takes what image libraries hand out: uint8 (÷ 255) and uint16 (÷ 65535) arrays, floats in
    [0, 1], grayscale (H, W) or (H, W, 1), RGBA (composited over white, as files are).
    Refuses what would silently give a wrong picture: floats far outside [0, 1] (0..255 data),
    NaN or infinity, other integer types, channels first.
    """
    try:
        pixels = np.asarray(array)
    except ValueError as error:
        raise UserInputError(f"{what}: not an image array ({error})") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
        hint = (": channels first? transpose it to (H, W, C)" if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4)
                else "")
        raise UserInputError(f"{what}: an image array is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                             f"not {pixels.shape}{hint}")
    if pixels.dtype in (np.uint8, np.uint16):
        pixels = pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
    elif pixels.dtype == np.bool_:
        pixels = pixels.astype(np.float32)
    elif not np.issubdtype(pixels.dtype, np.floating):
        raise UserInputError(f"{what}: {pixels.dtype} pixels; pass uint8, uint16 or floats in [0, 1]")
    pixels = pixels.astype(np.float32, copy=False)  # a print-size float32 image is not copied
    low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=0.0))  # NaN and inf show here
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserInputError(f"{what}: holds NaN or infinite values")
    if low < -UNIT_RANGE_SLACK or high > 1 + UNIT_RANGE_SLACK:
        raise UserInputError(f"{what}: float pixels run from {low:g} to {high:g}; they must be in [0, 1] "
                             f"(0..255 data: divide by 255)")
    if pixels.shape[-1] == 1:
        return _gray_to_rgb(pixels[..., 0])  # clipped there
    if low < 0 or high > 1:
        pixels = np.clip(pixels, 0.0, 1.0)
    return np.ascontiguousarray(_over_white(pixels))


def resize_to(rgb: npt.ArrayLike, height: int, width: int) -> np.ndarray:
    """Resize (H, W, C) float pixels to (height, width, C): Lanczos, antialiased when shrinking.

    The filter runs in float32 (Pillow "F" images, one per channel), so no precision is lost to
    8 bits; the result is clipped to [0, 1] because Lanczos overshoots at sharp edges.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height} pixels")
    pixels = np.asarray(rgb, np.float32)
    if pixels.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got {pixels.shape}")
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., channel]))
                   .resize((width, height), RESAMPLING))
        for channel in range(pixels.shape[-1])]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def long_side_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """(height, width) scaled so the longer side is `long_side`, aspect ratio kept (short side >= 1)."""
    if height >= width:
        return long_side, _scaled_side(width, height, long_side)
    return _scaled_side(height, width, long_side), long_side


def resize_long_side(rgb: npt.ArrayLike, long_side: int) -> np.ndarray:
    """Resize so the longer side is `long_side` px, keeping the aspect ratio (short side >= 1 px)."""
    height, width = np.shape(rgb)[:2]
    return resize_to(rgb, *long_side_shape(height, width, long_side))


def check_output_path(path: PathLike) -> None:
    """Fail in the first second, not after a long run, if `path` cannot receive an output image."""
    _output_format(path)
    if os.path.isdir(path):
        raise UserInputError(f"{path}: is a directory; name an output file such as "
                             f"{os.path.join(path, 'out.png')}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise UserInputError(f"{path}: cannot write there: {directory} {problem}")
    try:
        check_writable(path)
    except OSError as error:
        raise UserInputError(f"{path}: cannot write in {directory} ({reason(error)})") from None


def save_image(path: PathLike, rgb: npt.ArrayLike,
               metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write float RGB (H, W, 3) to `path`, clipped to [0, 1]; the format follows the extension.

    PNG: 8 bits, with `metadata` ({str: str}) as text chunks, readable with `read_png_text` (`read_png_metadata` parses ours).
    JPEG: quality 95, no chroma subsampling. WebP: quality 95. TIFF: 16 bits per channel.
    Metadata is written to PNG only. The file appears complete or not at all, with ordinary
    permissions (`nst_jax.atomic.atomic_write`).
    """
    file_format = _output_format(path)
    pixels = np.asarray(rgb, np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ValueError(f"{path}: the image contains NaN or infinite values; nothing written")
    metadata = dict(metadata or {})
    if file_format == "PNG":
        _check_png_metadata(metadata)
    pixels = np.clip(pixels, 0.0, 1.0)
    try:
        with atomic_write(path) as stream:
            _ENCODERS[file_format](stream, pixels, metadata)
    except OSError as error:
        raise UserInputError(f"{path}: cannot write the image ({reason(error)})") from None


def read_png_text(path: PathLike) -> Dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file, as {key: raw text}."""
    with _reading(path), Image.open(path) as image:
        if image.format != "PNG":
            raise UserInputError(f"{path}: not a PNG file (it is {image.format}), so it has no "
                                 f"PNG metadata")
        png = cast(PngImagePlugin.PngImageFile, image)  # a PNG, as checked above
        return {key: str(value) for key, value in png.text.items()}


def read_png_metadata(path: PathLike) -> Dict[str, Any]:
    """How nst-jax made a PNG: the parsed JSON of its `nst-jax` text chunk (settings, weights,
    steps; for a batch member also "member"). The raw chunks: `read_png_text`."""
    text = read_png_text(path).get("nst-jax")
    if text is None:
        raise UserInputError(f"{path}: has no nst-jax metadata (not written by nst-jax)")
    try:
        return json.loads(text)
    except ValueError:
        raise UserInputError(f"{path}: its nst-jax metadata is not JSON") from None


# --- reading ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _reading(path, max_pixels=MAX_LOAD_PIXELS):
    """Turn every way opening or decoding `path` can fail into a one-line UserInputError."""
    pillows_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            yield
    except UserInputError:  # already says what is wrong (and is a ValueError, caught below)
        raise
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserInputError(f"{path}: is a directory, not an image file") from None
    except PermissionError:
        raise UserInputError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise UserInputError(f"{path}: not a readable image (another kind of file, an unsupported "
                             f"format or a damaged header); use PNG, JPEG, WebP, TIFF, BMP or "
                             f"GIF") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UserInputError(f"{path}: too large to load safely ({reason(error)}); shrink "
                             f"it first") from None
    # What Pillow's decoders raise on damaged data (a truncated JPEG is an OSError).
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error) as error:
        raise UserInputError(f"{path}: damaged or unreadable image ({reason(error)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillows_limit


def _decoded(path, rawmode=None):
    """(first frame fully decoded and turned upright per EXIF, the raw mode of its pixel data).

    rawmode: decode the pixel data as this raw mode instead of the file's own.
    """
    with Image.open(path) as image:
        file_rawmode = _tile_rawmode(image)
        if rawmode is not None:
            image.tile = [_with_rawmode(tile, rawmode) for tile in image.tile]
        # A full decode now, so a truncated file fails here (LOAD_TRUNCATED_IMAGES stays False).
        image.load()
        return ImageOps.exif_transpose(image), file_rawmode


def _tile_rawmode(image):
    """The raw mode of a not-yet-decoded image's pixel data, when one decoder reads it all."""
    if len(image.tile) != 1 or image.tile[0][0] not in _BYTE_ORDER_DECODERS:
        return None
    args = image.tile[0][3]  # the raw mode alone (PNG), or a tuple that starts with it (TIFF)
    if isinstance(args, tuple) and args:
        return args[0]
    return args if isinstance(args, str) else None


def _with_rawmode(tile, rawmode):
    decoder, extents, offset, args = tile
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    return (decoder, extents, offset, args)


def _read_rgb(path, max_pixels):
    with _reading(path, max_pixels):
        image, rawmode = _decoded(path)
        foreign_profile = _foreign_profile(image)
        sixteen_bit = (rawmode in _OTHER_BYTE_ORDER and foreign_profile is None
                       and "transparency" not in image.info)
        if sixteen_bit:
            low_bytes, _ = _decoded(path, _OTHER_BYTE_ORDER[rawmode])
    if sixteen_bit:
        samples = np.asarray(image).astype(np.uint16) * 256 + np.asarray(low_bytes)
        return _over_white(samples.astype(np.float32) / 65535.0)
    return _to_rgb(path, image, foreign_profile)


def _to_rgb(path, image, foreign_profile):
    """A decoded Pillow image of any mode -> float32 RGB in [0, 1], alpha composited over white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_GRAY_MODES or mode == "I":
        # Pillow reads 16-bit grayscale as I;16 or I, with samples 0..65535.
        return _gray_to_rgb(np.asarray(image).astype(np.float32) / 65535.0)
    if mode == "F":
        return _gray_to_rgb(_float_samples_to_unit(path, np.asarray(image, np.float32)))
    if foreign_profile is not None:
        converted = _to_srgb(image, foreign_profile)
        if converted is not None:
            image = converted
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _over_white(np.asarray(image.convert("RGBA"), np.float32) / 255.0)
        # Pillow's own conversions: palette, 1-bit, YCbCr, and CMYK (Adobe's inverted CMYK
        # JPEGs are already un-inverted by Pillow's decoder).
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except ValueError:
        raise UserInputError(f"{path}: unsupported pixel format {mode!r}") from None


def _float_samples_to_unit(path, samples):
    """Float samples -> [0, 1]. Float files mostly hold [0, 1], but tools that save 8- or 16-bit
    data as float keep its whole numbers (0..255, 0..65535): those are scaled back. Anything else
    past 1 (high dynamic range) is clipped, as an integer file's range would be."""
    if not np.isfinite(samples).all():
        raise UserInputError(f"{path}: float samples include NaN or infinity")
    largest = float(samples.max(initial=0.0))
    if largest > 1.0 and np.array_equal(samples, np.round(samples)):
        for full_scale in (255.0, 65535.0):
            if largest <= full_scale:
                return samples / np.float32(full_scale)
    return samples


def _gray_to_rgb(gray):
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)


def _over_white(pixels):
    """RGB, or RGBA composited over white: transparent areas have no defined colour (often black
    or leftover pixels), and white is how most viewers show them."""
    if pixels.shape[-1] == 3:
        return pixels
    alpha = pixels[..., 3:]
    return pixels[..., :3] * alpha + (1.0 - alpha)


def _foreign_profile(image):
    """The embedded ICC profile when pixels need converting to sRGB with it, else None.

    None when there is no profile, when it is unreadable (Pillow's plain conversion is used
    then), or when it maps colours as sRGB does (the common case: no conversion, no rounding,
    and 16-bit samples keep their precision).
    """
    embedded = image.info.get("icc_profile")
    if not embedded or image.mode not in ("RGB", "CMYK"):  # alpha and gray profiles: ignored
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(embedded))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    if image.mode == "RGB" and _acts_as_srgb(profile):
        return None
    return profile


def _acts_as_srgb(profile):
    """Whether converting with `profile` to sRGB leaves a cube of test colours within one level.

    Judged by what the profile does, not by its name, which may say sRGB and mean otherwise.
    """
    levels = np.linspace(0, 255, 6).astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(36, 6, 3)
    converted = _to_srgb(Image.fromarray(cube), profile)
    if converted is None:
        return True  # unusable profile: Pillow's plain reading, as if it were sRGB
    return np.abs(np.asarray(converted, np.int16) - cube).max() <= 1


def _to_srgb(image, profile):
    """Convert RGB or CMYK pixels with their embedded profile to sRGB; None if LittleCMS can't."""
    try:
        return ImageCms.profileToProfile(image, profile, ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


def _check_size(path, shape, what):
    height, width = shape[:2]
    if min(height, width) < MIN_SIDE:
        raise UserInputError(f"{path}: image {what} {width}x{height} pixels; both sides must be at "
                             f"least {MIN_SIDE} px")


def _scaled_side(side, long_side_before, long_side_after):
    """side * long_side_after / long_side_before, rounded half up, at least 1."""
    return max(1, (2 * side * long_side_after + long_side_before) // (2 * long_side_before))


# --- writing ---------------------------------------------------------------------------------

def _output_format(path):
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in OUTPUT_FORMATS:
        raise UserInputError(f"{path}: unsupported output format {extension or '(no extension)'}; "
                             f"use {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[extension]


def _check_png_metadata(metadata):
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"PNG metadata must map str to str, got {key!r}: {type(value).__name__}")
        # PNG text keywords: 1 to 79 Latin-1 characters (values may be any Unicode, via iTXt).
        if not 1 <= len(key) <= 79 or not all(ord(char) < 256 for char in key):
            raise ValueError(f"PNG metadata key {key!r} must be 1 to 79 Latin-1 characters")


def _eight_bit_image(pixels):
    return Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8))


def _encode_png(stream, pixels, metadata):
    chunks = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        chunks.add_text(key, value)  # tEXt, or iTXt when the value is not Latin-1
    _eight_bit_image(pixels).save(stream, format="PNG", pnginfo=chunks)


def _encode_jpeg(stream, pixels, metadata):
    _eight_bit_image(pixels).save(stream, format="JPEG", quality=95, subsampling="4:4:4")


def _encode_webp(stream, pixels, metadata):
    _eight_bit_image(pixels).save(stream, format="WEBP", quality=95)


def _encode_tiff(stream, pixels, metadata):
    """A baseline TIFF, 16-bit RGB, uncompressed, little-endian, one strip.

    Written by hand because Pillow has no 16-bit RGB mode to save from.
    """
    height, width, _ = pixels.shape
    samples = np.floor(pixels * 65535.0 + 0.5).astype("<u2").tobytes()
    short, long = 3, 4  # TIFF field types
    entry_count = 10
    bits_offset = 8 + 2 + 12 * entry_count + 4  # after the header and the directory
    data_offset = bits_offset + 6
    entries = [  # (tag, type, count, value or offset), in ascending tag order as TIFF requires
        (256, long, 1, width), (257, long, 1, height),
        (258, short, 3, bits_offset),  # BitsPerSample: 16, 16, 16, stored after the directory
        (259, short, 1, 1),  # no compression
        (262, short, 1, 2),  # photometric interpretation: RGB
        (273, long, 1, data_offset), (277, short, 1, 3), (278, long, 1, height),
        (279, long, 1, len(samples)),
        (284, short, 1, 1)]  # samples interleaved RGBRGB...
    stream.write(b"II*\0" + struct.pack("<I", 8))
    stream.write(struct.pack("<H", len(entries)))
    for tag, field_type, count, value in entries:
        # A single SHORT sits left-justified in the 4-byte value field.
        value_field = (struct.pack("<HH", value, 0) if field_type == short and count == 1
                       else struct.pack("<I", value))
        stream.write(struct.pack("<HHI", tag, field_type, count) + value_field)
    stream.write(struct.pack("<I", 0))  # no further directories
    stream.write(struct.pack("<3H", 16, 16, 16))
    stream.write(samples)


_ENCODERS = {"PNG": _encode_png, "JPEG": _encode_jpeg, "WEBP": _encode_webp, "TIFF": _encode_tiff}
