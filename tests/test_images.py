"""nst_jax.imaging.images: every input image is float RGB in [0, 1]; outputs are complete or absent.

References: Pillow 13 (independent encoders, its own colour conversions and its TIFF reader),
numpy written from the PNG specification (filters), the EXIF specification (orientation) and
Pillow's documented Lanczos resampling (separable, kernel sinc(x)·sinc(x/3) widened by the
downscale factor, pixel centres at (i + 0.5)·scale).
"""

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin

from nst_jax.imaging import images
from nst_jax.errors import UserInputError
from datafiles import IMAGES

EIGHT_BIT = 1.0 / 255.0


def _random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def _png_chunks(data):
    """[(chunk type, chunk data)] of a PNG file, read by hand from the specification."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        chunks.append((data[position + 4:position + 8], data[position + 8:position + 8 + length]))
        position += 12 + length
    return chunks


def _png_chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _write_16_bit_png(path, samples, icc_profile=None):
    """A 16-bit RGB or RGBA PNG (Pillow cannot write one), rows using all five filter types."""
    height, width, channels = samples.shape
    rows = samples.astype(">u2").view(np.uint8).reshape(height, -1).astype(np.int64)
    step = 2 * channels  # bytes per pixel: the filters' "left" distance
    filtered = []
    for index, row in enumerate(rows):
        up = rows[index - 1] if index else np.zeros_like(row)
        left = np.concatenate([np.zeros(step, np.int64), row[:-step]])
        up_left = np.concatenate([np.zeros(step, np.int64), up[:-step]])
        estimate = left + up - up_left
        distance_left, distance_up = np.abs(estimate - left), np.abs(estimate - up)
        distance_up_left = np.abs(estimate - up_left)
        paeth = np.where((distance_left <= distance_up) & (distance_left <= distance_up_left), left,
                         np.where(distance_up <= distance_up_left, up, up_left))
        predictions = [np.zeros_like(row), left, up, (left + up) // 2, paeth]
        kind = index % 5
        filtered.append(bytes([kind]) + ((row - predictions[kind]) % 256).astype(np.uint8).tobytes())
    color_type = {3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    colour_profile = (_png_chunk(b"iCCP", b"profile\0\0" + zlib.compress(icc_profile))
                      if icc_profile else b"")
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + colour_profile
                           + _png_chunk(b"IDAT", zlib.compress(b"".join(filtered)))
                           + _png_chunk(b"IEND", b""))


def _lanczos_matrix(size_in, size_out):
    """(size_out, size_in) weights of Pillow's Lanczos resampling along one axis, in float64."""
    scale = size_in / size_out
    widen = max(scale, 1.0)  # antialiasing: the kernel stretches when shrinking
    support = 3.0 * widen
    weights = np.zeros((size_out, size_in))
    for out in range(size_out):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), size_in)
        positions = np.arange(first, last)
        x = (positions - centre + 0.5) / widen
        kernel = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
        weights[out, first:last] = kernel / kernel.sum()
    return weights


def _lanczos_reference(rgb, height, width):
    rows = _lanczos_matrix(rgb.shape[0], height)
    columns = _lanczos_matrix(rgb.shape[1], width)
    resized = np.einsum("oh,hwc->owc", rows, rgb.astype(np.float64))
    resized = np.einsum("owc,pw->opc", resized, columns)
    return np.clip(resized, 0.0, 1.0)


# --- round trips -----------------------------------------------------------------------------

def test_png_round_trip_within_one_level_and_metadata_readable(tmp_path):
    rgb = _random_rgb(37, 53)
    path = tmp_path / "out.png"
    metadata = {"nst-jax": '{"content_weight": 5.0, "preset": "neural-style"}',
                "Comment": "Tübingen ✓"}  # not Latin-1: goes into an iTXt chunk
    images.save_image(path, rgb, metadata)

    loaded = images.load_image(path)
    assert loaded.dtype == np.float32 and loaded.shape == (37, 53, 3)
    np.testing.assert_allclose(loaded, rgb, rtol=0, atol=EIGHT_BIT)
    assert images.read_png_text(path) == metadata
    assert images.read_png_metadata(path) == json.loads(metadata["nst-jax"])
    # The chunks are really in the file (parsed by hand, not by our reader).
    chunks = dict(_png_chunks(path.read_bytes()))
    assert chunks[b"tEXt"] == b"nst-jax\0" + metadata["nst-jax"].encode("latin-1")
    assert b"Comment\0" in chunks[b"iTXt"]
    with Image.open(path) as reopened:  # Pillow 13 reads it as plain 8-bit RGB
        assert (reopened.format, reopened.mode) == ("PNG", "RGB")


def test_tiff_output_is_16_bit(tmp_path):
    # Levels 1/65535 apart: none of them survive a trip through 8 bits.
    levels = (np.arange(24 * 40 * 3, dtype=np.float64).reshape(24, 40, 3) * 7 + 1000) / 65535
    path = tmp_path / "out.tiff"
    images.save_image(path, levels.astype(np.float32))

    expected_samples = np.round(levels * 65535).astype(np.int64)
    np.testing.assert_allclose(images.load_image(path), expected_samples / 65535, rtol=0, atol=1e-7)
    # Pillow 13's own TIFF reader accepts the file and keeps the most significant byte.
    with Image.open(path) as reopened:
        assert (reopened.format, reopened.mode, reopened.size) == ("TIFF", "RGB", (40, 24))
        np.testing.assert_array_equal(np.asarray(reopened), expected_samples >> 8)


@pytest.mark.parametrize("name", ["out.jpg", "out.JPEG", "out.webp"])
def test_lossy_outputs_load_back_close(tmp_path, name):
    # A smooth image: lossy codecs keep it within a few levels.
    y, x = np.mgrid[0:48, 0:64].astype(np.float32)
    rgb = np.stack([x / 63, y / 47, (x + y) / 110], axis=-1)
    path = tmp_path / name
    images.save_image(path, rgb)
    np.testing.assert_allclose(images.load_image(path), rgb, rtol=0, atol=6 * EIGHT_BIT)
    if not name.endswith(".webp"):
        with Image.open(path) as reopened:
            assert JpegImagePlugin.get_sampling(reopened) == 0  # 4:4:4, no chroma subsampling


def test_output_gets_ordinary_file_permissions(tmp_path):
    path = tmp_path / "out.png"
    umask = os.umask(0o022)
    try:
        images.save_image(path, _random_rgb(8, 8))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


# --- unusual but valid input -----------------------------------------------------------------

@pytest.mark.parametrize("mode, suffix, to_unit", [
    ("L", ".png", lambda v: v / 255),
    ("I;16", ".png", lambda v: v / 65535),
    ("I", ".tif", lambda v: v / 65535),  # what older Pillow made of 16-bit PNGs
    ("F", ".tif", lambda v: v),
])
def test_grayscale_becomes_three_equal_channels(tmp_path, mode, suffix, to_unit):
    gradient = np.arange(12 * 20, dtype=np.float64).reshape(12, 20)
    values = {"L": gradient, "I;16": gradient * 271 + 3, "I": gradient * 271 + 3,
              "F": gradient / 239}[mode]
    dtype = {"L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    path = tmp_path / f"gray{suffix}"
    image = Image.fromarray(values.astype(dtype))
    assert image.mode == mode
    image.save(path)

    loaded = images.load_image(path)
    expected = np.repeat(to_unit(values)[..., None], 3, axis=-1)
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stored, expected", [
    (lambda g: g, lambda g: g / 255),  # 8-bit data saved as float: whole numbers up to 255
    (lambda g: g * 257, lambda g: g / 255),  # 16-bit data saved as float
    (lambda g: g / 200, lambda g: np.minimum(g / 200, 1)),  # past 1, not whole (HDR): clipped
])
def test_float_images_in_other_ranges(tmp_path, stored, expected):
    gradient = np.arange(12 * 20, dtype=np.float64).reshape(12, 20) + 15  # 15 .. 254
    path = tmp_path / "float.tif"
    Image.fromarray(stored(gradient).astype(np.float32)).save(path)
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded, np.repeat(expected(gradient)[..., None], 3, axis=-1), rtol=0, atol=1e-6)


def test_float_image_with_nan_is_refused(tmp_path):
    samples = np.full((8, 8), 0.5, np.float32)
    samples[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(samples).save(path)
    with pytest.raises(UserInputError, match="nan.tif: float samples include NaN"):
        images.load_image(path)


# --- arrays from API callers (images.as_rgb) -------------------------------------------------

_PIXELS = np.random.default_rng(5).integers(0, 256, (6, 7, 4)).astype(np.uint8)


@pytest.mark.parametrize("given, expected", [
    (lambda: _PIXELS[..., :3], lambda: _PIXELS[..., :3] / 255),  # uint8, as PIL and OpenCV give
    (lambda: _PIXELS[..., :3].astype(np.uint16) * 257, lambda: _PIXELS[..., :3] / 255),  # uint16
    (lambda: _PIXELS[..., :3] / 255.0, lambda: _PIXELS[..., :3] / 255),  # float64 in [0, 1]
    (lambda: _PIXELS[..., 0], lambda: np.repeat(_PIXELS[..., :1] / 255, 3, axis=-1)),  # (H, W) gray
    (lambda: _PIXELS[..., :1], lambda: np.repeat(_PIXELS[..., :1] / 255, 3, axis=-1)),  # (H, W, 1)
    (lambda: _PIXELS, lambda: _PIXELS[..., :3] / 255 * (_PIXELS[..., 3:] / 255) + 1 - _PIXELS[..., 3:] / 255),
    (lambda: (_PIXELS[..., :3] / 255.0 * 1.2 - 0.1).tolist(),  # a filter's overshoot, as nested lists
     lambda: np.clip(_PIXELS[..., :3] / 255 * 1.2 - 0.1, 0, 1)),
    (lambda: _PIXELS[::-1, ::2, :3], lambda: _PIXELS[::-1, ::2, :3] / 255),  # not contiguous
])
def test_api_arrays_become_float_rgb_in_the_unit_range(given, expected):
    rgb = images.as_rgb(given(), "content")
    assert rgb.dtype == np.float32 and rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb, expected(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("given, says", [
    (np.linspace(0, 255, 48, dtype=np.float32).reshape(4, 4, 3), "float pixels run from 0 to 255; they must be in [0, 1]"),
    (np.transpose(_PIXELS[..., :3] / 255.0, (2, 0, 1)), "not (3, 6, 7): channels first?"),
    (np.full((4, 4, 3), np.nan), "holds NaN or infinite values"),
    (_PIXELS[..., :3].astype(np.int64), "int64 pixels; pass uint8, uint16 or floats in [0, 1]"),
    (np.zeros((2, 4, 4, 3)), "an image array is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"),
])
def test_api_arrays_that_would_give_a_wrong_picture_are_refused(given, says):
    with pytest.raises(UserInputError, match="^style 2: .*" + re.escape(says)):
        images.as_rgb(given, "style 2")


@pytest.mark.parametrize("channels, tagged_srgb", [(3, False), (4, False), (3, True)])
def test_16_bit_colour_png_keeps_16_bit_precision(tmp_path, channels, tagged_srgb):
    samples = np.random.default_rng(1).integers(0, 65536, (11, 13, channels), dtype=np.uint16)
    samples[..., :3] |= 1  # odd values: never of the form v * 257 that 8 bits could express
    path = tmp_path / "deep.png"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _write_16_bit_png(path, samples, icc_profile=srgb if tagged_srgb else None)

    unit = samples.astype(np.float64) / 65535
    expected = unit[..., :3] if channels == 3 else unit[..., :3] * unit[..., 3:] + 1 - unit[..., 3:]
    np.testing.assert_allclose(images.load_image(path), expected, rtol=0, atol=1e-6)


def test_palette_image(tmp_path):
    palette_rgb = np.array([[255, 0, 0], [0, 128, 255], [17, 34, 51]], np.uint8)
    indices = np.random.default_rng(2).integers(0, 3, (10, 14)).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette_rgb.tobytes())
    path = tmp_path / "palette.png"
    image.save(path)
    np.testing.assert_allclose(images.load_image(path), palette_rgb[indices] / 255, rtol=0, atol=1e-6)

    # Index 1 transparent: those pixels come out white, the others keep their colour.
    image.save(path, transparency=1)
    expected = np.where((indices == 1)[..., None], 1.0, palette_rgb[indices] / 255)
    np.testing.assert_allclose(images.load_image(path), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_over_white(tmp_path, mode):
    rgba = np.zeros((8, 9, 4), np.uint8)
    rgba[...] = [200, 60, 20, 255]  # opaque
    rgba[0, 0] = [10, 20, 30, 0]  # fully transparent: its colour means nothing
    rgba[1, 1] = [0, 0, 0, 51]  # 20 % black over white
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    path = tmp_path / "alpha.png"
    image.save(path)

    colour = np.asarray(image.convert("RGBA"), np.float64)  # what Pillow 13 stored, as RGBA
    alpha = colour[..., 3:] / 255
    expected = colour[..., :3] / 255 * alpha + (1 - alpha)  # "over" on white, from the formula
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded[0, 0], [1, 1, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded[1, 1], np.full(3, 0.8), rtol=0, atol=0.5 * EIGHT_BIT)
    np.testing.assert_allclose(loaded[5, 5], colour[5, 5, :3] / 255, rtol=0, atol=1e-6)


def _cmyk_blocks():
    """16x24 CMYK in flat 8x8 blocks, so JPEG keeps the colours nearly exactly."""
    colours = np.array([[200, 10, 30, 40], [10, 200, 100, 0], [0, 0, 0, 255],
                        [0, 0, 0, 0], [120, 120, 0, 60], [30, 0, 220, 10]], np.uint8)
    return np.kron(colours.reshape(2, 3, 4), np.ones((8, 8, 1), np.uint8)).astype(np.uint8)


@pytest.mark.parametrize("icc_profile", [None, b"not an ICC profile"])
def test_cmyk_jpeg(tmp_path, icc_profile):
    cmyk = _cmyk_blocks()
    path = tmp_path / "cmyk.jpg"
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    Image.fromarray(cmyk, "CMYK").save(path, quality=95, **extra)
    with Image.open(path) as written:
        assert written.info.get("adobe")  # Pillow writes Adobe's inverted CMYK and reads it back

    loaded = images.load_image(path)
    # Pillow 13's conversion of the original pixels, and the formula it implements.
    pillow_rgb = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB"), np.float64) / 255
    ink = cmyk.astype(np.float64) / 255
    formula_rgb = (1 - ink[..., :3]) * (1 - ink[..., 3:])
    np.testing.assert_allclose(pillow_rgb, formula_rgb, rtol=0, atol=EIGHT_BIT)
    np.testing.assert_allclose(loaded, pillow_rgb, rtol=0, atol=4 * EIGHT_BIT)


def _srgb_profile_with_red_and_blue_swapped():
    """sRGB's ICC profile (LittleCMS via Pillow) with its red and blue colorant tags exchanged.

    Read by hand from the ICC.1 tag table (128-byte header, count, 12-byte entries): the profile
    then says the first channel is sRGB's blue primary and the third its red one.
    """
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", data[128:132])
    entries = {bytes(data[start:start + 4]): start for start in range(132, 132 + 12 * count, 12)}
    red, blue = entries[b"rXYZ"] + 4, entries[b"bXYZ"] + 4
    data[red:red + 8], data[blue:blue + 8] = data[blue:blue + 8], data[red:red + 8]
    return bytes(data)


@pytest.mark.parametrize("bits", [8, 16])
def test_icc_profile_is_applied(tmp_path, bits):
    rgb = (_random_rgb(9, 10) * 255).astype(np.uint8)
    profile = _srgb_profile_with_red_and_blue_swapped()
    path = tmp_path / "tagged.png"
    if bits == 8:
        Image.fromarray(rgb).save(path, icc_profile=profile)
    else:
        _write_16_bit_png(path, rgb.astype(np.uint16) * 257, icc_profile=profile)
    # Colorimetry: channel 1 holds blue, channel 3 red, so in sRGB they trade places.
    np.testing.assert_allclose(images.load_image(path), rgb[..., ::-1] / 255, rtol=0,
                               atol=2 * EIGHT_BIT)


def test_srgb_profile_leaves_pixels_alone(tmp_path):
    rgb = (_random_rgb(9, 10) * 255).astype(np.uint8)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "tagged.png"
    Image.fromarray(rgb).save(path, icc_profile=profile)
    np.testing.assert_allclose(images.load_image(path), rgb / 255, rtol=0, atol=1e-6)


@pytest.mark.parametrize("orientation, corner", [
    # EXIF 2.3, tag 0x0112: where the stored image's first row and column are shown.
    (3, (slice(-8, None), slice(-8, None))),  # rotated 180°: top-left lands bottom-right
    (6, (slice(0, 8), slice(-8, None))),  # row 0 is the right side: top-left lands top-right
    (8, (slice(-8, None), slice(0, 8))),  # row 0 is the left side: top-left lands bottom-left
])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = np.full((24, 40, 3), 128, np.uint8)
    stored[:8, :8] = [255, 0, 0]  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    loaded = images.load_image(path)
    assert loaded.shape == ((24, 40, 3) if orientation == 3 else (40, 24, 3))
    assert images.header_shape(path) == loaded.shape[:2]  # what a run is planned from
    red = loaded[corner][1:-1, 1:-1]  # block interior: away from JPEG ringing at its edges
    np.testing.assert_allclose(red, np.broadcast_to([1.0, 0.0, 0.0], red.shape), rtol=0, atol=0.1)
    height, width = loaded.shape[:2]
    middle = loaded[height // 2 - 4:height // 2 + 4, width // 2 - 4:width // 2 + 4]
    np.testing.assert_allclose(middle, np.full(middle.shape, 128 / 255), rtol=0, atol=0.05)


def test_header_shape_refuses_what_load_image_refuses(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    for path, says in [(tmp_path / "absent.png", "no such file"), (tmp_path / "text.png", "not a readable image")]:
        with pytest.raises(UserInputError, match=f"{path}: {says}"):
            images.header_shape(path)


def test_odd_size_is_kept(tmp_path):
    rgb = (_random_rgb(53, 37) * 255).astype(np.uint8)
    path = tmp_path / "odd.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_allclose(images.load_image(path), rgb / 255, rtol=0, atol=1e-6)


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded, np.broadcast_to([1.0, 0.0, 0.0], (10, 12, 3)), atol=1e-6)


# --- resizing --------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(14, 20), (17, 9), (80, 100), (53, 37)])
def test_resize_to_matches_lanczos_formula(height, width):
    rgb = _random_rgb(37, 53, seed=3)
    np.testing.assert_allclose(images.resize_to(rgb, height, width),
                               _lanczos_reference(rgb, height, width), rtol=0, atol=2e-5)


def test_long_side_resize_keeps_aspect_ratio(tmp_path):
    path = tmp_path / "wide.png"
    images.save_image(path, _random_rgb(37, 53))
    assert images.load_image(path, long_side=20).shape == (14, 20, 3)  # 37 * 20 / 53 = 13.96
    assert images.resize_long_side(_random_rgb(53, 37), 106).shape == (106, 74, 3)
    assert images.resize_long_side(_random_rgb(200, 1), 50).shape == (50, 1, 3)  # at least 1 px


def test_resize_keeps_16_bit_steps():
    # Steps of 1/65535 are kept: the filter runs in float, not through 8 bits.
    ramp = np.linspace(0.5, 0.5 + 40 / 65535, 41, dtype=np.float64)
    rgb = np.broadcast_to(ramp[None, :, None], (8, 41, 3)).astype(np.float32)
    np.testing.assert_allclose(images.resize_to(rgb, 8, 20), _lanczos_reference(rgb, 8, 20),
                               rtol=0, atol=1e-6)


def test_real_photo():
    path = IMAGES / "tubingen.jpg"
    full = images.load_image(path)
    assert full.shape == (384, 512, 3) and full.dtype == np.float32
    assert 0.0 <= full.min() and full.max() <= 1.0
    small = images.load_image(path, long_side=128)
    assert small.shape == (96, 128, 3)
    np.testing.assert_allclose(small, _lanczos_reference(full, 96, 128), rtol=0, atol=2e-5)


# --- bad input -------------------------------------------------------------------------------

def _truncated_jpeg(path):
    data = (IMAGES / "tubingen.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_INPUTS = {
    "missing file": ("missing.jpg", lambda path: None),
    "directory": ("folder.jpg", lambda path: path.mkdir()),
    "text named .jpg": ("notes.jpg", lambda path: path.write_text("not a picture\n")),
    "truncated JPEG": ("half.jpg", _truncated_jpeg),
    "SVG": ("drawing.svg", lambda path: path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect width="32" '
        'height="32" fill="red"/></svg>')),
    "random bytes named .png": ("noise.png", lambda path: path.write_bytes(
        np.random.default_rng(4).integers(0, 256, 500, dtype=np.uint8).tobytes())),
    "1x1 image": ("dot.png", lambda path: Image.new("RGB", (1, 1)).save(path)),
    "7 px high": ("strip.png", lambda path: Image.new("RGB", (100, 7)).save(path)),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    name, make = BAD_INPUTS[case]
    path = tmp_path / name
    make(path)
    with pytest.raises(UserInputError) as raised:
        images.load_image(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    if case in ("1x1 image", "7 px high"):
        assert f"at least {images.MIN_SIDE} px" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_small_after_resizing(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (100, 10)).save(path)
    with pytest.raises(UserInputError, match="resized.*at least 8 px"):
        images.load_image(path, long_side=20)


@pytest.mark.parametrize("side", [40, 64])  # Pillow warns over the limit, refuses over twice it
def test_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / "huge.png"
    Image.new("RGB", (side, side)).save(path)
    with pytest.raises(UserInputError, match="too large") as raised:
        images.load_image(path, max_pixels=1000)
    assert str(path) in str(raised.value)
    assert Image.MAX_IMAGE_PIXELS != 1000  # Pillow's own limit is left as it was


def test_a_photo_over_pillows_limit_but_within_the_largest_output_loads(tmp_path, monkeypatch):
    """Pillow refuses images over 2 × its MAX_IMAGE_PIXELS (89 MP) as decompression bombs; a
    100 MP photo is an ordinary input for a tool that writes up to 16384² px. Scaled down here:
    Pillow's limit at 1000 px, ours at the default, a 64 × 64 (4096 px) image loads."""
    path = tmp_path / "large.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert images.load_image(path).shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_read_png_metadata_of_other_files(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(UserInputError, match="not a PNG"):
        images.read_png_metadata(path)
    with pytest.raises(UserInputError, match="no such file"):
        images.read_png_metadata(tmp_path / "missing.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(UserInputError, match="no nst-jax metadata"):
        images.read_png_metadata(tmp_path / "plain.png")


# --- output paths and failed saves -----------------------------------------------------------

def test_check_output_path_accepts_and_leaves_nothing(tmp_path):
    for name in ("a.png", "b.JPG", "c.jpeg", "d.webp", "e.tif", "f.tiff"):
        images.check_output_path(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def _existing_directory(tmp_path):
    (tmp_path / "out.png").mkdir()
    return tmp_path / "out.png"


def _file_as_parent(tmp_path):
    (tmp_path / "plain_file").write_text("x")
    return tmp_path / "plain_file" / "out.png"


BAD_OUTPUTS = {
    "unsupported extension": lambda tmp_path: tmp_path / "out.gif",
    "no extension": lambda tmp_path: tmp_path / "out",
    "a directory": _existing_directory,
    "missing directory": lambda tmp_path: tmp_path / "nowhere" / "out.png",
    "parent is a regular file": _file_as_parent,
}


@pytest.mark.parametrize("case", BAD_OUTPUTS, ids=list(BAD_OUTPUTS))
def test_bad_output_path_is_refused_early_and_by_save(tmp_path, case):
    path = BAD_OUTPUTS[case](tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for attempt in (images.check_output_path, lambda p: images.save_image(p, _random_rgb(8, 8))):
        with pytest.raises(UserInputError) as raised:
            attempt(path)
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_read_only_directory(tmp_path):
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        try:  # root (and CAP_DAC_OVERRIDE) write anyway; the regular-file parent case covers it
            (directory / "probe").write_text("x")
        except PermissionError:
            pass
        else:
            pytest.skip("this user can write into a 0o500 directory (root)")
        path = directory / "out.png"
        for attempt in (images.check_output_path,
                        lambda p: images.save_image(p, _random_rgb(8, 8))):
            with pytest.raises(UserInputError, match="cannot write") as raised:
                attempt(path)
            assert str(path) in str(raised.value)
    finally:
        directory.chmod(0o700)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_leaves_directory_unchanged(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.png"
    path.write_bytes(b"the previous result")

    def encoder_that_fails_midway(image, stream, filename):
        stream.write(b"\x89PNG\r\n\x1a\n half an image")
        raise failure

    monkeypatch.setitem(Image.SAVE, "PNG", encoder_that_fails_midway)
    expected = UserInputError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        images.save_image(path, _random_rgb(8, 8))
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"the previous result"


def test_non_finite_pixels_are_not_saved(tmp_path):
    rgb = _random_rgb(8, 8)
    rgb[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        images.save_image(tmp_path / "out.png", rgb)
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_pixels_are_clipped(tmp_path):
    rgb = np.full((8, 8, 3), 0.5, np.float32)
    rgb[0, 0] = [-0.5, 1.5, 2.0]
    path = tmp_path / "out.png"
    images.save_image(path, rgb)
    np.testing.assert_allclose(images.load_image(path)[0, 0], [0.0, 1.0, 1.0], atol=1e-6)
