"""Color spaces, luminance matching and color recombination against the published matrices,
Pillow's JPEG YCbCr conversion and numpy written from the formulas."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax.imaging import color
from datafiles import IMAGES

pytestmark = pytest.mark.usefixtures("strict_rank_promotion")  # conftest.py


# The standard NTSC YIQ matrix, rows Y, I, Q (typed from the published table, not from color.py).
NTSC_YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.5959, -0.2746, -0.3213],
                     [0.2115, -0.5227, 0.3112]])


def random_rgb(seed, shape=(2, 8, 9, 3)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def photo(name, size=48):
    """A real photograph, RGB in [0, 1], resized small to keep the test fast."""
    with Image.open(IMAGES / name) as image:
        return np.asarray(image.convert("RGB").resize((size, size)), np.float32) / 255.0


def luminance_reference(rgb):
    rgb = np.asarray(rgb, np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.mark.parametrize("forward,backward", [(color.rgb_to_yiq, color.yiq_to_rgb),
                                              (color.rgb_to_ycbcr, color.ycbcr_to_rgb)])
def test_round_trips(forward, backward):
    rgb = random_rgb(0)
    rgb[0, 0, :3] = np.eye(3)  # the primaries, and
    rgb[0, 1, :2] = [[0, 0, 0], [1, 1, 1]]  # black and white, exactly
    np.testing.assert_allclose(backward(forward(rgb)), rgb, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rgb,yiq", [
    ([1, 1, 1], [1, 0, 0]),
    ([0, 0, 0], [0, 0, 0]),
    ([1, 0, 0], NTSC_YIQ[:, 0]),  # a primary picks out its column of the matrix
    ([0, 1, 0], NTSC_YIQ[:, 1]),
    ([0, 0, 1], NTSC_YIQ[:, 2]),
])
def test_yiq_known_values(rgb, yiq):
    np.testing.assert_allclose(color.rgb_to_yiq(np.array(rgb, np.float32)), yiq, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rgb,ycbcr", [
    ([1, 1, 1], [1, 0.5, 0.5]),
    ([0, 0, 0], [0, 0.5, 0.5]),
    # JFIF: Cb = 0.5 + (B − Y)/1.772, Cr = 0.5 + (R − Y)/1.402.
    ([1, 0, 0], [0.299, 0.5 - 0.299 / 1.772, 0.5 + 0.701 / 1.402]),
    ([0, 0, 1], [0.114, 0.5 + 0.886 / 1.772, 0.5 - 0.114 / 1.402]),
])
def test_ycbcr_known_values(rgb, ycbcr):
    np.testing.assert_allclose(color.rgb_to_ycbcr(np.array(rgb, np.float32)), ycbcr, rtol=0,
                               atol=1e-6)


def test_ycbcr_agrees_with_pillow():
    # Reference: Pillow's JPEG YCbCr conversion on 8-bit pixels (integer arithmetic, so within
    # one level). Pillow centers Cb/Cr at 128 where we center at 0.5 = 127.5/255.
    pixels = (random_rgb(1, (16, 16, 3)) * 255).astype(np.uint8)
    pillow = np.asarray(Image.fromarray(pixels).convert("YCbCr"), np.float64)
    ours = np.asarray(color.rgb_to_ycbcr(pixels / 255.0), np.float64) * 255.0
    ours[..., 1:] += 128 - 127.5
    np.testing.assert_allclose(ours, pillow, rtol=0, atol=1.0)


def test_luminance_is_y():
    rgb = random_rgb(2)
    np.testing.assert_allclose(color.luminance(rgb), luminance_reference(rgb), rtol=1e-6)
    np.testing.assert_allclose(color.luminance(rgb), color.rgb_to_yiq(rgb)[..., 0], rtol=1e-6)


def test_match_luminance_takes_the_contents_statistics():
    style = luminance_reference(photo("starry_night.jpg", 40))  # sizes may differ
    content = luminance_reference(photo("tubingen.jpg", 56))
    matched = np.asarray(color.match_luminance(style.astype(np.float32),
                                               content.astype(np.float32)))
    np.testing.assert_allclose(matched.mean(), content.mean(), rtol=1e-5)
    np.testing.assert_allclose(matched.std(), content.std(), rtol=1e-5)
    expected = (style - style.mean()) * content.std() / style.std() + content.mean()
    np.testing.assert_allclose(matched, expected, rtol=1e-5, atol=1e-6)


def test_match_luminance_of_a_flat_style_is_the_content_mean():
    content = luminance_reference(random_rgb(3, (8, 8, 3))).astype(np.float32)
    # 0.7 is inexact in binary: float32 gives this constant a std of about 2e-6, not 0.
    flat = np.full((37, 37), 0.7, np.float32)
    np.testing.assert_allclose(color.match_luminance(flat, content),
                               np.full((37, 37), content.mean()), rtol=1e-6)
    gradient = jax.grad(lambda s: color.match_luminance(s, content).sum())(flat)
    assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("space", color.SPACES)
def test_recombine_keeps_content_chroma_and_stylized_luminance(space):
    stylized = photo("starry_night.jpg")
    content = photo("tubingen.jpg")
    mixed = color.recombine_colors(stylized, content, space)
    to_space = {"ycbcr": color.rgb_to_ycbcr, "yiq": color.rgb_to_yiq}[space]
    np.testing.assert_allclose(to_space(mixed)[..., 1:], to_space(content)[..., 1:], rtol=0,
                               atol=1e-6)
    np.testing.assert_allclose(to_space(mixed)[..., 0], luminance_reference(stylized), rtol=0,
                               atol=1e-6)
    # Independently from the formulas: Y's weights sum to 1 and each chroma row to 0, so the
    # unique such color is the content shifted by the luminance difference in every channel.
    shift = luminance_reference(stylized) - luminance_reference(content)
    np.testing.assert_allclose(mixed, content + shift[..., None], rtol=0, atol=1e-6)


def test_recombine_rejects_different_sizes():
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(8, 9, 3\)"):
        color.recombine_colors(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_recombine_rejects_unknown_space():
    with pytest.raises(ValueError, match="space must be one of"):
        color.recombine_colors(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), "yuv")


def test_channels_are_checked():
    with pytest.raises(ValueError, match=r"3 channels.*\(4, 4, 4\)"):
        color.rgb_to_yiq(np.zeros((4, 4, 4)))


def test_bfloat16_input_gives_float32():
    rgb = jnp.asarray(random_rgb(4), jnp.bfloat16)
    assert color.rgb_to_ycbcr(rgb).dtype == jnp.float32
    assert color.luminance(rgb).dtype == jnp.float32
    np.testing.assert_allclose(color.luminance(rgb),
                               luminance_reference(np.asarray(rgb, np.float64)), rtol=1e-6)
