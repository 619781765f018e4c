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

import contextlib
import dataclasses
import itertools
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast

import jax
import numpy as np
import numpy.typing as npt
from jax.sharding import Mesh

from nst_jax.imaging import images
from nst_jax.model.layers import CONV_LAYERS, deepest_conv
from nst_jax.loss.objective import Objective, loss_weights
from nst_jax.config.settings import Settings
from nst_jax.engine.buckets import pad_images
from nst_jax.engine.chunk_inputs import MemberInputs, build_chunk_inputs
from nst_jax.engine.devices import Layout, splits_rows
from nst_jax.engine.checkpoint import Checkpoints, Position, finite_terms, host_terms
from nst_jax.engine.optimize import LoopResult, OptimizerSpec, PieceEnd, Pieces, agreed, run_loop, to_host
from nst_jax.engine.plan import RunPlan, plan_run
from nst_jax.engine.regions import Regions, ScaleGuides, mix_grams, scale_guides
from nst_jax.engine.stages import InputShapes, finish_image, initial_pixels, prepare_images, run_targets
from nst_jax.errors import UserInputError
from nst_jax.model.ops import with_adjoint_kernels
from nst_jax.weights.params_file import Model, Params


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
    def losses(self) -> np.ndarray:
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
      style_weights: style weights to sweep, or None for the settings' value.
      content_weights: content weights to sweep, or None for the settings' value.
      seeds: seeds to sweep, or None for the settings' value.

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


# One style image, or a list of them (arrays as `images.as_rgb` takes them).
StyleImages = Union[npt.ArrayLike, Sequence[npt.ArrayLike]]


def _style_list(styles: StyleImages) -> List[npt.ArrayLike]:
    """A list of style images: one array (not a list of arrays) is one style."""
    if isinstance(styles, np.ndarray) or hasattr(styles, "__array__"):
        return [styles]
    return list(cast(Sequence[npt.ArrayLike], styles))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run meets its caller: everything but the images, the Settings, the model and the members.

    Attributes:
      init_image: RGB array for settings.image.init == "image".
      mesh: a "batch" Mesh to split the members over (`devices.batch_mesh`), a "rows" Mesh to
        split each image by rows over (`devices.image_mesh`), or None: the layout's own (one
        device unless the plan says otherwise).
      on_visit: called with a `Visit` at every host visit; raising `StopRun` there stops the run,
        which returns the last finished images, interrupted=True.
      intervals: step intervals at which to visit the host (progress, saves, Ctrl-C checks).
      should_stop: () -> bool, checked before each scale and between the pieces of about
        optimize.PIECE_SECONDS that chunks are cut into: once true the run stops there, keeping
        the images of the last finished step. None: a Ctrl-C (SIGINT) in the main thread stops
        the run so (a notebook's interrupt included); a second one raises KeyboardInterrupt.
      on_steps: called (step, seconds per step) after each piece: the speed from the first step
        on, compilation excluded (progress at sizes where a step takes minutes).
      checkpoints: an `engine.checkpoint.Checkpoints`: the run resumes from its latest checkpoint
        (equal to the uninterrupted run), saves at its interval and when stopped. The caller
        removes it after a finished run (`remove()`), or releases it (`close()`).
      regions: which region of the output takes which style (`engine.regions.Regions`: guides
        as arrays), for every member, or a sequence of one per member (a sweep of masks: as
        many regions each); settings.regions says how guides reach the loss layers.
    """

    init_image: Optional[npt.ArrayLike] = None
    mesh: Optional[Mesh] = None
    on_visit: Optional[Callable[["Visit"], None]] = None
    intervals: Tuple[int, ...] = ()
    should_stop: Optional[Callable[[], bool]] = None
    on_steps: Optional[Callable[[int, float], None]] = None
    checkpoints: Optional[Checkpoints] = None
    regions: Union[None, Regions, Sequence[Regions]] = None


def _region_count(regions: Union[None, Regions, Sequence[Regions]]) -> int:
    if regions is None:
        return 0
    return regions.count if isinstance(regions, Regions) else regions[0].count


def _member_regions(regions: Union[None, Regions, Sequence[Regions]], members: int,
                    styles: int) -> Optional[Tuple[Regions, ...]]:
    """RunOptions.regions as one checked Regions per member (the same object where shared)."""
    if regions is None:
        return None
    listed = [regions] * members if isinstance(regions, Regions) else list(regions)
    if len(listed) != members:
        raise UserInputError(f"regions: {len(listed)} for {members} outputs (one Regions, or one per output)")
    checked = {id(each): each.checked(styles) for each in listed}
    per_member = tuple(checked[id(each)] for each in listed)
    shapes = {(each.count, each.content_weights is None, each.tv_weights is None) for each in per_member}
    if len(shapes) > 1:  # the members share one program: their regions' arrays must stack
        raise UserInputError("regions: every output's Regions needs as many regions, and content_weights and "
                             "tv_weights given for all or none")
    return per_member


@contextlib.contextmanager
def _ctrl_c_stops(options: RunOptions) -> Iterator[RunOptions]:
    """`options` with a should_stop that a Ctrl-C (SIGINT) sets, where it has none and this is the
    main thread: an interrupted call returns at the next piece (about half a second) with the
    device free, instead of leaving a dispatched chunk running after a KeyboardInterrupt."""
    if options.should_stop is not None or threading.current_thread() is not threading.main_thread():
        yield options
        return
    pressed: List[bool] = []

    def on_sigint(signum, frame):
        if pressed:  # the second: the caller insists
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        pressed.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield dataclasses.replace(options, should_stop=lambda: bool(pressed))
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)


def stylize_batch(content: npt.ArrayLike, styles: StyleImages, settings: Settings, model: Model,
                  members: Sequence[Member], options: RunOptions = RunOptions()) -> List[StylizeResult]:
    """Run every member in one vmapped, jitted loop; returns one StylizeResult per member.

    Plans the run (`plan.plan_run`: "auto" choices resolved for these images and the options'
    mesh), then runs it (`run_plan`). With settings.image.scales > 1 the run goes coarse to fine
    (stages.scale_sizes), each scale starting from the previous one's images, upsampled; each
    scale compiles once.

    Args:
      content: (H, W, 3) RGB in [0, 1] (or what `images.as_rgb` takes: uint8, grayscale, RGBA);
        styles: a list of such arrays, or one.
      model: VGG-19 params and their input convention (`Model.load(path)`).
      members: from `make_members`.
    """
    content_rgb, style_rgbs = _checked_images(content, styles, settings)
    mesh = _splitting(options.mesh)
    plan = plan_run(settings, InputShapes.of(content_rgb, style_rgbs, _region_count(options.regions)),
                    Layout.of_mesh(len(members), mesh),
                    device=mesh.devices.flat[0] if mesh is not None else None)
    with _ctrl_c_stops(options) as stoppable:
        return _run_checked(plan, content_rgb, style_rgbs, model, members, stoppable)


def stylize(content: npt.ArrayLike, styles: StyleImages, settings: Settings, model: Model,
            options: RunOptions = RunOptions()) -> StylizeResult:
    """Stylize `content` (H, W, 3 RGB in [0, 1]) with the `styles` (blended); a StylizeResult.

    `options.on_visit` sees a `Visit` whose arrays hold the one member.
    """
    (member,) = make_members(settings, ["style"] * len(_style_list(styles)), per_style=False)
    (result,) = stylize_batch(content, styles, settings, model, [member], options)
    return result


def _splitting(mesh: Optional[Mesh]) -> Optional[Mesh]:
    """`mesh`, or None for a mesh of one device: it splits nothing (the plain chunk, as
    Layout.of_mesh counts it)."""
    return mesh if mesh is not None and mesh.size > 1 else None


def _checked_images(content: npt.ArrayLike, styles: StyleImages,
                    settings: Settings) -> Tuple[np.ndarray, List[np.ndarray]]:
    """(content, styles) as RGB float arrays, checked before anything compiles."""
    styles = _style_list(styles)
    if not styles:
        raise ValueError("at least one style image is needed")
    settings.image.check_style_count(len(styles))  # a UserInputError (a ValueError)
    return (images.as_rgb(content, "content"),
            [images.as_rgb(style, f"style {index + 1}") for index, style in enumerate(styles)])


def run_plan(plan: RunPlan, content: npt.ArrayLike, styles: StyleImages, model: Model,
             members: Sequence[Member], options: RunOptions = RunOptions()) -> List[StylizeResult]:
    """Run a plan made for these images (`plan.plan_run`): the CLI plans first, to refuse a run that
    cannot fit before anything is read or compiled. Returns one StylizeResult per member."""
    content_rgb, style_rgbs = _checked_images(content, styles, plan.settings)
    with _ctrl_c_stops(options) as stoppable:
        return _run_checked(plan, content_rgb, style_rgbs, model, members, stoppable)


def _run_checked(plan, content_rgb, style_rgbs, model, members, options):
    """`run_plan` for images already made RGB floats (`_checked_images`)."""
    if not members:
        raise ValueError("a batch needs at least one member")
    regions = _member_regions(options.regions, len(members), len(style_rgbs))
    if InputShapes.of(content_rgb, style_rgbs, _region_count(regions)) != plan.inputs:
        raise ValueError(f"the plan was made for images of {plan.inputs}, not these")
    mesh = _splitting(options.mesh) if options.mesh is not None else plan.layout.mesh()
    if Layout.of_mesh(len(members), mesh) != plan.layout:
        raise ValueError(f"the plan's layout is {plan.layout}, the run's {Layout.of_mesh(len(members), mesh)}")
    init_image = None if options.init_image is None else images.as_rgb(options.init_image, "init_image")
    run = _Run(plan, content_rgb, tuple(style_rgbs), model.preprocessing,
               prepare_params(model.params, Objective.from_settings(plan.settings, model.preprocessing)),
               tuple(members), mesh, options, regions)
    # Held for the run; a caller that took it first (the CLI: until its images are written)
    # releases it itself.
    checkpoints = options.checkpoints
    taken = checkpoints is not None and checkpoints.acquire()
    try:
        return _run_scales(run, init_image)
    finally:
        if taken:
            cast(Checkpoints, checkpoints).close()


def _run_scales(run: "_Run", init_image: Optional[np.ndarray]) -> List[StylizeResult]:
    """Every coarse-to-fine pass of `run` (from its checkpoint, if any), then the results."""
    plan, members, options = run.plan, run.members, run.options
    checkpoints = options.checkpoints
    resume = checkpoints.latest() if checkpoints is not None else None
    first_scale = 0 if resume is None else resume.scale
    if first_scale >= len(plan.sizes):
        raise ValueError(f"the checkpoint is at scale {first_scale + 1}; this run has {len(plan.sizes)}")
    starts: Sequence[Optional[np.ndarray]]  # one per member: the next scale's start image, or None
    starts, steps_done, seconds = [init_image] * len(members), 0 if resume is None else resume.step, 0.0
    interrupted = False
    for index in range(first_scale, len(plan.sizes)):
        if index > first_scale and options.should_stop is not None and agreed(options.should_stop())[0]:
            interrupted = True  # stopped between scales: the previous scale's images stand
            break
        finished, losses, loop = _run_scale(run, index, starts, steps_done, resume if index == first_scale else None)
        steps_done, seconds, starts = steps_done + loop.steps_done, seconds + loop.seconds, finished
        last = (index, loop)
        if loop.interrupted:
            interrupted = True
            break
    if checkpoints is not None and (interrupted or checkpoints.at_end):
        _save_last_step(checkpoints, *last, steps_done)
    if finished[0].shape[:2] != plan.working_shape:
        # Interrupted at a coarse scale: hand back the requested size all the same.
        finished = [images.resize_long_side(image, plan.settings.image.image_size) for image in finished]
    return [StylizeResult(image, steps_done, interrupted, float(loss), seconds)
            for image, loss in zip(finished, losses)]


def _save_last_step(checkpoints: Checkpoints, scale: int, loop: LoopResult, step: int) -> None:
    """A stopped (or, with `at_end`, finished) run's last step, checkpointed and on disk before
    the run returns: the same command resumes there. Never a diverged state, nor one a
    KeyboardInterrupt cut."""
    terms = host_terms(loop.terms)
    if loop.state_kept and finite_terms(terms) and step != checkpoints.saved_step:
        checkpoints.save(Position(scale, step, terms), loop.pixels, loop.opt_state)
    checkpoints.wait()


def prepare_params(params: Params, objective: Objective) -> Params:
    """The convolutions the objective's layers need, with their adjoint kernels, on the device.

    Made once per run: the input gradient's rotated kernels are not remade in every step, and
    layers past the deepest one the loss reads are neither prepared nor shipped. Made once per
    process for the same array objects when they are marked read-only (`load_params`'s) or are
    jax.Arrays: a second stylize() call neither rotates the kernels again (~0.1 s on a CPU) nor
    ships them to the device again. The last result stays on the device until other params are
    prepared. Returns a new dict per call; its arrays are shared.
    """
    global _last_prepared
    used = tuple(CONV_LAYERS[: CONV_LAYERS.index(deepest_conv(objective.layers)) + 1])
    missing = [layer for layer in used if layer not in params]
    if missing:
        raise ValueError(f"the params lack {', '.join(missing)}, which the loss's layers need")
    needed = {layer: params[layer] for layer in used}
    sources = jax.tree_util.tree_leaves(needed)
    # Identity stands for the values only for arrays marked read-only (or immutable); holding
    # the sources keeps their ids from being reused while remembered.
    reusable = all(isinstance(leaf, jax.Array) or (isinstance(leaf, np.ndarray) and not leaf.flags.writeable)
                   for leaf in sources)
    key = (used, tuple(id(leaf) for leaf in sources))
    last = _last_prepared
    if reusable and last is not None and last[0] == key:
        prepared = last[2]
    else:
        _last_prepared = last = None  # let the previous set go before shipping a new one
        prepared = jax.device_put(jax.tree_util.tree_map(np.asarray, with_adjoint_kernels(needed)))
        if reusable:
            _last_prepared = (key, sources, prepared)
    return {layer: dict(entries) for layer, entries in prepared.items()}


# prepare_params's last result for read-only arrays: (key, the source arrays (held), prepared).
_last_prepared: Optional[Tuple[Any, List[Any], Params]] = None


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every scale of one run shares, fixed before the first one."""

    plan: RunPlan
    content: np.ndarray
    styles: Tuple[np.ndarray, ...]
    preprocessing: str
    params: Params  # prepared: the used convolutions with their adjoint kernels, on the device
    members: Tuple[Member, ...]
    mesh: Optional[Mesh]
    options: RunOptions
    regions: Optional[Tuple[Regions, ...]]  # checked, one per member


def _run_scale(run: _Run, index: int, starts: Sequence[Optional[np.ndarray]], first_step: int,
               resume: Optional[Position] = None) -> Tuple[List[np.ndarray], np.ndarray, LoopResult]:
    """Pass `index` of the plan's coarse-to-fine sizes, from `starts` (one RGB image or None per
    member) or from the checkpoint at `resume`, its steps counted from `first_step`: (finished
    images, final losses, LoopResult)."""
    plan, options, checkpoints = run.plan, run.options, run.options.checkpoints
    settings = plan.settings.replace(image_size=plan.sizes[index])
    members, params, preprocessing, styles = run.members, run.params, run.preprocessing, run.styles
    objective = Objective.from_settings(settings, preprocessing)
    content_rgb, content_pixels, style_pixels = prepare_images(run.content, styles, settings)
    unpadded, true_shape, extents, bucket = content_pixels, content_pixels.shape[:2], None, None
    style_shapes = [pixels.shape[:2] for pixels in style_pixels]
    if settings.network.shape_buckets == "on":  # every image padded to its bucket, its true size traced
        content_pixels, style_pixels, extents = pad_images(content_pixels, style_pixels)
        bucket = content_pixels.shape[:2]
    keeps: Sequence[Optional[np.ndarray]] = [None] * len(members)
    guides: Dict[int, ScaleGuides] = {}  # by id of each distinct Regions: the regions on every layer, padded
    for distinct in run.regions or ():
        if id(distinct) not in guides:
            guides[id(distinct)] = scale_guides(
                distinct, objective.style_layers, objective.content_layers, settings.regions.guide_propagation,
                settings.regions.guide_grow, true_shape, style_shapes, content_pixels.shape[:2],
                [pixels.shape[:2] for pixels in style_pixels])
    if run.regions is not None:
        keeps = [own.keep(true_shape[0], true_shape[1], plan.sizes[index] / plan.sizes[-1]) for own in run.regions]
    # Content targets once, Gram matrices once per style image at its own size (per distinct
    # paintings' guides with regions), and their blend: one program (print sizes: one per image,
    # split by rows like the loop). Host arrays go in by device_put (jnp.asarray compiles a copy
    # per shape).
    blend = np.asarray(settings.image.style_blend_weights or (1.0,) * len(styles), np.float32)
    grams_by_guides: Dict[Any, List[Any]] = {}

    def paintings_grams(style_guides):  # the content's targets, each painting's Grams, their blend
        return run_targets(objective, params, jax.device_put(content_pixels), jax.device_put(style_pixels),
                           jax.device_put(blend / blend.sum()), rows=run.mesh if splits_rows(run.mesh) else None,
                           extents=extents, style_guides=None if style_guides is None else jax.device_put(style_guides))

    def paintings_key(regions):  # the paintings' guides a Regions has (the same arrays: the same Grams)
        return tuple(None if guide is None else id(guide) for guide in regions.styles)

    first = None if run.regions is None else run.regions[0]
    content_targets, grams, blended = paintings_grams(None if first is None else guides[id(first)].styles)
    if first is not None:
        grams_by_guides[paintings_key(first)] = grams

    def style_of(member, regions):  # its style targets, and its regions' guides
        if regions is None:
            return grams[member.style_index] if member.style_index is not None else blended, None
        scaled, key = guides[id(regions)], paintings_key(regions)
        if key not in grams_by_guides:  # other paintings' maps: their own Grams
            grams_by_guides[key] = paintings_grams(scaled.styles)[1]
        mix = scaled.member_mix(member.style_index, blend / blend.sum())
        return mix_grams(grams_by_guides[key], jax.device_put(mix)), scaled.region_guides(mix)

    member_inputs = []
    for member, start, own in zip(members, starts, run.regions or [None] * len(members)):
        style, member_guides = style_of(member, own)
        member_inputs.append(MemberInputs(
            initial_pixels(settings, preprocessing, unpadded, start, seed=member.seed, bucket=bucket), style,
            loss_weights(member.content_weight, member.style_weight, member.tv_weight), guides=member_guides))
    inputs = build_chunk_inputs(objective, OptimizerSpec.from_settings(settings), params, content_targets,
                                member_inputs, run.mesh, batched=plan.layout.batched,
                                extent=None if extents is None else extents[0])
    steps = settings.optimizer.num_steps
    if resume is not None:
        assert checkpoints is not None
        pixels, opt_state = checkpoints.restore(inputs.pixels, inputs.opt_state)
        inputs = dataclasses.replace(inputs, pixels=pixels, opt_state=opt_state)
        steps -= resume.step - index * steps  # the steps this scale had done
    count = len(members)

    def per_member(values):  # host arrays with a leading member axis, padding dropped
        return values[:count] if inputs.batched else values[None]

    def finished_images(current):  # cropped to the true image (shape buckets)
        return [finish_image(member[:true_shape[0], :true_shape[1]], content_rgb, settings, keep)
                for member, keep in zip(per_member(to_host(current)), keeps)]

    def visit(step, current, terms):
        if options.on_visit is not None:
            options.on_visit(Visit(step=step, total_steps=plan.total_steps,
                                   terms={name: per_member(np.asarray(v)) for name, v in terms.items()},
                                   images=lambda: finished_images(current), scale=index,
                                   scales=len(plan.sizes)))

    def after_piece(end: PieceEnd) -> None:
        if options.on_steps is not None:
            options.on_steps(end.step, end.seconds_per_step)
        if checkpoints is not None and checkpoints.due(end.step):
            terms = host_terms(end.terms)
            if finite_terms(terms):
                checkpoints.save(Position(index, end.step, terms), end.pixels, end.opt_state)

    if steps == 0:  # resumed at the end of this scale
        loop = LoopResult(inputs.start[0], 0, False, {name: np.asarray(values, np.float32)
                                                    for name, values in cast(Position, resume).terms.items()},
                          0.0, inputs.opt_state)
    else:
        intervals = options.intervals + ((checkpoints.every.steps or 0,) if checkpoints is not None else ())
        loop = run_loop(inputs.program(), *inputs.start, steps, inputs.loss_args, intervals, visit,
                        first_step=first_step, pieces=Pieces(options.should_stop, after_piece))
    loss = np.asarray(loop.loss)  # a scalar NaN when stopped before the first chunk finished
    return finished_images(loop.pixels), per_member(loss) if loss.ndim else np.full(count, loss), loop

