"""The CLI's run on files: `stylize_files` loads, runs the engine, shows progress, saves.

It runs the one engine, `nst_jax.engine.stylize.stylize_batch` (a single output is a batch of
one), and adds loading, progress, intermediate saves, Ctrl-C handling and atomic writes of the
results, for one output or a batch of them.
"""

import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple, cast

import jax
import numpy as np

from nst_jax.engine.checkpoint import Checkpoints, Every, file_digest
from nst_jax.engine.devices import Layout
from nst_jax.engine.optimize import StopRun
from nst_jax.atomic import PathLike
from nst_jax.config.settings import FIELDS, Settings, flag
from nst_jax.engine.plan import RunPlan, check_fits, plan_run
from nst_jax.engine.stylize import Member, RunOptions, StylizeResult, make_members, run_plan
from nst_jax.errors import UserInputError
from nst_jax.imaging import images
from nst_jax.engine.stages import InputShapes, undersized
from nst_jax.cli.interrupt import ctrl_c_at_visits
from nst_jax.cli.regions import load_regions, region_paths
from nst_jax.cli.progress import ProgressBar, write_line
from nst_jax.cli.watch import LossWatch, check_finite, divergence_advice
from nst_jax.engine.timings import RunTimings
from nst_jax.preview.live import LiveRun
from nst_jax.weights.params_file import Model, Params, ParamsMetadata

# Steps between host visits even when nothing is printed: how soon Ctrl-C is noticed and how
# often a terminal's progress bar is redrawn. Print and save intervals add visits.
PROGRESS_INTERVAL = 10

# () -> (params, their metadata): called once the images are known good.
LoadWeights = Callable[[], Tuple[Params, ParamsMetadata]]


@dataclasses.dataclass(frozen=True)
class CheckpointRequest:
    """--checkpoint-every and --keep-checkpoint: checkpoints in OUT.checkpoint, resumed by the
    same command (engine.checkpoint)."""

    every: Every
    keep: bool = False  # keep it after a finished run (saving its last step): run more steps later


def checkpoint_folder(output_path: PathLike) -> str:
    """out.png -> out.png.checkpoint (beside the output; one for a whole batch)."""
    return f"{os.fspath(output_path)}.checkpoint"


def run_fingerprint(settings: Settings, plan: RunPlan, members: Sequence[Member], content_path: PathLike,
                    style_paths: Sequence[PathLike], params_metadata: ParamsMetadata) -> Dict[str, Any]:
    """What decides a run's numbers, named by flag: a checkpoint resumes only the run it pins.

    Output-only flags (--print-every, --save-every) are left out, and so is --num-steps of a
    single-scale run: the state at step k does not depend on how many steps follow, so a kept
    checkpoint can be run further.
    """
    left_out = ({name for name, where in FIELDS.items() if where.group == "output"}
                | {"init_image", "content_seg", "style_seg", "mask"})
    if settings.image.scales == 1:
        left_out.add("num_steps")
    fingerprint: Dict[str, Any] = {f"--{flag(name)}": value for name, value in settings.to_dict().items()
                                   if name not in left_out}
    fingerprint["outputs"] = [dataclasses.asdict(member) for member in members]
    fingerprint["devices"] = dataclasses.asdict(plan.layout)
    fingerprint["content digest"] = file_digest(content_path)
    fingerprint["style digest"] = [file_digest(path) for path in style_paths]
    if settings.image.init == "image":
        fingerprint["init image digest"] = file_digest(cast(str, settings.image.init_image))
    if settings.regions.given:
        fingerprint["region map digests"] = [file_digest(path) for path in region_paths(settings)]
    fingerprint["weights digest"] = params_metadata.source_hash
    fingerprint["--preprocessing"] = params_metadata.preprocessing
    return fingerprint


def open_checkpoints(request: Optional[CheckpointRequest], output_path: PathLike, plan: RunPlan,
                     fingerprint: Callable[[], Dict[str, Any]], out: TextIO) -> Optional[Checkpoints]:
    """The run's Checkpoints (None without --checkpoint-every), checked against this run before
    anything compiles: another run's folder, or one past this run's end, is one line."""
    folder = checkpoint_folder(output_path)
    if request is None:
        if os.path.isdir(folder) and os.listdir(folder):
            write_line(f"warning: {folder} holds a checkpoint; give --checkpoint-every to resume it "
                       f"(this run starts afresh and leaves it)", out)
        return None
    checkpoints = Checkpoints(folder, fingerprint(), request.every, at_end=request.keep,
                              on_failure=lambda message: write_line(f"warning: {message}", out))
    checkpoints.acquire()
    try:
        position = checkpoints.latest()
        if position is not None and position.step > plan.total_steps:
            raise UserInputError(f"--num-steps {plan.settings.optimizer.num_steps}: {folder} is at step "
                                 f"{position.step} already; give at least that many steps, or remove it")
    except BaseException:
        checkpoints.close()
        raise
    if position is not None:
        write_line(f"resuming from step {position.step} of {plan.total_steps} ({folder})", out)
    return checkpoints


@dataclasses.dataclass(frozen=True)
class BatchRequest:
    """What a batched CLI run sweeps (see `nst_jax.engine.stylize.make_members`)."""

    per_style: bool = False
    style_weights: Optional[Tuple[float, ...]] = None
    content_weights: Optional[Tuple[float, ...]] = None
    seeds: Optional[Tuple[int, ...]] = None
    num_devices: Optional[int] = None  # None: all visible devices
    # "batch": members split over the devices; "image": each image split by rows. None: batch
    # when the members fill the devices, else image (with num_devices; batch without).
    shard: Optional[str] = None


def request_members(settings: Settings, style_paths: Sequence[PathLike],
                    batch: Optional[BatchRequest] = None) -> List[Member]:
    """The members a CLI run makes: one, blending every style, without a BatchRequest (a single
    output); else every combination the request sweeps (`make_members`)."""
    names = style_names(style_paths)
    if batch is None:
        return make_members(settings, names, per_style=False)
    return make_members(settings, names, per_style=batch.per_style, style_weights=batch.style_weights,
                        content_weights=batch.content_weights, seeds=batch.seeds)


def request_layout(batch: Optional[BatchRequest], members: int) -> Layout:
    """Where the members go: one device without a BatchRequest, else the devices it asks for (all
    visible ones by default), split as it says (by default: by member while they fill the devices)."""
    if batch is None:
        return Layout(members)
    visible = jax.device_count()
    devices = batch.num_devices or visible
    if devices > visible:
        raise UserInputError(f"--devices: asked for {devices} devices, {visible} visible")
    return Layout.requested(members, devices, batch.shard, devices_asked=bool(batch.num_devices))


def member_path(output_path: str, label: str) -> str:
    """out.png + "starry_night_sw1000" -> out_starry_night_sw1000.png"""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{label}{extension}"


def style_names(style_paths: Sequence[PathLike]) -> List[str]:
    """File stems, made unique (a_1, a_2) where two styles share a name."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in style_paths]
    return [f"{stem}_{i + 1}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def intermediate_path(output_path: str, step: int, num_steps: int) -> str:
    """out.png -> out_0100.png for the image saved at step 100."""
    stem, extension = os.path.splitext(output_path)
    return f"{stem}_{step:0{len(str(num_steps))}d}{extension}"


def refuse_undersized(settings: Settings, inputs: InputShapes, content_path: PathLike,
                      style_paths: Sequence[PathLike], long_side: Optional[int] = None) -> None:
    """UserInputError naming the image the network would shrink to nothing (stages.undersized),
    before anything compiles: its loss would be NaN at the first step."""
    problem = undersized(settings, inputs, long_side)
    if problem is None:
        return
    height, width = problem.shape
    if problem.style_index is None:
        where = (f"at --image-size {settings.image.image_size}" if settings.image.scales == 1 or long_side
                 else f"at the coarsest of --scales {settings.image.scales}")
        path, fix = content_path, "raise --image-size or crop it"
    else:
        where = f"as a style at --style-scale {settings.image.style_scale:g}"
        path, fix = style_paths[problem.style_index], "raise --style-scale or --image-size"
    raise UserInputError(f"{path}: {width}x{height} px {where} is too small for the layers the loss reads "
                         f"(each side needs at least {problem.needed} px); {fix}")


def load_images(content_path: PathLike, style_paths: Sequence[PathLike], output_path: PathLike, settings: Settings,
                timings: RunTimings) -> Tuple[np.ndarray, List[np.ndarray], Optional[np.ndarray]]:
    """Check the output path, then load the images: (content, styles, init_image or None)."""
    with timings.phase("images"):
        images.check_output_path(output_path)
        content = images.load_image(content_path)
        styles = [images.load_image(path) for path in style_paths]
        # Settings: init "image" comes with an init_image.
        init_image = (images.load_image(cast(str, settings.image.init_image)) if settings.image.init == "image"
                      else None)
    return content, styles, init_image


def run_description(content_path: PathLike, style_paths: Sequence[PathLike], settings: Settings,
                    params_metadata: ParamsMetadata) -> Callable[..., Dict[str, str]]:
    """A function (**extra) -> PNG text chunks describing how an output was made."""
    description = {
        "content": os.path.basename(content_path),
        "styles": [os.path.basename(p) for p in style_paths],
        "weights": {"source_file": params_metadata.source_file, "source_hash": params_metadata.source_hash,
                    "preprocessing": params_metadata.preprocessing, "synthetic": params_metadata.synthetic},
        "settings": settings.to_dict(),
    }
    return lambda **extra: {"nst-jax": json.dumps({**description, **extra}), "Software": "nst-jax"}


def _progress_terms(visit):
    """A single image shows its loss terms; a batch its losses' mean, min and max."""
    if len(visit.losses) == 1:
        return {name: float(values[0]) for name, values in visit.terms.items()}
    return {"loss mean": float(np.mean(visit.losses)), "min": float(np.min(visit.losses)),
            "max": float(np.max(visit.losses))}


def stylize_files(content_path: PathLike, style_paths: Sequence[PathLike], output_path: str, settings: Settings,
                  load_weights: LoadWeights, *, batch: Optional[BatchRequest] = None,
                  checkpoint: Optional[CheckpointRequest] = None, stream: Optional[TextIO] = None,
                  timings: Optional[RunTimings] = None, preview: Optional[LiveRun] = None
                  ) -> List[Tuple[str, StylizeResult]]:
    """The CLI's run: load, stylize with progress and intermediate saves, write atomically.

    Args:
      load_weights: () -> (params, ParamsMetadata); called after the images and the output path
        are checked, so a bad image fails before any download or compile.
      batch: a BatchRequest for many outputs (OUT_<label>.EXT), or None for one (OUT).
      checkpoint: a CheckpointRequest: the run resumes from OUT.checkpoint when it holds this
        run's checkpoint, saves there as asked and when stopped, and removes it once the images
        are written (unless asked to keep it).
      timings: a RunTimings to record the phases, compilation and each visit's losses in.
      preview: a LiveRun (--preview) to show the run in: its outputs, progress, images and end.

    Returns [(path, StylizeResult)], one per output. Raises UserInputError (one line naming the
    file) for unusable inputs or outputs, before any compute. Ctrl-C saves the current images
    and returns them with interrupted=True; before the first step it writes nothing (the
    results say interrupted after 0 steps). A NaN or infinite loss writes the last finite visit's images and raises
    UserInputError; a run that cannot fit raises it before anything compiles. With several hosts
    (jax.distributed) the first one writes.
    """
    timings = timings or RunTimings()
    content, styles, init_image = load_images(content_path, style_paths, output_path, settings, timings)
    with timings.phase("images"):
        regions = load_regions(settings, len(styles))
    members = request_members(settings, style_paths, batch)
    inputs = InputShapes.of(content, styles, 0 if regions is None else regions.count)
    refuse_undersized(settings, inputs, content_path, style_paths)
    # Refuse a run that cannot fit before the weights load and anything compiles (one line,
    # nothing written); the plan resolves "auto", so the check and the PNG metadata say which.
    plan = plan_run(settings, inputs, request_layout(batch, len(members)))
    check_fits(plan)
    settings = plan.settings
    with timings.phase("weights"):
        params, params_metadata = load_weights()
    outputs = _Outputs(output_path, members, run_description(content_path, style_paths, settings, params_metadata),
                       settings, batched=batch is not None)
    out = stream or sys.stderr
    if preview is not None:
        preview.describe([member.label for member in members] if len(members) > 1 else [""],
                         {"output": str(outputs), **settings.to_dict()}, total=plan.total_steps)
    checkpoints = open_checkpoints(
        checkpoint, output_path, plan,
        lambda: run_fingerprint(settings, plan, members, content_path, style_paths, params_metadata), out)
    try:
        # From here on Ctrl-C only sets a flag (see ctrl_c_at_visits): from the first line printed
        # to the first step, a KeyboardInterrupt could hit jaxlib mid-call.
        with ctrl_c_at_visits(out) as ctrl_c:
            if params_metadata.synthetic:
                write_line("warning: these VGG-19 weights are synthetic random values (for tests); "
                           "the picture will not be art", out)
            bar = ProgressBar(plan.total_steps, stream=stream,
                              label="step" if len(members) == 1 else f"{len(members)} images, step")
            monitor = _Monitor(plan, outputs, bar, timings, out, preview)
            ctrl_c.on_quit = monitor.write_latest
            with timings.phase("run"), timings.compile:
                try:
                    results = run_plan(plan, content, styles, Model(params, params_metadata.preprocessing), members,
                                       RunOptions(init_image=init_image, on_visit=monitor.on_visit,
                                                  intervals=(settings.output.print_every, settings.output.save_every,
                                                             PROGRESS_INTERVAL),
                                                  should_stop=lambda: ctrl_c.requested, on_steps=monitor.on_steps,
                                                  checkpoints=checkpoints, regions=regions))
                except Exception:
                    bar.close()  # the error's line (cli.interrupt.exit_status) starts a line of its own
                    raise
            monitor.refuse_divergence()
            first = results[0]
            if first.interrupted and first.steps_done == 0:  # the start image is no result
                bar.close("interrupted before the first step; nothing written")
                if preview is not None:
                    preview.end("interrupted", "interrupted before the first step; nothing written")
                return list(zip(outputs.paths, results))
            with timings.phase("write"):
                for result in results:
                    check_finite(result.image, result.steps_done, settings)
                outputs.write_results([result.image for result in results], first.steps_done)
                kept = ""
                if checkpoints is not None and (first.interrupted or cast(CheckpointRequest, checkpoint).keep):
                    kept = f"; the same command resumes from {checkpoints.folder}"  # released below
                elif checkpoints is not None:
                    checkpoints.remove()  # the images are written: it served its run
            state = "interrupted" if first.interrupted else "done"
            line = (f"{state} after {first.steps_done} steps in {timings.phases['run']:.1f} s "
                    f"({timings.compile.seconds:.1f} s of it compiling); wrote {outputs}{kept}")
            bar.close(line)
            if preview is not None:
                preview.end(state, line, [result.image for result in results], first.steps_done)
        return list(zip(outputs.paths, results))
    finally:
        if checkpoints is not None:
            checkpoints.close()  # released, even on an error


class _Outputs:
    """Where a run's images go and what their PNG metadata says; with several hosts the first
    writes (every host still takes part in gathering the images)."""

    def __init__(self, output_path, members, describe, settings, batched):
        # A batch of one is named like a single run: OUT, not OUT_0.
        self.paths = [output_path] if len(members) == 1 else [member_path(output_path, m.label) for m in members]
        self.metadata = [member_description(settings, member, batched) for member in members]
        self.describe = describe
        self.writes = jax.process_index() == 0

    def write(self, pictures, step, paths=None):
        """One picture per member, at `paths` (default: the outputs' own), noting `step`."""
        for path, extra, picture in zip(paths or self.paths, self.metadata, pictures if self.writes else ()):
            images.save_image(path, picture, self.describe(steps=step, **extra))

    def write_results(self, pictures, step):
        """The run's results. An output that cannot be written (a full disk, a folder removed
        meanwhile) does not lose the picture: it is kept in the temporary folder, and the one-line
        error says where."""
        problems = []
        for path, extra, picture in zip(self.paths, self.metadata, pictures if self.writes else ()):
            metadata = self.describe(steps=step, **extra)
            try:
                images.save_image(path, picture, metadata)
            except UserInputError as error:
                problems.append(f"{error}; {_keep_elsewhere(path, picture, metadata)}")
        if problems:
            raise UserInputError("; ".join(problems))

    def __str__(self):
        return self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} images: {', '.join(self.paths)}"


def _keep_elsewhere(path, picture, metadata):
    """Save a result that could not go to `path` in the temporary folder: what the error says."""
    kept = os.path.join(tempfile.gettempdir(), f"nst-jax-unsaved-{os.getpid()}-{os.path.basename(path)}")
    try:
        images.save_image(kept, picture, metadata)
    except UserInputError as error:
        return f"it could not be kept elsewhere either ({error})"
    return f"the result is kept as {kept}: move it where it belongs"


class _Monitor:
    """The run's host visits: losses recorded, progress shown, intermediate saves, Ctrl-C, and
    the visits kept for after the run (the latest, for a third Ctrl-C; the last finite one, for
    a run that diverges)."""

    def __init__(self, plan, outputs, bar, timings, out, preview=None):
        self.plan, self.outputs, self.bar, self.preview = plan, outputs, bar, preview
        self.timings, self.out, self.watch = timings, out, LossWatch(plan.settings)
        self.latest = self.finite = self.diverged_at = None

    def on_visit(self, visit):
        settings, total_steps, sizes = self.plan.settings, self.plan.total_steps, self.plan.sizes
        self.timings.visit(visit.step, visit.losses)
        self.latest = visit
        if not np.isfinite(visit.losses).all():
            self.diverged_at = visit.step
            raise StopRun  # the last finite visit's images are kept
        self.finite = visit
        writes = self.outputs.writes
        stall = self.watch.stalled(visit)
        if stall and writes:
            write_line(stall, self.out)
        print_every, save_every = settings.output.print_every, settings.output.save_every
        at_print = print_every and (visit.step % print_every == 0 or visit.step == total_steps)
        if writes:
            self.bar.update(visit.step, _progress_terms(visit), force_line=bool(at_print),
                            scale=self.scale_label(visit.scale),
                            work_left=_work_left(visit.step, visit.scale, settings.optimizer.num_steps, sizes))
        if self.preview is not None:
            self.show(visit)
        if save_every and visit.step % save_every == 0 and visit.step < total_steps:
            snapshots = visit.images()  # a collective across hosts: every host takes part
            self.outputs.write(snapshots, visit.step,
                               [intermediate_path(path, visit.step, total_steps) for path in self.outputs.paths])

    def show(self, visit):
        """The visit on the --preview page: its numbers now, its images made on the preview's
        worker (the pixels are not donated to the next chunk, so they can be read meanwhile).
        Across hosts the images are a collective: every host gathers them here, at each visit."""
        preview = cast(LiveRun, self.preview)
        preview.progress(visit.step, self.plan.total_steps, visit.terms, self.bar.rate, self.bar.seconds_left,
                         self.scale_label(visit.scale))
        if jax.process_count() > 1:
            gathered = visit.images()
            preview.offer_images(visit.step, lambda: gathered)
        else:
            preview.offer_images(visit.step, visit.images)

    def scale_label(self, scale):
        sizes = self.plan.sizes
        return f"scale {scale + 1}/{len(sizes)} ({sizes[scale]} px)" if len(sizes) > 1 else ""

    def on_steps(self, step, seconds_per_step):
        """After each piece of a chunk: the bar's speed and time left from the first step on (at
        print sizes the first visit can be many minutes away)."""
        if not self.outputs.writes:
            return
        steps_per_scale = self.plan.settings.optimizer.num_steps
        scale = min(len(self.plan.sizes) - 1, max(0, step - 1) // steps_per_scale)
        label = self.scale_label(scale)
        self.bar.measured(step, seconds_per_step, scale=label)
        self.bar.update(step, scale=label, work_left=_work_left(step, scale, steps_per_scale, self.plan.sizes))
        if self.preview is not None:
            self.preview.progress(step, self.plan.total_steps, None, self.bar.rate, self.bar.seconds_left, label)

    def write_latest(self):
        """The third Ctrl-C: write the last visited images, if any, then quit."""
        visit = self.latest
        if visit is None or not self.outputs.writes:
            write_line("interrupted before the first step; nothing written", self.out)
            return
        self.outputs.write(visit.images(), visit.step)
        write_line(f"interrupted after {visit.step} steps; wrote {self.outputs}", self.out)

    def refuse_divergence(self):
        """After a run whose loss became NaN or infinite: write the last finite visit's images
        (if any), then end with one line, a UserInputError."""
        if self.diverged_at is None:
            return
        self.bar.close()
        finite, kept = self.finite, "nothing written"
        if finite is not None and finite.step > 0:
            snapshots = finite.images()
            if all(np.isfinite(image).all() for image in snapshots):
                self.outputs.write(snapshots, finite.step)
                kept = f"wrote the image of step {finite.step}: {self.outputs}"
        raise UserInputError(f"the optimization diverged (the loss is NaN or infinite at step {self.diverged_at}; "
                             f"{kept}): {divergence_advice(self.plan.settings)}")


def member_description(settings: Settings, member: Member, batched: bool) -> Dict[str, Any]:
    """PNG metadata of one member: its own weights and seed in "settings", and the member itself."""
    if not batched:
        return {}
    own = settings.replace(style_weight=member.style_weight, content_weight=member.content_weight,
                           tv_weight=member.tv_weight, seed=member.seed)
    return {"member": dataclasses.asdict(member), "settings": own.to_dict()}


def _work_left(step, scale, steps_per_scale, sizes):
    """Steps left, counted at the current scale's cost: a later scale's step costs about its
    pixel count's share more ((its side / this side)²)."""
    done_here = step - scale * steps_per_scale
    later = sum((side / sizes[scale]) ** 2 for side in sizes[scale + 1:])
    return steps_per_scale - done_here + steps_per_scale * later
