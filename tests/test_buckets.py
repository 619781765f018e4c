"""Shape buckets (engine/buckets.py, model/extent.py): an image padded to its bucket gives what the
unpadded image gives, and photos of one bucket share every compiled program.

Exactness is checked against the unpadded run, an independent computation: the masks are the
only thing the padded one adds, and the unpadded path is anchored to PyTorch float64 by
tests/test_paths_reference.py. Tolerances are the issue's: loss within 1e-6 relative and gradient
within 1e-5 of its largest entry (float32 summation order); a short L-BFGS run's pixels within
1/255 and final loss within 1e-5.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nst_jax import Model, stylize
from nst_jax.config.presets import preset
from nst_jax.config.settings import Settings
from nst_jax.engine.buckets import bucket_shape, bucket_side, buckets_pay, pad_to, padding_share
from nst_jax.engine.stages import initial_pixels, targets
from nst_jax.engine.timings import CompileCounter
from nst_jax.loss.objective import Objective, Targets, loss_weights, total_loss
from nst_jax.model.extent import Extent

# Odd at every level the default layers reach: 37×45 → 18×22 → 9×11 → 4×5 → 2×2.
HEIGHT, WIDTH, BUCKET = 37, 45, (48, 64)
STYLE_SHAPE, STYLE_BUCKET = (29, 41), (32, 48)


@pytest.mark.parametrize("long", [16, 45, 181, 256, 300, 512, 1024, 4096])
def test_a_bucket_keeps_the_long_side_and_adds_at_most_a_twelfth(long):
    sides = [bucket_side(short, long) for short in range(1, long + 1)]
    for short, side in enumerate(sides, start=1):
        assert short <= side <= long
        assert side <= short * (1 + 1 / 12) + 1, (short, side)
    # Between a 4:1 and a square picture: steps of 1/8 of the long side, and halved ones where
    # those would pad more than a twelfth (about 12 buckets per octave of the short side).
    assert len(set(sides[long // 4 - 1:])) <= 25
    assert bucket_shape(long, max(1, long // 2)) == (long, bucket_side(max(1, long // 2), long))


def test_common_photos_share_buckets():
    assert bucket_shape(192, 256) == bucket_shape(177, 256) == (192, 256)  # 1024×768 and 960×662 at 256 px
    assert bucket_shape(384, 512) == bucket_shape(356, 512) == (384, 512)  # 4:3 and 1.44:1 at 512 px
    assert bucket_shape(341, 512) == (352, 512)  # 3:2 apart: 384 would pad it by 12.6 %
    assert bucket_shape(512, 384) == (512, 384)  # portraits keep their own orientation
    assert padding_share(192, 256) == 0.0
    assert padding_share(177, 256) == pytest.approx(192 / 177 - 1)


def test_buckets_pay_on_accelerators_always_and_on_a_cpu_for_short_runs():
    assert buckets_pay("gpu", [(341, 512)], 5000)
    # 177×256 pads 15 rows (8.5 %): 0.035 s a step against the 2 s compile it saves.
    assert buckets_pay("cpu", [(177, 256)], 50)
    assert not buckets_pay("cpu", [(177, 256)], 100)
    assert not buckets_pay("cpu", [(177, 256)], 20, members=4)  # a batch pads every member
    assert buckets_pay("cpu", [(192, 256)], 5000)  # a photo that fills its bucket pays nothing


def _padded(array, shape, fill):
    """Padding filled with `fill`, not zeros: the masks must not rely on what the padding holds."""
    out = np.full(shape + array.shape[2:], fill, np.float32)
    out[:array.shape[0], :array.shape[1]] = array
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return (rng.uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32),  # content
            rng.uniform(0, 255, STYLE_SHAPE + (3,)).astype(np.float32),  # style
            rng.uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32))  # where the loss is taken


_value_and_gradient = jax.jit(jax.value_and_grad(total_loss, argnums=2), static_argnums=0)


@pytest.mark.parametrize("changes", [
    dict(remat="none", pooling="max"),
    dict(remat="none", pooling="avg", content_loss="sum", gram_normalization="hw", style_loss="gatys",
         tv_loss="power"),
    dict(remat="blocks", pooling="avg", content_loss="half_sum", gram_normalization="raw",
         style_loss="keras_example", tv_loss="l1"),
    dict(remat="tiles", pooling="max", style_loss="sum"),
    dict(normalize_gradients=True),
], ids=["plain", "avg-paper", "blocks-keras", "tiles", "normalized"])
def test_a_padded_image_has_the_unpadded_loss_and_gradient(changes, params, images):
    content, style, pixels = images
    objective = Objective.from_settings(Settings().replace(**changes), "caffe")
    weights = loss_weights(5.0, 1e3, 1e-2)
    content_target, (gram,), _ = targets(objective, params, content, [style])
    loss, gradient = _value_and_gradient(objective, params, pixels, Targets(content_target, gram), weights)

    extents = (Extent.of(HEIGHT, WIDTH), (Extent.of(*STYLE_SHAPE),))
    content_target, (gram,), _ = targets(objective, params, _padded(content, BUCKET, 77.0),
                                         [_padded(style, STYLE_BUCKET, 200.0)], None, extents)
    padded_loss, padded_gradient = _value_and_gradient(
        objective, params, _padded(pixels, BUCKET, 30.0), Targets(content_target, gram, extent=extents[0]), weights)

    assert abs(float(padded_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    padded_gradient, gradient = np.asarray(padded_gradient), np.asarray(gradient)
    assert np.abs(padded_gradient[:HEIGHT, :WIDTH] - gradient).max() <= 1e-5 * np.abs(gradient).max()
    # The padding gets no gradient: no optimizer ever moves it, L-BFGS's dot products never see it.
    assert not padded_gradient[HEIGHT:].any() and not padded_gradient[:, WIDTH:].any()


def test_a_padded_video_frame_has_the_unpadded_temporal_loss(params, images):
    content, style, pixels = images
    objective = Objective.from_settings(Settings().replace(content_layers=("relu2_1",),
                                                           style_layers=("relu1_1",)), "caffe")
    from nst_jax.loss.objective import TemporalTarget
    rng = np.random.default_rng(1)
    previous = rng.uniform(0, 255, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    masks = rng.uniform(0, 1, (2, HEIGHT, WIDTH)).astype(np.float32)
    weights = loss_weights(0.0, 0.0, 0.0, temporal_weight=1.0)
    content_target, (gram,), _ = targets(objective, params, content, [style])
    total = jax.jit(total_loss, static_argnums=0)
    loss = total(objective, params, pixels, Targets(content_target, gram, TemporalTarget(previous, masks)), weights)
    extent = Extent.of(HEIGHT, WIDTH)
    content_target, (gram,), _ = targets(objective, params, pad_to(content, BUCKET), [style], None,
                                         (extent, (None,)))
    padded = total(objective, params, _padded(pixels, BUCKET, 9.0),
                        Targets(content_target, gram, TemporalTarget(pad_to(previous, BUCKET, 1),
                                                                     pad_to(masks, BUCKET, 1)), extent), weights)
    assert float(loss) > 0 and abs(float(padded) - float(loss)) <= 1e-6 * float(loss)


@pytest.mark.parametrize("channels", [3, 1])
def test_noise_laid_out_in_a_bucket_is_the_images_own(channels):
    settings = Settings().replace(init="noise", init_noise_std=0.3, seed=11)
    content = np.zeros((HEIGHT, WIDTH, channels), np.float32)
    own = np.asarray(initial_pixels(settings, "caffe", content))
    in_bucket = np.asarray(initial_pixels(settings, "caffe", content, bucket=BUCKET))
    assert in_bucket.shape == BUCKET + (channels,)
    # The same draws; the transform fused otherwise rounds within a few float32 ulps of 255.
    assert np.abs(in_bucket[:HEIGHT, :WIDTH] - own).max() <= 1e-4
    assert np.std(own) > 10 and not in_bucket[HEIGHT:].any() and not in_bucket[:, WIDTH:].any()


CHEAP = dict(image_size=48, num_steps=10, init="noise", init_noise_std=0.1)


def test_a_short_lbfgs_run_in_a_bucket_equals_the_unpadded_run(params, photo):
    content, style = photo("shipwreck.jpg", 96), photo("starry_night.jpg", 96)  # 33×48 in a 36×48 bucket
    settings = preset("neural-style").replace(**CHEAP)
    plain = stylize(content, [style], settings.replace(shape_buckets="off"), Model(params, "caffe"))
    padded = stylize(content, [style], settings.replace(shape_buckets="on"), Model(params, "caffe"))
    assert padded.image.shape == plain.image.shape == (33, 48, 3)
    assert np.abs(padded.image - plain.image).max() <= 1 / 255
    assert abs(padded.loss - plain.loss) <= 1e-5 * abs(plain.loss)


def test_a_new_photo_and_painting_in_the_same_buckets_compile_nothing(params, photo):
    settings = preset("neural-style").replace(shape_buckets="on", **CHEAP)
    starry, tubingen = photo("starry_night.jpg", 96), photo("tubingen.jpg", 96)
    stylize(tubingen, [starry], settings, Model(params, "caffe"))  # 36×48 in a 40×48 bucket; style 30×48 in 32×48
    with CompileCounter() as compiled:  # 38×48 in the same bucket; a painting 32×48
        result = stylize(tubingen[:, :-6], [starry[:, :-6]], settings, Model(params, "caffe"))
    assert result.image.shape == (38, 48, 3)
    assert compiled.programs == [], compiled.programs


def test_video_frames_in_a_bucket_equal_the_unpadded_frames(params):
    """One L-BFGS step per frame, each from its own content, so that the temporal term (K = 2
    earlier results, warped, padded) pulls the step: what the padded frames give must be what the
    unpadded ones give. Longer runs are compared by the image test above: over several frames
    fixed-step L-BFGS's second step (the loss ×0.4) magnifies rounding differences to a few
    levels, whichever program rounds."""
    from test_video import translating, texture
    from nst_jax.video.transfer import FrameOptions, VideoSettings, stylize_frames
    frames = translating(3, height=36, width=48)  # 36×48 in a 40×48 bucket
    settings = preset("neural-style").replace(num_steps=1, image_size=48, content_layers=("relu2_1",),
                                              style_layers=("relu1_1", "relu2_1"), init="content")

    def run(buckets):
        outputs = []
        stylize_frames(frames, [texture(40, 56, seed=3)], settings.replace(shape_buckets=buckets),
                       VideoSettings(temporal_weight=1e3, frame_steps=1, long_term=2, frame_init="independent"),
                       Model(params, "caffe"),
                       FrameOptions(on_frame=lambda result: outputs.append((result.pixels, result.loss, result.temporal))))
        return outputs

    plain, padded = run("off"), run("on")
    assert [entry[2] > 0 for entry in plain] == [False, True, True]
    for (plain_pixels, plain_loss, plain_temporal), (pixels, loss, temporal) in zip(plain, padded):
        assert pixels.shape == plain_pixels.shape == (36, 48, 3)
        assert np.abs(pixels - plain_pixels).max() <= 1e-3  # of 255
        assert abs(loss - plain_loss) <= 1e-5 * plain_loss and abs(temporal - plain_temporal) <= 1e-5 * plain_loss


def test_precompile_fills_the_cache_so_a_new_photo_in_another_process_compiles_nothing(
        tmp_path, synthetic_params_path):
    from PIL import Image
    from datafiles import IMAGES
    env = {**os.environ, "NST_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    flags = ["--image-size", "48", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1",
             "--num-steps", "3", "--shape-buckets", "on", "--weights", str(synthetic_params_path)]
    warm = subprocess.run([sys.executable, "-m", "nst_jax.run", "--precompile", "4:3", *flags],
                          capture_output=True, text=True, env=env, timeout=600)
    assert warm.returncode == 0, warm.stderr
    assert "precompiled 2 buckets at 48 px" in warm.stdout, warm.stdout  # 4:3 and 3:4
    # A photo the warm-up never saw: tubingen cropped to 38×48 px (its bucket is 4:3's, 40×48),
    # and an upright painting (38×48 px standing, in 3:4's 48×40).
    photo = tmp_path / "cropped.png"
    Image.open(IMAGES / "tubingen.jpg").crop((0, 0, 1024, 811)).save(photo)
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "nst_jax.run", str(photo), str(IMAGES / "the_scream.jpg"), *flags,
                          "-o", str(tmp_path / "out.png"), "--report", str(report)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    programs = json.loads(report.read_text())
    assert Image.open(tmp_path / "out.png").size == (48, 38)
    assert programs["compiled_programs"] and programs["compile_cache_hits"] == len(programs["compiled_programs"]), programs
    assert len(programs["backend_compile_seconds"]) == len(programs["compiled_programs"])  # each program's load


@pytest.mark.parametrize("flags, message", [
    (["--shape-buckets", "off"], "--precompile: fills the cache for shape buckets"),
    (["--no-compile-cache"], "--precompile: fills the compile cache, which --no-compile-cache turns off"),
    (["4:x"], "--precompile: expected aspect ratios such as 4:3,16:9, got '4:x'"),
])
def test_precompile_refuses_what_it_cannot_do_in_one_line(flags, message, capsys):
    from nst_jax.cli.run import main
    assert main(["--precompile", *flags]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {message}")
