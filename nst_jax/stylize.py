"""Stylizing images: `stylize` on arrays (for notebooks), `stylize_files` for the CLI.

Both run through the one engine, `nst_jax.batch.stylize_batch`: a single stylization is a batch
of one. `stylize_files` adds loading, progress, intermediate saves, Ctrl-C handling and atomic
writes of the results, for one output or a batch of them.
"""

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import types
from typing import Optional, Tuple

import jax
import numpy as np

from nst_jax import images
from nst_jax.batch import batch_mesh, make_members, stylize_batch
from nst_jax.errors import UserInputError
from nst_jax.progress import ProgressBar
from nst_jax.timings import RunTimings

# Steps between host visits even when nothing is printed: how soon Ctrl-C is noticed and how
# often a terminal's progress bar is redrawn. Print and save intervals add visits.
PROGRESS_INTERVAL = 10


def stylize(content, styles, settings, params, convention, *, init_image=None, on_visit=None,
            intervals=()):
    """Stylize `content` (H, W, 3 RGB in [0, 1]) with the `styles` list (blended); a batch.StylizeResult.

    Args:
      params: VGG-19 params as loaded by nst_jax.load_params (numpy or jax arrays).
      convention: the params' preprocessing convention ("caffe" or "torch").
      init_image: RGB array for settings.init == "image".
      on_visit: called with a `nst_jax.batch.Visit` (arrays of one member) at every host visit.
      intervals: step intervals at which to visit the host.
    """
    (member,) = make_members(settings, ["style"] * len(styles), per_style=False)
    (result,) = stylize_batch(content, styles, settings, params, convention, [member],
                              init_image=init_image, on_visit=on_visit, intervals=intervals)
    return result


@dataclasses.dataclass(frozen=True)
class BatchRequest:
    """What a batched CLI run sweeps (see `nst_jax.batch.make_members`)."""

    per_style: bool = False
    style_weights: Optional[Tuple[float, ...]] = None
    content_weights: Optional[Tuple[float, ...]] = None
    seeds: Optional[Tuple[int, ...]] = None
    num_devices: Optional[int] = None  # None: all visible devices


def member_path(output_path, label):
    """out.png + "starry_night_sw1000" -> out_starry_night_sw1000.png"""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{label}{extension}"


def style_names(style_paths):
    """File stems, made unique (a_1, a_2) where two styles share a name."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in style_paths]
    return [f"{stem}_{i + 1}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def intermediate_path(output_path, step, num_steps):
    """out.png -> out_0100.png for the image saved at step 100."""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{step:0{len(str(num_steps))}d}{extension}"


def load_inputs(content_path, style_paths, output_path, settings, load_weights, timings=None):
    """Check the output path, load the images, then the weights: cheapest failure first.

    Returns (content, styles, init_image or None, params, params_metadata).
    """
    timings = timings or RunTimings()
    with timings.phase("images"):
        images.check_output_path(output_path)
        content = images.load_image(content_path)
        styles = [images.load_image(path) for path in style_paths]
        init_image = images.load_image(settings.init_image) if settings.init == "image" else None
    with timings.phase("weights"):
        params, params_metadata = load_weights()
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


def _progress_terms(visit):
    """A single image shows its loss terms; a batch its losses' mean, min and max."""
    if len(visit.losses) == 1:
        return {name: float(values[0]) for name, values in visit.terms.items()}
    return {"loss mean": float(np.mean(visit.losses)), "min": float(np.min(visit.losses)),
            "max": float(np.max(visit.losses))}


def stylize_files(content_path, style_paths, output_path, settings, load_weights, *, batch=None,
                  stream=None, timings=None):
    """The CLI's run: load, stylize with progress and intermediate saves, write atomically.

    Args:
      load_weights: () -> (params, ParamsMetadata); called after the images and the output path
        are checked, so a bad image fails before any download or compile.
      batch: a BatchRequest for many outputs (OUT_<label>.EXT), or None for one (OUT).
      timings: a RunTimings to record the phases, compilation and each visit's losses in.

    Returns [(path, batch.StylizeResult)], one per output. Raises UserInputError (one line naming the
    file) for unusable inputs or outputs, before any compute. Ctrl-C saves the current images
    and returns them with interrupted=True; before the first step it raises KeyboardInterrupt
    and writes nothing. With several hosts (jax.distributed) the first one writes.
    """
    timings = timings or RunTimings()
    content, styles, init_image, params, params_metadata = load_inputs(
        content_path, style_paths, output_path, settings, load_weights, timings)
    if batch is None:
        members, mesh = make_members(settings, style_names(style_paths), per_style=False), None
        paths = [output_path]
    else:
        members = make_members(settings, style_names(style_paths), per_style=batch.per_style,
                               style_weights=batch.style_weights, content_weights=batch.content_weights,
                               seeds=batch.seeds)
        paths = [member_path(output_path, m.label) for m in members]
        try:
            devices = batch.num_devices or jax.device_count()
            mesh = batch_mesh(devices) if devices > 1 else None
        except ValueError as error:
            raise UserInputError(f"--devices: {error}") from None
    # From here on Ctrl-C only sets a flag (see ctrl_c_at_visits): from the first line printed
    # to the first step, a KeyboardInterrupt could hit jaxlib mid-call.
    with ctrl_c_at_visits() as ctrl_c:
        if params_metadata.synthetic:
            print("warning: these VGG-19 weights are synthetic random values (for tests); "
                  "the picture will not be art", file=stream or sys.stderr)
        describe = run_description(content_path, style_paths, settings, params_metadata)
        member_metadata = [{} if batch is None else {"member": dataclasses.asdict(m)} for m in members]
        writes = jax.process_index() == 0
        total_steps = settings.num_steps * settings.scales
        bar = ProgressBar(total_steps, stream=stream,
                          label="step" if len(members) == 1 else f"{len(members)} images, step")

        def on_visit(visit):
            timings.visit(visit.step, visit.losses)
            if ctrl_c.requested and visit.step < total_steps:
                raise KeyboardInterrupt  # the run keeps the images of the chunk that just finished
            at_print = settings.print_every and (visit.step % settings.print_every == 0
                                                 or visit.step == total_steps)
            if writes and (bar.interactive or at_print):
                bar.update(visit.step, _progress_terms(visit), force_line=bool(at_print))
            if settings.save_every and visit.step % settings.save_every == 0 and visit.step < total_steps:
                snapshots = visit.images()  # a collective across hosts: every host takes part
                for path, extra, snapshot in zip(paths, member_metadata, snapshots if writes else ()):
                    images.save_image(intermediate_path(path, visit.step, total_steps), snapshot,
                                      describe(steps=visit.step, **extra))

        with timings.phase("run"), timings.compile:
            results = stylize_batch(content, styles, settings, params, params_metadata.preprocessing,
                                    members, init_image=init_image, mesh=mesh, on_visit=on_visit,
                                    intervals=(settings.print_every, settings.save_every, PROGRESS_INTERVAL))
    first = results[0]
    if first.interrupted and first.steps_done == 0:
        raise KeyboardInterrupt  # the start image is no result: write nothing
    with timings.phase("write"):
        for path, extra, result in zip(paths, member_metadata, results if writes else ()):
            check_finite(result.image, result.steps_done)
            images.save_image(path, result.image, describe(steps=result.steps_done, **extra))
    state = "interrupted" if first.interrupted else "done"
    written = paths[0] if len(paths) == 1 else f"{len(paths)} images: {', '.join(paths)}"
    bar.close(f"{state} after {first.steps_done} steps in {timings.phases['run']:.1f} s "
              f"({timings.compile.seconds:.1f} s of it compiling); wrote {written}")
    return list(zip(paths, results))
