"""One style-transfer run, from loaded images to the finished image.

    images ─▶ sizes and colors ─▶ targets (once) ─▶ start image ─▶ jitted loop ─▶ colors ─▶ image

`stylize` works on arrays (for notebooks); `stylize_files` adds loading, progress, intermediate
saves, Ctrl-C handling and the atomic write of the result (for the CLI).
"""

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color, images
from nst_jax.errors import UserInputError
from nst_jax.objective import (Objective, blend_grams, content_targets, loss_terms, loss_weights,
                               style_grams)
from nst_jax.optimize import init_state, jit_chunk, make_chunk, make_optimizer, run_loop
from nst_jax.preprocess import mean_rgb
from nst_jax.progress import ProgressBar

# How often the progress bar is redrawn on a terminal (steps); print/save intervals add stops.
PROGRESS_INTERVAL = 10


@dataclasses.dataclass
class StylizeResult:
    """The finished image (H, W, 3) RGB in [0, 1] and how the run went."""

    image: np.ndarray
    steps_done: int
    interrupted: bool
    loss: float
    seconds: float


def prepare_images(content, styles, settings):
    """Resize content to the output size and styles to style_scale of it; gray them for luminance mode.

    Returns (content_rgb, content_pixels, style_pixels list): content_rgb is the resized color
    content (for recombining colors), the others are what the network sees, in [0, pixel_range].
    """
    content_rgb = images.resize_long_side(content, settings.image_size)
    style_side = max(16, round(settings.style_scale * settings.image_size))
    style_rgbs = [images.resize_long_side(style, style_side) for style in styles]
    if settings.original_colors == "luminance":
        # Gatys et al. 2016: transfer on luminance only, the style's luminance matched to the content's.
        content_luminance = color.luminance(content_rgb)
        content_view = content_luminance[..., None]
        style_views = [color.match_luminance(color.luminance(s), content_luminance)[..., None]
                       for s in style_rgbs]
    else:
        content_view, style_views = content_rgb, style_rgbs
    scale = settings.pixel_range
    return (content_rgb, np.asarray(content_view, np.float32) * scale,
            [np.asarray(s, np.float32) * scale for s in style_views])


def compute_targets(objective, params, content_pixels, style_pixels, blend_weights=None):
    """Content features and the blended style Gram matrices: computed once, before the loop."""
    content = jax.jit(lambda p, x: content_targets(objective, p, x))(params, content_pixels)
    grams_of = jax.jit(lambda p, x: style_grams(objective, p, x))
    grams = [grams_of(params, s) for s in style_pixels]
    if not grams:
        return {"content": content, "style": {}}
    weights = blend_weights if blend_weights is not None else (1.0,) * len(grams)
    return {"content": content, "style": blend_grams(grams, weights)}


def initial_pixels(settings, convention, content_pixels, init_image=None, seed=None):
    """The image the optimization starts from, shaped like content_pixels."""
    shape, scale = content_pixels.shape, settings.pixel_range
    if settings.init == "content":
        return jnp.asarray(content_pixels)
    if settings.init == "image":
        if init_image is None:
            raise ValueError("init='image' needs an init image")
        start = images.resize_to(init_image, shape[0], shape[1])
        if shape[-1] == 1:
            start = color.luminance(start)[..., None]
        return jnp.asarray(np.asarray(start, np.float32) * scale)
    if settings.init == "gray":
        return jnp.full(shape, 0.5 * scale, jnp.float32)
    # "noise": the training set's mean color (a zero VGG input) plus Gaussian noise.
    mean = mean_rgb(convention)
    if shape[-1] == 1:
        mean = np.asarray(color.luminance(mean))[None]
    key = jax.random.PRNGKey(settings.seed if seed is None else seed)
    noise = jax.random.normal(key, shape, jnp.float32) * settings.init_noise_std
    return jnp.clip(jnp.asarray(mean, jnp.float32) + noise, 0.0, 1.0) * scale


def finish_image(pixels, content_rgb, settings):
    """Optimized pixels -> RGB in [0, 1], with the content's colors where asked."""
    rgb = np.clip(np.asarray(pixels, np.float32) / settings.pixel_range, 0.0, 1.0)
    if rgb.shape[-1] == 1:  # luminance-only: stylized Y, content's I and Q
        rgb = np.repeat(rgb, 3, axis=-1)
        rgb = color.recombine_colors(rgb, content_rgb, space="yiq")
    elif settings.original_colors == "recombine":
        rgb = color.recombine_colors(rgb, content_rgb, space="ycbcr")
    return np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)


def stylize(content, styles, settings, params, convention, *, init_image=None, on_visit=None,
            intervals=()):
    """Stylize `content` (H, W, 3 RGB in [0, 1]) with the `styles` list; returns a StylizeResult.

    Args:
      params: VGG-19 params as loaded by nst_jax.load_params (numpy or jax arrays).
      convention: the params' preprocessing convention ("caffe" or "torch").
      init_image: RGB array for settings.init == "image".
      on_visit: called as on_visit(step, pixels, loss, terms_fn) at every host visit, where
        terms_fn() returns the current loss terms (computed only when asked).
      intervals: extra step intervals at which to visit the host (progress, saves).
    """
    if len(styles) == 0:
        raise ValueError("at least one style image is needed")
    if settings.style_blend_weights is not None and len(settings.style_blend_weights) != len(styles):
        raise ValueError(f"{len(settings.style_blend_weights)} style blend weights for "
                         f"{len(styles)} style images")
    objective = Objective.from_settings(settings, convention)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    content_rgb, content_pixels, style_pixels = prepare_images(content, styles, settings)
    targets = compute_targets(objective, params, jnp.asarray(content_pixels),
                              [jnp.asarray(s) for s in style_pixels], settings.style_blend_weights)
    weights = loss_weights(settings.content_weight, settings.style_weight, settings.tv_weight)
    pixels = initial_pixels(settings, convention, content_pixels, init_image)

    optimizer = make_optimizer(settings)
    chunk = jit_chunk(make_chunk(objective, optimizer, settings.optimizer == "lbfgs"))
    terms_of = jax.jit(lambda x, p, t, w: loss_terms(objective, p, x, t, w))

    def visit(step, current, loss):
        if on_visit is not None:
            terms_fn = lambda: {k: float(v) for k, v in terms_of(current, params, targets, weights).items()}
            on_visit(step, current, float(loss), terms_fn)

    result = run_loop(chunk, pixels, init_state(optimizer, pixels), settings.num_steps,
                      (params, targets, weights), intervals, visit)
    return StylizeResult(finish_image(result.pixels, content_rgb, settings), result.steps_done,
                         result.interrupted, float(result.loss), result.seconds)


def intermediate_path(output_path, step, num_steps):
    """out.png -> out_0100.png for the image saved at step 100."""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{step:0{len(str(num_steps))}d}{extension}"


def load_inputs(content_path, style_paths, output_path, settings, load_weights, stream=None):
    """Check the output path, load the images, then the weights: cheapest failure first.

    Returns (content, styles, init_image or None, params, params_metadata).
    """
    images.check_output_path(output_path)
    content = images.load_image(content_path)
    styles = [images.load_image(path) for path in style_paths]
    init_image = images.load_image(settings.init_image) if settings.init == "image" else None
    params, params_metadata = load_weights()
    if params_metadata.synthetic:
        print("warning: these VGG-19 weights are synthetic random values (for tests); "
              "the picture will not be art", file=stream or sys.stderr)
    return content, styles, init_image, params, params_metadata


def run_description(content_path, style_paths, settings, params_metadata):
    """A function (**extra) -> PNG text chunks describing how an output was made."""
    description = {
        "content": os.path.basename(content_path),
        "styles": [os.path.basename(p) for p in style_paths],
        "weights": {"source_file": params_metadata.source_file, "source_hash": params_metadata.source_hash,
                    "preprocessing": params_metadata.preprocessing, "synthetic": params_metadata.synthetic},
        "settings": settings.to_dict(),
    }
    return lambda **extra: {"nst-jax": json.dumps({**description, **extra}), "Software": "nst-jax"}


def check_finite(image, steps_done):
    """A diverged run is the user's settings' doing: say so in one line instead of saving NaNs."""
    if not np.isfinite(image).all():
        raise UserInputError(f"the optimization diverged (NaN pixels) by step {steps_done}; "
                             f"lower --learning-rate or the loss weights")


@contextlib.contextmanager
def ctrl_c_at_visits():
    """Within it, Ctrl-C sets `.requested` (the run stops at its next host visit); a second one raises.

    A KeyboardInterrupt raised while XLA compiles leaves jaxlib (0.10, CPU) in a state that
    crashes the interpreter at exit (SIGSEGV, not status 130), and one raised when a chunk returns
    throws that finished chunk away. Outside the main thread (no signals there) nothing changes.
    """
    state = types.SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_sigint(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def stylize_files(content_path, style_paths, output_path, settings, load_weights, *, stream=None):
    """The CLI's run: load, stylize with progress and intermediate saves, write the output atomically.

    Args:
      load_weights: () -> (params, ParamsMetadata); called after the images and the output path
        are checked, so a bad image fails before any download or compile.

    Raises UserInputError (one line naming the file) for unusable inputs or outputs, before any
    compute. Ctrl-C saves the current image and returns the result with interrupted=True;
    before the first step is done it raises KeyboardInterrupt and writes nothing.
    """
    content, styles, init_image, params, params_metadata = load_inputs(
        content_path, style_paths, output_path, settings, load_weights, stream)
    describe = run_description(content_path, style_paths, settings, params_metadata)
    bar = ProgressBar(settings.num_steps, stream=stream)
    content_rgb_for_saves = {}

    def on_visit(step, pixels, loss, terms_fn):
        if ctrl_c.requested and step < settings.num_steps:
            raise KeyboardInterrupt  # run_loop keeps the pixels of the chunk that just finished
        at_print = settings.print_every and (step % settings.print_every == 0 or step == settings.num_steps)
        if bar.interactive or at_print:
            bar.update(step, terms_fn(), force_line=bool(at_print))
        if settings.save_every and step % settings.save_every == 0 and step < settings.num_steps:
            if "rgb" not in content_rgb_for_saves:
                content_rgb_for_saves["rgb"] = images.resize_long_side(content, settings.image_size)
            snapshot = finish_image(pixels, content_rgb_for_saves["rgb"], settings)
            images.save_image(intermediate_path(output_path, step, settings.num_steps), snapshot,
                              describe(steps=step))

    intervals = (settings.print_every, settings.save_every,
                 PROGRESS_INTERVAL if bar.interactive else 0)
    with ctrl_c_at_visits() as ctrl_c:
        result = stylize(content, styles, settings, params, params_metadata.preprocessing,
                         init_image=init_image, on_visit=on_visit, intervals=intervals)
    if result.interrupted and result.steps_done == 0:
        raise KeyboardInterrupt  # the start image is no result: write nothing
    check_finite(result.image, result.steps_done)
    images.save_image(output_path, result.image, describe(steps=result.steps_done))
    state = "interrupted" if result.interrupted else "done"
    bar.close(f"{state} after {result.steps_done} steps in {result.seconds:.1f} s; wrote {output_path}")
    return result
