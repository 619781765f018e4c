"""Many stylizations of one content image as one compiled computation.

Members differ in their style target (one painting each, or a blend), their loss weights
(α, β, γ) and their seed; everything else (sizes, layers, optimizer, steps) is shared, so one
`jax.vmap` of the single-image chunk runs them all and compiles once. L-BFGS keeps each member's
own memory and line search: vmap batches the optimizer state, and the zoom line search's
while-loop runs until every member has finished its own search.

Styles of different sizes need no resizing or padding: a style enters only through its Gram
matrices, which are C×C whatever the painting's size, so each style is measured at its own size
(style_scale × output size, its own aspect ratio) before the batched loop starts.

With several devices the batch axis is sharded over a 1-D `jax.sharding.Mesh` ("batch"); params
and content targets are replicated. A batch that does not divide evenly is padded with copies of
its last member, whose outputs are dropped.
"""

import dataclasses
import itertools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax import images
from nst_jax.errors import UserInputError
from nst_jax.objective import Objective, blend_grams, loss_terms, loss_weights
from nst_jax.optimize import init_state, make_chunk, make_optimizer, run_loop, to_host
from nst_jax.progress import ProgressBar
from nst_jax.stylize import (PROGRESS_INTERVAL, StylizeResult, check_finite, compute_targets,
                             finish_image, initial_pixels, intermediate_path, load_inputs,
                             prepare_images, run_description)


@dataclasses.dataclass(frozen=True)
class Member:
    """One output of a batched run.

    Attributes:
      style_index: which style image is this member's target; None blends all of them with
        settings.style_blend_weights.
      content_weight, style_weight, tv_weight: α, β, γ.
      seed: seed of the noise start image.
      label: a short name for output files, e.g. "starry_night_sw1e+03".
    """

    style_index: Optional[int]
    content_weight: float
    style_weight: float
    tv_weight: float
    seed: int
    label: str


def _number_label(value):
    return f"{value:g}"


def make_members(settings, style_names, *, per_style=True, style_weights=None,
                 content_weights=None, seeds=None):
    """Every combination of style × style weight × content weight × seed, labelled predictably.

    Args:
      settings: the shared Settings (defaults for whatever is not swept).
      style_names: short names of the style images (file stems), used in labels.
      per_style: one member per style image; False: every member uses the blend of all styles.
      style_weights, content_weights, seeds: lists to sweep, or None for the settings' value.

    A label contains only what varies, e.g. "starry_night", "sw0.001", "starry_night_seed2".
    """
    styles = list(range(len(style_names))) if per_style else [None]
    axes = [("", styles), ("sw", style_weights or [settings.style_weight]),
            ("cw", content_weights or [settings.content_weight]), ("seed", seeds or [settings.seed])]
    members = []
    for style_index, style_weight, content_weight, seed in itertools.product(*(v for _, v in axes)):
        parts = []
        if len(styles) > 1 or (per_style and len(style_names) > 1):
            parts.append(style_names[style_index])
        for (prefix, values), value in zip(axes[1:], (style_weight, content_weight, seed)):
            if len(values) > 1:
                parts.append(prefix + (_number_label(value) if prefix != "seed" else str(value)))
        members.append(Member(style_index, float(content_weight), float(style_weight),
                              settings.tv_weight, int(seed), "_".join(parts) or "0"))
    return members


# Batched chunk arguments: (pixels, opt_state, num_steps, params, targets, weights); the content
# targets are shared by every member, the style Gram matrices are one per member.
TARGET_AXES = {"content": None, "style": 0}


def batched_chunk(objective, optimizer, is_lbfgs):
    """The single-image chunk vmapped over members (unjitted)."""
    return jax.vmap(make_chunk(objective, optimizer, is_lbfgs),
                    in_axes=(0, 0, None, None, TARGET_AXES, 0))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def join_cluster(coordinator=None, num_processes=None, process_id=None):
    """Make this process one host of a multi-host run (jax.distributed), before any other JAX work.

    With no arguments the cluster is detected from the environment (Slurm, Open MPI, TPU pods,
    or JAX_COORDINATOR_ADDRESS); afterwards jax.devices() lists every host's devices, so
    `batch_mesh()` spans them all. CPU hosts exchange data through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def batch_mesh(num_devices=None):
    """A 1-D mesh named "batch" over the first `num_devices` visible devices (default: all)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} visible")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), ("batch",))


def stylize_batch(content, styles, settings, params, convention, members, *,
                  init_image=None, mesh=None, on_visit=None, intervals=()):
    """Run every member in one vmapped, jitted loop; returns one StylizeResult per member.

    Args:
      content: (H, W, 3) RGB in [0, 1]; styles: list of RGB arrays.
      members: from `make_members`.
      init_image: RGB array for settings.init == "image".
      mesh: a "batch" Mesh to shard over (see `batch_mesh`); None: the default device.
      on_visit: on_visit(step, pixels, losses, terms_fn) at each host visit; pixels is the
        (padded) device array of every member, losses has one value per member, terms_fn() returns
        {term: array of one value per member}.
    """
    if not members:
        raise ValueError("a batch needs at least one member")
    objective = Objective.from_settings(settings, convention)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    content_rgb, content_pixels, style_pixels = prepare_images(content, styles, settings)
    # Content targets once; Gram matrices once per style image, each at its own size.
    per_style = [compute_targets(objective, params, jnp.asarray(content_pixels), [jnp.asarray(s)])
                 for s in style_pixels]
    content_targets = per_style[0]["content"]
    blend = settings.style_blend_weights or (1.0,) * len(styles)
    style_targets = [per_style[m.style_index]["style"] if m.style_index is not None
                     else blend_grams([t["style"] for t in per_style], blend) for m in members]

    padded = list(members)
    if mesh is not None:
        padded += [members[-1]] * (-len(members) % mesh.size)
    indices = [members.index(m) if i >= len(members) else i for i, m in enumerate(padded)]
    batch_styles = _stack([style_targets[i] for i in indices])
    batch_weights = _stack([loss_weights(m.content_weight, m.style_weight, m.tv_weight) for m in padded])
    pixels = jnp.stack([initial_pixels(settings, convention, content_pixels, init_image, seed=m.seed)
                        for m in padded])

    optimizer = make_optimizer(settings)
    batched = batched_chunk(objective, optimizer, settings.optimizer == "lbfgs")
    opt_state = jax.vmap(lambda x: init_state(optimizer, x))(pixels)
    terms_of = jax.jit(jax.vmap(lambda x, p, t, w: loss_terms(objective, p, x, t, w),
                                in_axes=(0, None, TARGET_AXES, 0)))

    if mesh is not None:
        sharded, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
        pixels, opt_state, batch_styles, batch_weights = jax.device_put(
            (pixels, opt_state, batch_styles, batch_weights), sharded)
        params, content_targets = jax.device_put((params, content_targets), replicated)
    targets = {"content": content_targets, "style": batch_styles}
    chunk_fn = jax.jit(batched, donate_argnums=(1,))

    def visit(step, current, losses):
        if on_visit is not None:
            terms_fn = lambda: {k: to_host(v)[: len(members)]
                                for k, v in terms_of(current, params, targets, batch_weights).items()}
            on_visit(step, current, np.asarray(losses)[: len(members)], terms_fn)

    result = run_loop(chunk_fn, pixels, opt_state, settings.num_steps,
                      (params, targets, batch_weights), intervals, visit)
    final = to_host(result.pixels)
    return [StylizeResult(finish_image(final[i], content_rgb, settings), result.steps_done,
                          result.interrupted, float(result.loss[i]), result.seconds)
            for i in range(len(members))]


def member_path(output_path, label):
    """out.png + "starry_night_sw1000" -> out_starry_night_sw1000.png"""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{label}{extension}"


def style_names(style_paths):
    """File stems, made unique (a_1, a_2) where two styles share a name."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in style_paths]
    return [f"{stem}_{i + 1}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def stylize_batch_files(content_path, style_paths, output_path, settings, load_weights, *,
                        per_style=True, style_weights=None, content_weights=None, seeds=None,
                        num_devices=None, stream=None):
    """The CLI's batched run: every member written as OUT_<label>.EXT; returns [(path, result)].

    num_devices: shard over this many devices (None: all visible; 1: no sharding).
    """
    content, styles, init_image, params, params_metadata = load_inputs(
        content_path, style_paths, output_path, settings, load_weights, stream)
    members = make_members(settings, style_names(style_paths), per_style=per_style,
                           style_weights=style_weights, content_weights=content_weights, seeds=seeds)
    paths = [member_path(output_path, m.label) for m in members]
    describe = run_description(content_path, style_paths, settings, params_metadata)
    try:
        mesh = batch_mesh(num_devices) if (num_devices or jax.device_count()) > 1 else None
    except ValueError as error:
        raise UserInputError(f"--devices: {error}") from None
    # With several hosts (jax.distributed) every host runs this; the first one reports and writes.
    writes = jax.process_index() == 0
    bar = ProgressBar(settings.num_steps, stream=stream, label=f"{len(members)} images, step")
    content_rgb = images.resize_long_side(content, settings.image_size)

    def on_visit(step, pixels, losses, terms_fn):
        at_print = settings.print_every and (step % settings.print_every == 0 or step == settings.num_steps)
        if writes and (bar.interactive or at_print):
            bar.update(step, {"loss mean": float(np.mean(losses)), "min": float(np.min(losses)),
                              "max": float(np.max(losses))}, force_line=bool(at_print))
        if settings.save_every and step % settings.save_every == 0 and step < settings.num_steps:
            snapshots = to_host(pixels)  # a collective across hosts: every host takes part
            for member, path, member_pixels in zip(members, paths, snapshots if writes else ()):
                images.save_image(intermediate_path(path, step, settings.num_steps),
                                  finish_image(member_pixels, content_rgb, settings),
                                  describe(steps=step, member=dataclasses.asdict(member)))

    intervals = (settings.print_every, settings.save_every, PROGRESS_INTERVAL if bar.interactive else 0)
    results = stylize_batch(content, styles, settings, params, params_metadata.preprocessing, members,
                            init_image=init_image, mesh=mesh, on_visit=on_visit, intervals=intervals)
    for member, path, result in zip(members, paths, results if writes else ()):
        check_finite(result.image, result.steps_done)
        images.save_image(path, result.image,
                          describe(steps=result.steps_done, member=dataclasses.asdict(member)))
    state = "interrupted" if results[0].interrupted else "done"
    bar.close(f"{state} after {results[0].steps_done} steps in {results[0].seconds:.1f} s; wrote "
              f"{len(paths)} images: {', '.join(paths)}")
    return list(zip(paths, results))
