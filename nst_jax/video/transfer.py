"""Style transfer for videos with Ruder, Dosovitskiy & Brox's (2016) temporal consistency: each frame
starts from the previous result warped along the optical flow (nst_jax.video.flow), and a short-term
temporal loss, (1/D) Σ c·(x − ω(x_prev))², keeps it there wherever the flow is trustworthy.

One compiled loop serves the whole clip: every frame has the same shapes, the temporal target and
weight are arrays (frame 0's mask is all 0), so `jit(chunk)` compiles once. The flow of the next
frame pair is computed on a thread while the current frame optimizes (OpenCV releases the GIL).
The command line (`python -m nst_jax.video`, frames folder, resume, encoding) is nst_jax.cli.video.
"""

import concurrent.futures
import dataclasses
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, cast

import jax
import numpy as np
import numpy.typing as npt

from nst_jax.imaging import images
from nst_jax.video import flow
from nst_jax.config.settings import INT32_MAX, MAX_STEPS, Range, Settings
from nst_jax.errors import UserInputError
from nst_jax.engine.buckets import pad_images, pad_to
from nst_jax.engine.chunk_inputs import MemberInputs, build_chunk_inputs
from nst_jax.engine.optimize import OptimizerSpec, Pieces, run_loop
from nst_jax.engine.plan import plan_run
from nst_jax.engine.stages import InputShapes, content_pass, finish_image, initial_pixels, prepare_images, targets
from nst_jax.engine.regions import Regions, mix_grams, scale_guides
from nst_jax.engine.stylize import prepare_params
from nst_jax.imaging.regions import resize_guides
from nst_jax.loss.objective import Objective, TemporalTarget, loss_weights, temporal_loss
from nst_jax.weights.params_file import Model

# The paper's temporal weight for pixels in 0..255 (artistic-videos' -temporal_weight 1e3).
DEFAULT_TEMPORAL_WEIGHT = 1e3


FRAME_INITS = ("warped", "independent")
# Each earlier frame costs two flows per frame and an image-sized target in the loop.
MAX_LONG_TERM = 16
VIDEO_RANGES = {"temporal_weight": Range(0), "frame_steps": Range(1, MAX_STEPS),
                "long_term": Range(1, MAX_LONG_TERM),
                "start": Range(0), "duration": Range(0, low_open=True), "every": Range(1, INT32_MAX),
                "fps": Range(0, 1000, low_open=True)}
# Each field's flag help (the CLI adds its range and default).
VIDEO_HELP = {
    "temporal_weight": "weight of the short-term temporal loss, 0: none",
    "frame_steps": "steps for every frame after the first, which gets --num-steps (default: half of it)",
    "frame_init": "start each frame from the previous result warped along the flow, or from --init as a "
                  "single image would",
    "long_term": "the temporal loss looks back at K earlier frames (Ruder et al.'s long-term loss; 1: "
                 "short-term only)",
    "start": "first second of the input to stylize",
    "duration": "seconds of the input to stylize (default: to the end)",
    "every": "stylize every Nth frame; the output's rate is divided by N",
    "fps": "frame rate of a folder of frames (default: 25)",
    "regions_follow_flow": "move the first frame's regions (--mask, --content-seg) along the optical flow "
                           "to every later frame (default: the same regions in every frame)",
}
VIDEO_METAVARS = {"long_term": "K", "start": "SECONDS", "duration": "SECONDS"}


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """The video-only knobs (the image ones are nst_jax.config.settings.Settings).

    temporal_weight: weight of the short-term temporal loss (0: none).
    frame_steps: steps for every frame after the first (which gets num_steps); None: half.
    frame_init: "warped" starts each frame from the previous result warped along the flow;
      "independent" from the image settings' own start (as for a single image).
    long_term: how many earlier frames the temporal loss looks back at (Ruder et al.'s long-term
      loss over frames t−1 … t−K; 1: the short-term loss alone).
    start, duration: the part of the input to stylize, in seconds; every: keep every Nth frame.
    fps: frame rate of a frame-folder input.
    regions_follow_flow: the first frame's regions (FrameOptions.regions) moved along the flow
      to each later frame, as the previous result is; False: the same regions in every frame.
    """

    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT
    frame_steps: Optional[int] = None
    frame_init: str = "warped"
    long_term: int = 1
    start: float = 0.0
    duration: Optional[float] = None
    every: int = 1
    fps: Optional[float] = None
    regions_follow_flow: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in VIDEO_RANGES and value is not None:
                VIDEO_RANGES[field.name].check(field.name.replace("_", "-"), value,
                                               whole="int" in str(field.type))
        if self.frame_init not in FRAME_INITS:
            raise UserInputError(f"--frame-init: {self.frame_init!r} is not one of {', '.join(FRAME_INITS)}")

    def steps(self, settings: Settings, index: int) -> int:
        if index == 0:
            return settings.optimizer.num_steps
        return self.frame_steps or max(1, settings.optimizer.num_steps // 2)




@dataclasses.dataclass
class FrameResult:
    """One finished frame: RGB in [0, 1], the optimized pixels, steps, last loss, seconds.

    temporal: the weighted temporal term of the finished pixels (part of `loss`; the loop's
    terms have no place for it, so it is measured again on the host).
    """

    index: int
    image: np.ndarray
    pixels: np.ndarray
    steps: int
    loss: float
    seconds: float
    temporal: float = 0.0


def output_warping_error(frames: Sequence[np.ndarray], motions: Sequence[Optional[flow.Motion]]) -> float:
    """Mean over consecutive frame pairs of Σ c·(out_t − ω(out_{t−1}))² / Σ c (c from the input's flow).

    frames: stylized RGB frames; motions[t]: flow.Motion from input frame t−1 to t (t ≥ 1).
    """
    errors = []
    for t in range(1, len(frames)):
        motion = motions[t]
        assert motion is not None  # only motions[0], into the first frame, may be None
        warped = flow.warp(frames[t - 1], motion.backward)
        mask = motion.mask[..., None]
        errors.append(float(np.sum(mask * np.square(frames[t] - warped))
                            / max(1.0, np.sum(mask) * frames[t].shape[-1])))
    return float(np.mean(errors))


# The temporal loss of a finished frame (clipped, as written), reported beside the loop's terms,
# which hold the last step's start: one small program per clip.
_finished_temporal_loss = jax.jit(temporal_loss)


@dataclasses.dataclass(frozen=True)
class FrameVisit:
    """What a clip's run shows its caller at a host visit during a frame."""

    index: int  # the frame
    step: int  # the frame's steps done
    steps: int  # the frame's steps in all
    terms: Dict[str, Any]  # {"total"/"content"/"style"/"tv"/"temporal": value} at the last evaluation
    image: Callable[[], np.ndarray]  # () -> the frame as it stands: RGB in [0, 1], at the working size


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How a clip's run meets its caller.

    Attributes:
      first_index: the first frame to stylize (a resumed run's first missing one).
      recent_pixels: when resuming, the optimized pixels of frames first_index − 1, − 2, …
        (nearest first, video.long_term of them or as many as there are).
      on_frame: called with each finished frame (write it there); may raise optimize.StopRun,
        which ends the call there (the caller catches it).
      on_visit: called with a FrameVisit at host visits; raising StopRun there stops the run
        without finishing the frame.
      intervals: step intervals at which to visit the host.
      regions: the clip's regions (engine.regions.Regions; the content guides those of every
        frame, or of the first one when VideoSettings.regions_follow_flow).
      frame_guides: with regions, each frame's own (R, H, W) content guides (a folder of
        per-frame masks), in place of the regions' content guides.
    """

    first_index: int = 0
    recent_pixels: Sequence[np.ndarray] = ()
    on_frame: Optional[Callable[[FrameResult], None]] = None
    on_visit: Optional[Callable[[FrameVisit], None]] = None
    intervals: Tuple[int, ...] = ()
    regions: Optional[Regions] = None
    frame_guides: Optional[Sequence[np.ndarray]] = None


def _moved_guides(guides: np.ndarray, shape: Tuple[int, int], motion: flow.Motion) -> np.ndarray:
    """The previous frame's (R, H, W) guides at the working `shape`, moved onto this frame along
    the flow (bilinear: a moved edge stays soft)."""
    on_frame = resize_guides(guides, *shape)
    return np.clip(np.moveaxis(flow.warp(np.moveaxis(on_frame, 0, -1), motion.backward), -1, 0), 0.0, 1.0)


def stylize_frames(frames: Sequence[npt.ArrayLike], styles: Sequence[npt.ArrayLike], settings: Settings,
                   video: VideoSettings, model: Model, options: FrameOptions = FrameOptions()) -> Tuple[int, bool]:
    """Stylize frames[options.first_index:] in order, calling options.on_frame(FrameResult) as each
    one finishes.

    frames: RGB frames in [0, 1] (or as `images.as_rgb` takes them: uint8...), all of one size (the
    working size); styles: RGB style images (blended with settings.image.style_blend_weights).
    "auto" settings are resolved by the clip's plan (engine.plan.plan_run) for one frame.

    Returns (frames finished in this call, interrupted). One compile of the loop for the clip.
    """
    # Arrays as image libraries give them (uint8, grayscale...), checked before anything compiles.
    clip = [images.as_rgb(frame, f"frame {index}") for index, frame in enumerate(frames)]
    style_rgbs = [images.as_rgb(style, f"style {index + 1}") for index, style in enumerate(styles)]
    regions = None if options.regions is None else options.regions.checked(len(style_rgbs))
    if options.frame_guides is not None:
        if regions is None or len(options.frame_guides) != len(clip):
            raise UserInputError(f"frame guides: {len(options.frame_guides)} for {len(clip)} frames, with regions")
        if video.regions_follow_flow:
            raise UserInputError("--regions-follow-flow: the regions are given per frame already")
        if any(np.shape(guides)[0] != regions.count for guides in options.frame_guides):
            raise UserInputError(f"frame guides: every frame needs {regions.count} regions")
    settings = plan_run(settings, InputShapes.of(clip[0], style_rgbs, 0 if regions is None else regions.count)).settings
    preprocessing = model.preprocessing
    objective = Objective.from_settings(settings, preprocessing)
    params = prepare_params(model.params, objective)
    spec = OptimizerSpec.from_settings(settings)
    # The style target once for the clip (luminance mode matches it to the first frame).
    _, first_pixels, style_pixels = prepare_images(clip[0], style_rgbs, settings)
    # With shape buckets every frame is padded to the bucket (frames share one true size) and the
    # history stays at the true size, where the flow warps it.
    true_shape, extents = first_pixels.shape[:2], None
    style_shapes = [pixels.shape[:2] for pixels in style_pixels]
    if settings.network.shape_buckets == "on":
        first_pixels, style_pixels, extents = pad_images(first_pixels, style_pixels)
    bucket = first_pixels.shape[:2]
    blend = np.asarray(settings.image.style_blend_weights or (1.0,) * len(style_rgbs), np.float32)
    blend = blend / blend.sum()
    guides = None
    if regions is not None:
        guides = scale_guides(regions, objective.style_layers, objective.content_layers,
                              settings.regions.guide_propagation, settings.regions.guide_grow, true_shape, style_shapes, bucket,
                              [pixels.shape[:2] for pixels in style_pixels])
    _, grams, style_target = targets(objective, params, jax.device_put(first_pixels), jax.device_put(style_pixels),
                                     jax.device_put(blend), extents,
                                     None if guides is None else jax.device_put(guides.styles))
    if guides is not None:  # the clip's one mix of the paintings per region
        mix = guides.member_mix(None, blend)
        style_target = mix_grams(grams, jax.device_put(mix))
        frame_guides = np.asarray(cast(Regions, regions).content)  # moved along the flow, if asked
        # A frame's RegionGuides and kept share, remade only when its guides change.
        made_for: Optional[np.ndarray] = None
        made: Tuple[Any, Optional[np.ndarray]] = (None, None)
        if video.regions_follow_flow:  # a resumed clip: moved to its first frame as before
            for index in range(1, options.first_index + 1):
                frame_guides = _moved_guides(frame_guides, true_shape, flow.motion(clip[index - 1], clip[index]))
    extent = None if extents is None else extents[0]
    weights = loss_weights(settings.loss.content_weight, settings.loss.style_weight,
                           settings.loss.tv_weight, video.temporal_weight)
    look_back = video.long_term
    history = [np.asarray(p, np.float32) for p in options.recent_pixels][:look_back]  # nearest first
    first_index = options.first_index

    def frame_pixels(index):
        rgb, pixels, _ = prepare_images(clip[index], [], settings)
        return rgb, pixels

    def optimized_pixels(pixels):  # at the true size; L-BFGS runs unconstrained: clipped, as a run's end is
        optimized = np.asarray(pixels)[:true_shape[0], :true_shape[1]]
        return optimized if spec.projects_pixels else np.clip(optimized, 0.0, settings.loss.pixel_range)

    def finished_frame(pixels, content_rgb, keep):
        return finish_image(optimized_pixels(pixels), content_rgb, settings, keep)

    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        def motions_of(index):  # flows from frames index − 1, − 2, … to index, on the thread
            return pool.submit(lambda: [flow.motion(clip[index - j], clip[index])
                                        for j in range(1, min(look_back, index) + 1)])

        upcoming = motions_of(first_index) if first_index > 0 else None
        for index in range(first_index, len(clip)):
            began = time.perf_counter()
            content_rgb, content_pixels = frame_pixels(index)
            own_start = np.asarray(initial_pixels(settings, preprocessing, content_pixels))
            # K earlier frames warped onto this one and their weights; zeros where there is no
            # earlier frame (frame 0 too), so every frame has the same shapes: one compile.
            previous = np.zeros((look_back,) + own_start.shape, np.float32)
            masks = np.zeros((look_back,) + own_start.shape[:2], np.float32)
            start = own_start
            if index > 0:
                assert upcoming is not None  # submitted before every frame after the first
                motions = upcoming.result()
                for j, (motion, mask) in enumerate(zip(motions, flow.long_term_masks(
                        [m.mask for m in motions]))):
                    previous[j] = flow.warp(history[j], motion.backward).reshape(own_start.shape)
                    masks[j] = mask
                if video.frame_init == "warped":
                    start = flow.warped_start(history[0], motions[0], own_start)
            if index + 1 < len(clip):
                upcoming = motions_of(index + 1)  # computed while this frame optimizes
            region_guides = keep = None
            if guides is not None:
                if options.frame_guides is not None:
                    frame_guides = np.asarray(options.frame_guides[index], np.float32)
                elif video.regions_follow_flow and index > options.first_index:
                    frame_guides = _moved_guides(frame_guides, true_shape, motions[0])
                if made_for is not frame_guides:  # the same regions as the last frame's: made once
                    made_for, made = frame_guides, (
                        guides.with_content(frame_guides).region_guides(mix),
                        cast(Regions, regions).keep(true_shape[0], true_shape[1], 1.0, frame_guides))
                region_guides, keep = made
            inputs = build_chunk_inputs(
                objective, spec, params,
                content_pass(objective, params, jax.device_put(pad_to(content_pixels, bucket)), extent),
                [MemberInputs(pad_to(start, bucket), style_target, weights,
                              TemporalTarget(pad_to(previous, bucket, 1), pad_to(masks, bucket, 1)), region_guides)],
                extent=extent)
            steps = video.steps(settings, index)

            def visit(step, current, terms, index=index, steps=steps, content_rgb=content_rgb, keep=keep):
                if options.on_visit is not None:
                    options.on_visit(FrameVisit(index, step, steps, terms,
                                                lambda: finished_frame(current, content_rgb, keep)))

            # In pieces (about half a second each): a notebook's interrupt stops the device's
            # work there, not after the frame's whole chunk.
            run = run_loop(inputs.program(), *inputs.start, steps, inputs.loss_args,
                           options.intervals, visit, pieces=Pieces())
            if run.interrupted:
                return done, True
            optimized = optimized_pixels(run.pixels)
            history = [optimized] + history[: look_back - 1]
            temporal = video.temporal_weight * float(_finished_temporal_loss(optimized, previous, masks))
            result = FrameResult(index, finish_image(optimized, content_rgb, settings, keep), optimized,
                                 run.steps_done, float(run.loss), time.perf_counter() - began,
                                 temporal)
            done += 1
            if options.on_frame is not None:
                options.on_frame(result)
    return done, False
