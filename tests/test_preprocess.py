"""VGG input conventions, both ways, against numpy float64 transcriptions of the published ones.

The references below are written from the published constants (docs/WEIGHTS.md, "Input
conventions"), not read from nst_jax.model.preprocess, so a swapped mean, a lost channel flip or a
std used the wrong way round shows as a difference:
  caffe  (Oxford/Caffe weights): RGB -> BGR, × 255, minus the means B 103.939, G 116.779, R 123.68.
  torch  (torchvision weights):  RGB in [0, 1], minus mean (0.485, 0.456, 0.406), ÷ std (0.229, 0.224, 0.225).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.config.settings import Settings
from nst_jax.engine.stages import initial_pixels
from nst_jax.model.preprocess import PREPROCESSINGS, deprocess, mean_rgb, preprocess

# Published constants, float64, in the order each source prints them.
CAFFE_B, CAFFE_G, CAFFE_R = 103.939, 116.779, 123.68
TORCH_MEAN_R, TORCH_MEAN_G, TORCH_MEAN_B = 0.485, 0.456, 0.406
TORCH_STD_R, TORCH_STD_G, TORCH_STD_B = 0.229, 0.224, 0.225

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def reference_preprocess(rgb, convention):
    """RGB in [0, 1] -> VGG input, float64, channel by channel."""
    rgb = np.asarray(rgb, np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if convention == "caffe":
        return np.stack([blue * 255.0 - CAFFE_B, green * 255.0 - CAFFE_G, red * 255.0 - CAFFE_R], axis=-1)
    return np.stack([(red - TORCH_MEAN_R) / TORCH_STD_R, (green - TORCH_MEAN_G) / TORCH_STD_G,
                     (blue - TORCH_MEAN_B) / TORCH_STD_B], axis=-1)


def reference_deprocess(vgg_input, convention):
    """VGG input -> RGB (not clipped), float64, channel by channel."""
    x = np.asarray(vgg_input, np.float64)
    first, second, third = x[..., 0], x[..., 1], x[..., 2]
    if convention == "caffe":  # first channel is blue
        return np.stack([(third + CAFFE_R) / 255.0, (second + CAFFE_G) / 255.0, (first + CAFFE_B) / 255.0],
                        axis=-1)
    return np.stack([first * TORCH_STD_R + TORCH_MEAN_R, second * TORCH_STD_G + TORCH_MEAN_G,
                     third * TORCH_STD_B + TORCH_MEAN_B], axis=-1)


REFERENCE_MEAN_RGB = {"caffe": np.array([CAFFE_R, CAFFE_G, CAFFE_B]) / 255.0,
                      "torch": np.array([TORCH_MEAN_R, TORCH_MEAN_G, TORCH_MEAN_B])}


def random_rgb(seed, shape=(2, 5, 7, 3)):
    """Random pixels, slightly outside [0, 1] too (deprocess does not clip, neither does preprocess)."""
    return np.random.default_rng(seed).uniform(-0.1, 1.1, size=shape).astype(np.float32)


def vgg_scale(convention):
    """Largest magnitude of a VGG input from [0, 1] pixels: float32 rounding is relative to it."""
    return 255.0 if convention == "caffe" else 1.0 / 0.224


def assert_close_to_float32(actual, expected, scale):
    """Elementwise within a few float32 roundings of numbers of size `scale`."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=8 * FLOAT32_EPS * scale)


def test_the_references_disagree_with_each_other():
    """The references are not accidentally the same function: each convention moves every channel
    differently, and a gray image is not left gray by caffe (the means differ per channel)."""
    gray = np.full((1, 3), 0.5)
    assert len(set(np.round(reference_preprocess(gray, "caffe")[0], 6))) == 3
    assert len(set(np.round(reference_preprocess(gray, "torch")[0], 6))) == 3


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_preprocess_matches_the_published_convention(convention):
    rgb = random_rgb(0)
    value = preprocess(rgb, convention)
    assert isinstance(value, np.ndarray) and value.shape == rgb.shape and value.dtype == np.float32
    assert_close_to_float32(value, reference_preprocess(rgb, convention), vgg_scale(convention))


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_deprocess_matches_the_published_convention(convention):
    # VGG inputs spread over (and past) the range that [0, 1] pixels give.
    vgg_input = (np.random.default_rng(1).uniform(-1.2, 1.2, size=(3, 4, 6, 3))
                 * vgg_scale(convention)).astype(np.float32)
    value = deprocess(vgg_input, convention)
    assert isinstance(value, np.ndarray) and value.shape == vgg_input.shape and value.dtype == np.float32
    assert_close_to_float32(value, reference_deprocess(vgg_input, convention), 1.5)


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_deprocess_inverts_preprocess_both_ways(convention):
    rgb = random_rgb(2)
    assert_close_to_float32(deprocess(preprocess(rgb, convention), convention), rgb, 1.5)
    vgg_input = reference_preprocess(random_rgb(3), convention).astype(np.float32)
    assert_close_to_float32(preprocess(deprocess(vgg_input, convention), convention), vgg_input,
                            vgg_scale(convention))


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_jax_arrays_give_the_same_values_under_jit(convention):
    rgb = random_rgb(4)
    forward = jax.jit(lambda x: preprocess(x, convention))(jnp.asarray(rgb))
    backward = jax.jit(lambda x: deprocess(x, convention))(forward)
    assert isinstance(forward, jax.Array) and isinstance(backward, jax.Array)
    assert_close_to_float32(forward, reference_preprocess(rgb, convention), vgg_scale(convention))
    assert_close_to_float32(backward, rgb, 1.5)


def test_caffe_by_hand_pure_colors():
    """Pure red, green and blue pixels, written out: red lands in the last (R of BGR) channel."""
    pixels = np.eye(3, dtype=np.float32)  # rows: red, green, blue
    expected = np.array([[-103.939, -116.779, 255 - 123.68],
                         [-103.939, 255 - 116.779, -123.68],
                         [255 - 103.939, -116.779, -123.68]])
    assert_close_to_float32(preprocess(pixels, "caffe"), expected, 255)
    assert_close_to_float32(deprocess(expected.astype(np.float32), "caffe"), pixels, 1.5)


def test_torch_by_hand_white_and_black():
    """White is (1 − mean) / std, black −mean / std, channel by channel in RGB order."""
    pixels = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    expected = np.array([[0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],
                         [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]])
    assert_close_to_float32(preprocess(pixels, "torch"), expected, 3)
    assert_close_to_float32(deprocess(expected.astype(np.float32), "torch"), pixels, 1.5)


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_mean_rgb_is_the_color_whose_vgg_input_is_zero(convention):
    mean = mean_rgb(convention)
    assert isinstance(mean, np.ndarray) and mean.shape == (3,) and mean.dtype == np.float32
    assert_close_to_float32(mean, REFERENCE_MEAN_RGB[convention], 1)
    assert_close_to_float32(preprocess(mean, convention), np.zeros(3), vgg_scale(convention))
    # And the reference agrees that it is that color (independently of the module).
    assert_close_to_float32(reference_preprocess(REFERENCE_MEAN_RGB[convention], convention), np.zeros(3),
                            vgg_scale(convention))


@pytest.mark.parametrize("convention", PREPROCESSINGS)
@pytest.mark.parametrize("pixel_range", [255.0, 1.0])
def test_a_noise_start_without_noise_is_the_mean_color(convention, pixel_range):
    """--init noise --init-noise-std 0: every pixel is the training set's mean color, RGB, times
    the pixel range; one channel (luminance-only runs) gets that color's luminance."""
    settings = Settings.from_flat(init="noise", init_noise_std=0.0, pixel_range=pixel_range)
    content = np.zeros((6, 8, 3), np.float32)
    start = np.asarray(initial_pixels(settings, convention, content))
    assert start.shape == content.shape
    expected = np.broadcast_to(REFERENCE_MEAN_RGB[convention] * pixel_range, content.shape)
    assert_close_to_float32(start, expected, pixel_range)
    gray = np.asarray(initial_pixels(settings, convention, np.zeros((6, 8, 1), np.float32)))
    red, green, blue = REFERENCE_MEAN_RGB[convention]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue  # Rec. 601 luma
    np.testing.assert_allclose(gray, np.full((6, 8, 1), luminance * pixel_range), rtol=1e-3)


@pytest.mark.parametrize("convention", PREPROCESSINGS)
def test_a_noise_start_is_centred_on_the_mean_color(convention):
    settings = Settings.from_flat(init="noise", init_noise_std=0.05, pixel_range=255.0, seed=3)
    start = np.asarray(initial_pixels(settings, convention, np.zeros((64, 64, 3), np.float32)), np.float64)
    # 4096 samples of std 0.05·255 per channel: the mean's standard error is 0.2.
    np.testing.assert_allclose(start.reshape(-1, 3).mean(0), REFERENCE_MEAN_RGB[convention] * 255, atol=1.0)
    assert start.std() > 0.04 * 255


@pytest.mark.parametrize("call", [preprocess, deprocess])
def test_an_unknown_convention_is_refused(call):
    with pytest.raises(ValueError, match="caffe"):
        call(np.zeros((1, 3), np.float32), "bgr")
    with pytest.raises(ValueError, match="torch"):
        mean_rgb("rgb")
