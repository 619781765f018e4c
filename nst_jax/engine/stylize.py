"""Style transfer for one or many images as one compiled computation: the engine behind every run.

Members differ in their style target (one painting each, or a blend), their loss weights
(α, β, γ) and their seed; everything else (sizes, layers, optimizer, steps) is shared, so one
`jax.vmap` of the single-image chunk runs them all and compiles once. A single image on one
device runs the plain (unbatched) chunk: under vmap, the zoom line search's data-dependent
branches become selects that compute every branch. L-BFGS keeps each member's own memory and
step: vmap batches the optimizer state; without a line search (the default) a member-step costs
what a single image's step costs, with the zoom line search every member waits for the slowest.

Compiled programs are cached per process by their static settings (nst_jax.engine.optimize.chunk_program,
nst_jax.engine.stages.targets), so a second run with the same settings and sizes compiles nothing.

Styles of different sizes need no resizing or padding: a style enters only through its Gram
matrices, which are C×C whatever the painting's size, so each style is measured at its own size
(style_scale × output size, its own aspect ratio) before the batched loop starts.

With several devices the batch axis is sharded over a 1-D `jax.sharding.Mesh` ("batch"); params
and content targets are replicated. A batch that does not divide evenly is padded with copies of
its last member, whose outputs are dropped. On a mesh whose axis is "rows" (`image_mesh`) each
image is split by rows instead: the pixels and the optimizer state shaped like them are sharded,
params and targets replicated, and XLA's SPMD partitioner adds the convolutions' halo exchanges
and the Gram matrices' all-reduces (one image too large for one device's memory).
"""

import dataclasses
import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax.imaging import images
from nst_jax.model.layers import CONV_LAYERS, deepest_conv
from nst_jax.loss.objective import Objective, loss_weights
from nst_jax.config.settings import Settings
from nst_jax.engine.optimize import (OptimizerSpec, chunk_program, row_shardings, run_loop, state_program,
                               to_host)
from nst_jax.engine.stages import finish_image, initial_pixels, prepare_images, scale_sizes, targets
from nst_jax.model.vgg import with_adjoint_kernels


# VGG-19 params as nst_jax.load_params gives them: {"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}.
Params = Dict[str, Dict[str, Any]]


@dataclasses.dataclass
class StylizeResult:
    """One member's finished image (H, W, 3) RGB in [0, 1] and how the run went."""

    image: np.ndarray
    steps_done: int  # over all scales
    interrupted: bool
    loss: float  # at the last step, at the last scale reached
    seconds: float


@dataclasses.dataclass
class Visit:
    """What a run shows its caller at a host visit; the costly parts only on request."""

    step: int  # steps done so far, over all scales
    total_steps: int
    terms: dict  # {"total"/"content"/"style"/"tv": one value per member} at the last evaluation
    images: Callable[[], list]  # () -> finished RGB images, one per member (at this scale's size)
    scale: int = 0  # which coarse-to-fine pass (0-based) of `scales`
    scales: int = 1

    @property
    def losses(self):
        return self.terms["total"]


@dataclasses.dataclass(frozen=True)
class Member:
    """One output of a batched run.

    Attributes:
      style_index: which style image is this member's target; None blends all of them with
        settings.image.style_blend_weights.
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


def make_members(settings: Settings, style_names: Sequence[str], *, per_style: bool = True,
                 style_weights: Optional[Sequence[float]] = None,
                 content_weights: Optional[Sequence[float]] = None,
                 seeds: Optional[Sequence[int]] = None) -> List[Member]:
    """Every combination of style × style weight × content weight × seed, labelled predictably.

    Args:
      settings: the shared Settings (defaults for whatever is not swept).
      style_names: short names of the style images (file stems), used in labels.
      per_style: one member per style image; False: every member uses the blend of all styles.
      style_weights, content_weights, seeds: lists to sweep, or None for the settings' value.

    A label contains only what varies, e.g. "starry_night", "sw0.001", "starry_night_seed2".
    """
    styles: List[Optional[int]] = list(range(len(style_names))) if per_style else [None]
    axes: List[Tuple[str, Sequence[Any]]] = [("", styles), ("sw", style_weights or [settings.loss.style_weight]),
            ("cw", content_weights or [settings.loss.content_weight]), ("seed", seeds or [settings.image.seed])]
    members = []
    for style_index, style_weight, content_weight, seed in itertools.product(*(v for _, v in axes)):
        parts = []
        if len(styles) > 1 or (per_style and len(style_names) > 1):
            parts.append(style_names[style_index])
        for (prefix, values), value in zip(axes[1:], (style_weight, content_weight, seed)):
            if len(values) > 1:
                parts.append(prefix + (_number_label(value) if prefix != "seed" else str(value)))
        members.append(Member(style_index, float(content_weight), float(style_weight),
                              settings.loss.tv_weight, int(seed), "_".join(parts) or "0"))
    return members


def _stack(trees):
    """Member trees -> one tree with a leading member axis (host leaves stay on the host)."""
    def stack(*leaves):
        return np.stack(leaves) if isinstance(leaves[0], np.ndarray) else jnp.stack(leaves)
    return jax.tree_util.tree_map(stack, *trees)


def join_cluster(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                 process_id: Optional[int] = None) -> None:
    """Make this process one host of a multi-host run (jax.distributed), before any other JAX work.

    With no arguments the cluster is detected from the environment (Slurm, Open MPI, TPU pods,
    or JAX_COORDINATOR_ADDRESS); afterwards jax.devices() lists every host's devices, so
    `batch_mesh()` spans them all. CPU hosts exchange data through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def batch_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "batch" over the first `num_devices` visible devices (default: all)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} visible")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), ("batch",))


def image_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "rows" over the first `num_devices` visible devices (default: all): each
    image is split by rows over them (one large image on several devices)."""
    return Mesh(batch_mesh(num_devices).devices, ("rows",))


def splits_rows(mesh):
    """Whether `mesh` splits images by rows (an `image_mesh`) rather than the batch by member."""
    return mesh is not None and tuple(mesh.axis_names) == ("rows",)


# With `should_stop`, a chunk runs in pieces of about this many seconds, checking it between them.
PIECE_SECONDS = 0.5


def stylize_batch(content: np.ndarray, styles: Sequence[np.ndarray], settings: Settings, params: Params,
                  convention: str, members: Sequence[Member], *, init_image: Optional[np.ndarray] = None,
                  mesh: Optional[Mesh] = None, on_visit: Optional[Callable[["Visit"], None]] = None,
                  intervals: Sequence[int] = (),
                  should_stop: Optional[Callable[[], bool]] = None) -> List[StylizeResult]:
    """Run every member in one vmapped, jitted loop; returns one StylizeResult per member.

    With settings.image.scales > 1 the run goes coarse to fine (stages.scale_sizes), each scale
    starting from the previous one's images, upsampled; each scale compiles once.

    Args:
      content: (H, W, 3) RGB in [0, 1]; styles: list of RGB arrays.
      params: VGG-19 params as loaded by nst_jax.load_params; convention: their preprocessing.
      members: from `make_members`.
      init_image: RGB array for settings.image.init == "image".
      mesh: a "batch" Mesh to split the members over (see `batch_mesh`), a "rows" Mesh to split
        each image by rows over (`image_mesh`), or None: the default device.
      on_visit: called with a `Visit` at every host visit (Ctrl-C may be raised from it: the run
        then stops and returns the last finished images, interrupted=True).
      intervals: step intervals at which to visit the host (progress, saves, Ctrl-C checks).
      should_stop: () -> bool, checked before each scale and between pieces of about
        PIECE_SECONDS of a chunk: once true the run stops there (as a Ctrl-C from on_visit
        does), keeping the last visited images; the cut chunk's steps are dropped.
    """
    if not members:
        raise ValueError("a batch needs at least one member")
    if not styles:
        raise ValueError("at least one style image is needed")
    settings.image.check_style_count(len(styles))  # a UserInputError (a ValueError)
    if settings.network.remat == "auto":
        from nst_jax.engine.memory import resolve_remat
        settings = resolve_remat(settings, content.shape[:2], [style.shape[:2] for style in styles],
                                 len(members), mesh.size if mesh is not None else 1,
                                 "image" if splits_rows(mesh) else "batch",
                                 mesh.devices.flat[0] if mesh is not None else None)
    objective = Objective.from_settings(settings, convention)
    params = prepare_params(params, objective)
    total_steps = settings.optimizer.num_steps * settings.image.scales
    starts, steps_done, seconds = [init_image] * len(members), 0, 0.0
    sizes = scale_sizes(settings)
    interrupted = False
    for index, size in enumerate(sizes):
        if index and should_stop is not None and should_stop():
            interrupted = True  # stopped between scales: the previous scale's images stand
            break
        scale = settings.replace(image_size=size)
        finished, losses, run = _run_scale(content, styles, scale, params, convention, members, starts,
                                           mesh, on_visit, intervals, steps_done, total_steps,
                                           (index, len(sizes)), should_stop)
        steps_done, seconds, starts = steps_done + run.steps_done, seconds + run.seconds, finished
        if run.interrupted:
            interrupted = True
            break
    height, width = content.shape[:2]
    if finished[0].shape[:2] != images.long_side_shape(height, width, settings.image.image_size):
        # Interrupted at a coarse scale: hand back the requested size all the same.
        finished = [images.resize_long_side(image, settings.image.image_size) for image in finished]
    return [StylizeResult(image, steps_done, interrupted, float(loss), seconds)
            for image, loss in zip(finished, losses)]


def stylize(content: np.ndarray, styles: Sequence[np.ndarray], settings: Settings, params: Params,
            convention: str, *, init_image: Optional[np.ndarray] = None,
            on_visit: Optional[Callable[[Visit], None]] = None, intervals: Sequence[int] = (),
            mesh: Optional[Mesh] = None) -> StylizeResult:
    """Stylize `content` (H, W, 3 RGB in [0, 1]) with the `styles` list (blended); a batch.StylizeResult.

    Args:
      params: VGG-19 params as loaded by nst_jax.load_params (numpy or jax arrays).
      convention: the params' preprocessing convention ("caffe" or "torch").
      init_image: RGB array for settings.image.init == "image".
      on_visit: called with a `nst_jax.engine.stylize.Visit` (arrays of one member) at every host visit.
      intervals: step intervals at which to visit the host.
      mesh: `nst_jax.engine.stylize.image_mesh(n)` splits the image by rows over n devices; None: one device.
    """
    (member,) = make_members(settings, ["style"] * len(styles), per_style=False)
    (result,) = stylize_batch(content, styles, settings, params, convention, [member],
                              init_image=init_image, on_visit=on_visit, intervals=intervals, mesh=mesh)
    return result


def prepare_params(params: Params, objective: Objective) -> Params:
    """The convolutions the objective's layers need, with their adjoint kernels, on the device.

    Made once per run: the input gradient's rotated kernels are not remade in every step, and
    layers past the deepest one the loss reads are neither prepared nor shipped.
    """
    used = CONV_LAYERS[: CONV_LAYERS.index(deepest_conv(objective.layers)) + 1]
    missing = [layer for layer in used if layer not in params]
    if missing:
        raise ValueError(f"the params lack {', '.join(missing)}, which the loss's layers need")
    prepared = with_adjoint_kernels({layer: params[layer] for layer in used})
    return jax.device_put(jax.tree_util.tree_map(np.asarray, prepared))


def in_pieces(chunk_fn, should_stop, piece_seconds=PIECE_SECONDS):
    """`chunk_fn` run in pieces of about `piece_seconds`, checking `should_stop()` before each.

    A stop raises KeyboardInterrupt there, in Python between jaxlib calls (never inside one),
    so run_loop returns its last finished image. Chunks of any length share one compilation, so
    the pieces compile nothing new; the first two are one step each (the first includes the
    compile), the rest sized from the last piece's time.
    """
    timing = {"calls": 0, "per_step": None}

    def chunk(pixels, opt_state, num_steps, *args):
        left, terms = int(num_steps), None
        while left:
            if should_stop():
                raise KeyboardInterrupt
            per_step = timing["per_step"]
            steps = 1 if per_step is None else max(1, min(left, int(piece_seconds / per_step)))
            began = time.perf_counter()
            pixels, opt_state, terms = jax.block_until_ready(
                chunk_fn(pixels, opt_state, np.int32(steps), *args))
            timing["calls"] += 1
            if timing["calls"] > 1:
                timing["per_step"] = max(1e-6, (time.perf_counter() - began) / steps)
            left -= steps
        return pixels, opt_state, terms

    return chunk


def _run_scale(content, styles, settings, params, convention, members, starts, mesh, on_visit,
               intervals, first_step, total_steps, scale, should_stop=None):
    """One size of the run: (finished images, final losses, LoopResult)."""
    objective = Objective.from_settings(settings, convention)
    content_rgb, content_pixels, style_pixels = prepare_images(content, styles, settings)
    # Content targets once, Gram matrices once per style image at its own size, and their blend:
    # one program. Host arrays go in by device_put (jnp.asarray compiles a copy per shape).
    blend = np.asarray(settings.image.style_blend_weights or (1.0,) * len(styles), np.float32)
    content_targets, grams, blended = targets(
        objective, params, jax.device_put(content_pixels), jax.device_put(style_pixels),
        jax.device_put(blend / blend.sum()))
    member_grams = [grams[m.style_index] if m.style_index is not None else blended for m in members]

    count = len(members)
    rows = splits_rows(mesh)
    splits_members = mesh is not None and not rows
    batched = count > 1 or splits_members
    padded = list(range(count)) + [count - 1] * ((-count % mesh.size) if splits_members else 0)
    member_weights = [loss_weights(members[i].content_weight, members[i].style_weight,
                                   members[i].tv_weight) for i in padded]
    start_pixels = [initial_pixels(settings, convention, content_pixels, starts[i], seed=members[i].seed)
                    for i in padded]
    spec = OptimizerSpec.from_settings(settings)
    if batched:
        style_targets, weights = _stack([member_grams[i] for i in padded]), _stack(member_weights)
        pixels = jnp.stack(start_pixels)
    else:
        (style_targets,), (weights,), (pixels,) = member_grams, member_weights, start_pixels
    weights = jax.device_put(weights)
    opt_state = state_program(spec, batched)(pixels)
    if rows:  # each image split by rows; params, targets and weights on every device
        replicated = NamedSharding(mesh, PartitionSpec())
        pixels, opt_state = jax.device_put(
            (pixels, opt_state), row_shardings((pixels, opt_state), mesh, content_pixels.shape))
        params, content_targets, style_targets, weights = jax.device_put(
            (params, content_targets, style_targets, weights), replicated)
        # The targets above ran on one device with the plain objective; the loop's splits rows.
        objective = dataclasses.replace(objective, rows=mesh)
    elif splits_members:  # members split over the devices; params and content targets on each
        sharded, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
        pixels, opt_state, style_targets, weights = jax.device_put(
            (pixels, opt_state, style_targets, weights), sharded)
        params, content_targets = jax.device_put((params, content_targets), replicated)
    chunk_fn = chunk_program(objective, spec, batched)
    if should_stop is not None:
        chunk_fn = in_pieces(chunk_fn, should_stop)

    def per_member(values):  # host arrays with a leading member axis, padding dropped
        return values[:count] if batched else values[None]

    def finished_images(current):
        return [finish_image(member, content_rgb, settings) for member in per_member(to_host(current))]

    def visit(step, current, terms):
        if on_visit is not None:
            on_visit(Visit(step=step, total_steps=total_steps,
                           terms={name: per_member(np.asarray(v)) for name, v in terms.items()},
                           images=lambda: finished_images(current), scale=scale[0], scales=scale[1]))

    run = run_loop(chunk_fn, pixels, opt_state, settings.optimizer.num_steps,
                   (params, {"content": content_targets, "style": style_targets}, weights),
                   intervals, visit, first_step=first_step)
    loss = np.asarray(run.loss)  # a scalar NaN when stopped before the first chunk finished
    return finished_images(run.pixels), per_member(loss) if loss.ndim else np.full(count, loss), run
