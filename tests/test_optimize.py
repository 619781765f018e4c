"""The jitted loop: one compilation, only the image differentiated, loss cut, Ctrl-C keeps the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.imaging import color
from nst_jax.loss.objective import Objective, loss_weights, total_loss
from nst_jax.engine.optimize import (OptimizerSpec, init_state, jit_chunk, make_chunk, make_optimizer,
                              run_loop, visit_steps)
from nst_jax.config.presets import preset
from nst_jax.engine.stages import compute_targets
from nst_jax import Model, RunOptions, stylize
from nst_jax.imaging.images import resize_long_side

# Block-2 layers: the whole loop machinery at a fraction of the compile and step time.
CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), style_layer_weights=None,
             content_layer_weights=None)


def photos(photo):
    """Content and style photos, 96 px."""
    return photo("tubingen.jpg", 96), photo("starry_night.jpg", 96)


def _setup(settings, params, size=(24, 32)):
    objective = Objective.from_settings(settings, "caffe")
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(0, 255, size + (3,)).astype(np.float32))
    style = jnp.asarray(rng.uniform(0, 255, size + (3,)).astype(np.float32))
    targets = compute_targets(objective, params, content, [style])
    weights = loss_weights(settings.loss.content_weight, settings.loss.style_weight, settings.loss.tv_weight)
    return objective, content, targets, weights


@pytest.mark.parametrize("optimizer, linesearch", [("adam", "none"), ("lbfgs", "none"), ("lbfgs", "zoom")])
def test_chunks_of_any_length_compile_once(optimizer, linesearch, params):
    settings = preset("neural-style").replace(optimizer=optimizer, lbfgs_linesearch=linesearch, **CHEAP)
    objective, content, targets, weights = _setup(settings, params)
    spec = OptimizerSpec.from_settings(settings)
    opt = make_optimizer(spec)
    traces = []
    inner = make_chunk(objective, spec)

    def counted(*args):
        traces.append(1)  # runs only while tracing
        return inner(*args)

    chunk = jit_chunk(counted)
    result = run_loop(chunk, content, init_state(opt, content), 12, (params, targets, weights), (5, 7))
    assert visit_steps(12, (5, 7)) == [5, 7, 10, 12]  # chunks of 5, 2, 3 and 2 steps
    assert result.steps_done == 12 and not result.interrupted
    assert len(traces) == 1


def test_only_the_image_is_differentiated(params):
    # What runs: forward convs + input-gradient convs only, in the compiled program. Weight
    # gradients would add one convolution per layer. conv1_1's input gradient (3 channels) is a
    # matrix product, not a convolution.
    settings = preset("neural-style").replace(**CHEAP)
    objective, content, targets, weights = _setup(settings, params)
    gradient = jax.jit(jax.grad(lambda x, p: total_loss(objective, p, x, targets, weights)))
    compiled = gradient.lower(content, params).compile().as_text()
    convolutions_used = 3  # conv1_1, conv1_2, conv2_1
    assert compiled.count("convolution(") == 2 * convolutions_used - 1


def test_visit_steps_cover_every_interval_and_the_end():
    assert visit_steps(10, (0, 0)) == [10]
    assert visit_steps(10, (4,)) == [4, 8, 10]
    assert visit_steps(9, (3, 0, 10)) == [3, 6, 9]


# L-BFGS without a line search starts with tiny steps (capped by 1/‖g‖₁, as torch's) and then
# overshoots for a while (loss ×10 at step 20 here) before it converges: more steps (×14 at 50,
# ×27 at 70 on these images).
@pytest.mark.parametrize("optimizer,steps,extra", [("lbfgs", 70, {}), ("lbfgs", 25, {"lbfgs_linesearch": "zoom"}),
                                                   ("adam", 60, {"learning_rate": 8.0})])
def test_optimizers_cut_the_loss_on_real_images(optimizer, steps, extra, params, photo):
    content, style = photos(photo)
    settings = preset("neural-style").replace(optimizer=optimizer, num_steps=steps, image_size=64,
                                              init="gray", **extra)
    losses = []
    result = stylize(content, [style], settings, Model(params, "caffe"),
                     RunOptions(on_visit=lambda visit: losses.append(float(visit.losses[0])), intervals=(1,)))
    assert len(losses) == steps
    assert losses[0] / losses[-1] > 10, (losses[0], losses[-1])
    assert result.image.shape == (48, 64, 3)  # 96×72 content: aspect ratio kept at long side 64
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert np.abs(result.image - resize_long_side(content, 64)).mean() > 0.02


def test_ctrl_c_between_chunks_returns_the_last_finished_image(params):
    settings = preset("neural-style").replace(optimizer="adam", **CHEAP)
    objective, content, targets, weights = _setup(settings, params)
    spec = OptimizerSpec.from_settings(settings)
    opt = make_optimizer(spec)
    chunk = jit_chunk(make_chunk(objective, spec))
    seen = {}

    def interrupt_at_six(step, pixels, loss):
        seen[step] = np.asarray(pixels)
        if step == 6:
            raise KeyboardInterrupt

    result = run_loop(chunk, content, init_state(opt, content), 100, (params, targets, weights), (3,),
                      interrupt_at_six)
    assert result.interrupted and result.steps_done == 6
    np.testing.assert_array_equal(np.asarray(result.pixels), seen[6])


def test_adam_keeps_pixels_in_range(params):
    settings = preset("neural-style").replace(optimizer="adam", learning_rate=200.0, **CHEAP)
    objective, content, targets, weights = _setup(settings, params)
    spec = OptimizerSpec.from_settings(settings)
    opt = make_optimizer(spec)
    chunk = jit_chunk(make_chunk(objective, spec))
    result = run_loop(chunk, content, init_state(opt, content), 5, (params, targets, weights), ())
    pixels = np.asarray(result.pixels)
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert (pixels == 0).any() or (pixels == 255).any()  # the projection was exercised


@pytest.mark.parametrize("mode", ["luminance", "recombine"])
def test_original_colors_keep_the_content_chroma(mode, params, photo):
    content, style = photos(photo)
    settings = preset("neural-style").replace(optimizer="adam", num_steps=4, image_size=48,
                                              original_colors=mode, init="content", **CHEAP)
    result = stylize(content, [style], settings, Model(params, "caffe"))
    small = resize_long_side(content, 48)
    out_yiq, content_yiq = np.asarray(color.rgb_to_yiq(result.image)), np.asarray(color.rgb_to_yiq(small))
    inside = (result.image > 0.01).all(-1) & (result.image < 0.99).all(-1)  # clipping changes chroma
    np.testing.assert_allclose(out_yiq[..., 1:][inside], content_yiq[..., 1:][inside], atol=2e-3)
    assert np.abs(out_yiq[..., 0] - content_yiq[..., 0]).mean() > 1e-3  # luminance did change


def test_multiscale_runs_coarse_to_fine_with_continuous_steps(params, photo):
    content, style = photos(photo)
    settings = preset("neural-style").replace(optimizer="adam", num_steps=3, image_size=64, scales=3,
                                              init="content", **CHEAP)
    seen = []
    result = stylize(content, [style], settings, Model(params, "caffe"),
                     RunOptions(intervals=(1,), on_visit=lambda visit: seen.append(
                         (visit.step, visit.total_steps, visit.images()[0].shape))))
    # Sizes 64/√2² = 32, 64/√2 ≈ 45, 64 (long side), each from the last one's result.
    assert [step for step, _, _ in seen] == list(range(1, 10))
    assert {total for _, total, _ in seen} == {9}
    assert [shape for _, _, shape in seen[2::3]] == [(24, 32, 3), (34, 45, 3), (48, 64, 3)]
    assert result.steps_done == 9 and not result.interrupted and result.image.shape == (48, 64, 3)
