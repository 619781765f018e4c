"""python -m nst_jax.video IN STYLE [STYLE ...] -o OUT.mp4 [image flags] [video flags]

Style transfer for videos with Ruder, Dosovitskiy & Brox's (2016) temporal consistency: each frame
starts from the previous result warped along the optical flow (nst_jax.video.flow), and a short-term
temporal loss, (1/D) Σ c·(x − ω(x_prev))², keeps it there wherever the flow is trustworthy.

One compiled loop serves the whole clip: every frame has the same shapes, the temporal target and
weight are arrays (frame 0's mask is all 0), so `jit(chunk)` compiles once. The flow of the next
frame pair is computed on a thread while the current frame optimizes (OpenCV releases the GIL).
Finished frames are written at once into a frames folder (OUT_frames/ beside a video output, or
the output folder itself) with a manifest of the settings; rerunning the same command after
Ctrl-C or a crash resumes at the first missing frame.
"""

import concurrent.futures
import dataclasses
import functools
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

from nst_jax.video import flow, files as video_io
from nst_jax.errors import UserInputError
from nst_jax.config.settings import INT32_MAX, MAX_STEPS, Range

USAGE = ("python -m nst_jax.video IN STYLE [STYLE ...] -o OUT.mp4|OUT_FOLDER [--preset NAME] "
         "[flags] [--temporal-weight X] [--frame-steps N] [--start S] [--duration S] [--every N]")
# The paper's temporal weight for pixels in 0..255 (artistic-videos' -temporal_weight 1e3).
DEFAULT_TEMPORAL_WEIGHT = 1e3
# Image flags that make no sense per frame of a clip (batches, sweeps, intermediate saves...).
REFUSED_FLAGS = ("batch", "sweep_style_weight", "sweep_content_weight", "sweep_seed", "devices",
                 "distributed", "coordinator", "num_processes", "process_id", "estimate_memory",
                 "report", "init_image")


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
    """

    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT
    frame_steps: Optional[int] = None
    frame_init: str = "warped"
    long_term: int = 1
    start: float = 0.0
    duration: Optional[float] = None
    every: int = 1
    fps: Optional[float] = None

    def steps(self, settings, index):
        if index == 0:
            return settings.optimizer.num_steps
        return self.frame_steps or max(1, settings.optimizer.num_steps // 2)


# Each earlier frame costs two flows per frame and an image-sized target in the loop.
MAX_LONG_TERM = 16
VIDEO_RANGES = {"temporal_weight": Range(0), "frame_steps": Range(1, MAX_STEPS),
                "long_term": Range(1, MAX_LONG_TERM),
                "start": Range(0), "duration": Range(0, low_open=True), "every": Range(1, INT32_MAX),
                "fps": Range(0, 1000, low_open=True)}


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


@dataclasses.dataclass
class ClipResult:
    frames_done: int  # finished frames, counting those of earlier (resumed) runs
    frames_total: int
    interrupted: bool
    seconds: float


@functools.lru_cache(maxsize=None)
def _content_program(objective):
    """The content targets of one frame, as one compiled program for the whole clip."""
    from nst_jax.loss.objective import content_targets
    return jax.jit(functools.partial(content_targets, objective))


def output_warping_error(frames, motions):
    """Mean over consecutive frame pairs of Σ c·(out_t − ω(out_{t−1}))² / Σ c (c from the input's flow).

    frames: stylized RGB frames; motions[t]: flow.Motion from input frame t−1 to t (t ≥ 1).
    """
    errors = []
    for t in range(1, len(frames)):
        warped = flow.warp(frames[t - 1], motions[t].backward)
        mask = motions[t].mask[..., None]
        errors.append(float(np.sum(mask * np.square(frames[t] - warped))
                            / max(1.0, np.sum(mask) * frames[t].shape[-1])))
    return float(np.mean(errors))


def stylize_frames(frames, styles, settings, video, params, convention, *, first_index=0,
                   recent_pixels=(), on_frame=None, on_visit=None, intervals=()):
    """Stylize frames[first_index:] in order, calling on_frame(FrameResult) as each one finishes.

    Args:
      frames: RGB frames in [0, 1], all of one size (the working size).
      styles: RGB style images (blended with settings.image.style_blend_weights).
      recent_pixels: when resuming, the optimized pixels of frames first_index − 1, − 2, …
        (nearest first, video.long_term of them or as many as there are).
      on_frame: called with each finished frame (write it there); may raise KeyboardInterrupt.
      on_visit: called (frame index, step, steps, terms) at host visits; raising KeyboardInterrupt
        there stops the run without finishing the frame.

    Returns (frames finished in this call, interrupted). One compile of the loop for the clip.
    """
    from nst_jax.engine.stylize import prepare_params
    from nst_jax.loss.objective import Objective, loss_weights
    from nst_jax.engine.optimize import OptimizerSpec, chunk_program, run_loop, state_program
    from nst_jax.engine.stages import finish_image, initial_pixels, prepare_images, targets

    objective = Objective.from_settings(settings, convention)
    params = prepare_params(params, objective)
    spec = OptimizerSpec.from_settings(settings)
    chunk_fn, new_state = chunk_program(objective, spec, False), state_program(spec, False)
    content_program = _content_program(objective)
    # The style target once for the clip (luminance mode matches it to the first frame).
    _, first_pixels, style_pixels = prepare_images(frames[0], styles, settings)
    blend = np.asarray(settings.image.style_blend_weights or (1.0,) * len(styles), np.float32)
    _, _, style_target = targets(objective, params, jax.device_put(first_pixels),
                                 jax.device_put(style_pixels), jax.device_put(blend / blend.sum()))
    weights = jax.device_put({**loss_weights(settings.loss.content_weight, settings.loss.style_weight,
                                             settings.loss.tv_weight),
                              "temporal": np.float32(video.temporal_weight)})
    look_back = video.long_term
    history = [np.asarray(p, np.float32) for p in recent_pixels][:look_back]  # nearest first

    def frame_pixels(index):
        rgb, pixels, _ = prepare_images(frames[index], [], settings)
        return rgb, pixels

    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        def motions_of(index):  # flows from frames index − 1, − 2, … to index, on the thread
            return pool.submit(lambda: [flow.motion(frames[index - j], frames[index])
                                        for j in range(1, min(look_back, index) + 1)])

        upcoming = motions_of(first_index) if first_index > 0 else None
        for index in range(first_index, len(frames)):
            began = time.perf_counter()
            content_rgb, content_pixels = frame_pixels(index)
            own_start = np.asarray(initial_pixels(settings, convention, content_pixels))
            # K earlier frames warped onto this one and their weights; zeros where there is no
            # earlier frame (frame 0 too), so every frame has the same shapes: one compile.
            previous = np.zeros((look_back,) + own_start.shape, np.float32)
            masks = np.zeros((look_back,) + own_start.shape[:2], np.float32)
            start = own_start
            if index > 0:
                motions = upcoming.result()
                for j, (motion, mask) in enumerate(zip(motions, flow.long_term_masks(
                        [m.mask for m in motions]))):
                    previous[j] = flow.warp(history[j], motion.backward).reshape(own_start.shape)
                    masks[j] = mask
                if video.frame_init == "warped":
                    start = flow.warped_start(history[0], motions[0], own_start)
            if index + 1 < len(frames):
                upcoming = motions_of(index + 1)  # computed while this frame optimizes
            frame_targets = {"content": content_program(params, jax.device_put(content_pixels)),
                             "style": style_target,
                             "temporal": {"previous": jax.device_put(previous),
                                          "mask": jax.device_put(masks)}}
            pixels = jax.device_put(start.astype(np.float32))
            steps = video.steps(settings, index)

            def visit(step, current, terms, index=index, steps=steps):
                if on_visit is not None:
                    on_visit(index, step, steps, terms)

            run = run_loop(chunk_fn, pixels, new_state(pixels), steps,
                           (params, frame_targets, weights), intervals, visit)
            if run.interrupted:
                return done, True
            optimized = np.asarray(run.pixels)
            if not spec.projects_pixels:  # L-BFGS runs unconstrained: clip, as at the end of a run
                optimized = np.clip(optimized, 0.0, settings.loss.pixel_range)
            history = [optimized] + history[: look_back - 1]
            temporal = video.temporal_weight * float(
                np.sum(masks[..., None] * np.square(optimized - previous)) / optimized.size)
            result = FrameResult(index, finish_image(optimized, content_rgb, settings), optimized,
                                 run.steps_done, float(run.loss), time.perf_counter() - began,
                                 temporal)
            done += 1
            if on_frame is not None:
                on_frame(result)
    return done, False


# --- the command line ----------------------------------------------------------------------

def build_parser():
    """nst_jax.cli.run's parser (every image flag, same checks) plus the video flags."""
    from nst_jax.cli.run import _number, build_parser as build_image_parser
    parser = build_image_parser()
    parser.prog, parser.usage = "python -m nst_jax.video", USAGE
    for action in parser._actions:  # the positionals and -o mean other things here
        if action.dest == "content":
            action.metavar, action.help = "IN", "input video file, or a folder of frames (sorted by name)"
        elif action.dest == "output":
            action.default = "out.mp4"
            action.help = ("output video (.mp4, .mov, .mkv: H.264, the input's rate, size and audio) "
                           "or, for any other name, a folder of PNG frames; default: out.mp4")
    parser.description = ("Neural style transfer for videos with temporal consistency (Ruder et al. "
                          "2016). IN is a video file or a folder of frames; OUT a video (.mp4, .mov, "
                          ".mkv) or a folder of PNG frames. Image flags as in nst_jax.cli.run.")
    group = parser.add_argument_group("video")
    group.add_argument("--temporal-weight", type=_number(float), metavar="X",
                       help=f"weight of the short-term temporal loss, 0: none "
                            f"({VIDEO_RANGES['temporal_weight']}) [{DEFAULT_TEMPORAL_WEIGHT:g}]")
    group.add_argument("--frame-steps", type=_number(int), metavar="N",
                       help=f"steps for every frame after the first, which gets --num-steps "
                            f"({VIDEO_RANGES['frame_steps']}) [half of --num-steps]")
    group.add_argument("--frame-init", choices=("warped", "independent"),
                       help="start each frame from the previous result warped along the flow, or "
                            "from --init as a single image would [warped]")
    group.add_argument("--long-term", type=_number(int), metavar="K",
                       help=f"the temporal loss looks back at K earlier frames (Ruder et al.'s "
                            f"long-term loss; 1: short-term only; {VIDEO_RANGES['long_term']}) [1]")
    group.add_argument("--start", type=_number(float), metavar="SECONDS",
                       help=f"first second of the input to stylize ({VIDEO_RANGES['start']}) [0]")
    group.add_argument("--duration", type=_number(float), metavar="SECONDS",
                       help=f"seconds of the input to stylize ({VIDEO_RANGES['duration']}) [to the end]")
    group.add_argument("--every", type=_number(int), metavar="N",
                       help=f"stylize every Nth frame; the output's rate is divided by N "
                            f"({VIDEO_RANGES['every']}) [1]")
    group.add_argument("--fps", type=_number(float), metavar="X",
                       help=f"frame rate of a folder of frames ({VIDEO_RANGES['fps']}) [25]")
    group.add_argument("--keep-frames", action="store_true",
                       help="keep the OUT_frames folder after encoding a video output")
    return parser


def _strip_flags(argv, flags, switches):
    """argv without the given flags (and their values): what nst_jax.cli.run's parser should see."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--":
            kept.append(arg)
        elif arg in switches or arg.split("=", 1)[0] in flags:
            skip = arg in flags  # "--flag value"; "--flag=value" is one token
        else:
            kept.append(arg)
    return kept


def parse_and_validate(argv=None):
    """Flags -> (args, Settings, VideoSettings), every value checked; one-line UserInputError."""
    from nst_jax.cli import run
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    argv = run._keep_negative_values(parser, argv)
    args = parser.parse_args(argv)  # unknown flags and bad values of any flag, with "did you mean"
    for name in REFUSED_FLAGS:
        if getattr(args, name) not in (None, False):
            raise UserInputError(f"--{name.replace('_', '-')}: not available for videos")
    values = {name: getattr(args, name) for name in VIDEO_RANGES}
    for name, value in values.items():
        if value is not None:
            VIDEO_RANGES[name].check(name.replace("_", "-"), value,
                                     whole=name in ("frame_steps", "every", "long_term"))
    video_flags = {"--" + name.replace("_", "-") for name in list(VIDEO_RANGES) + ["frame_init"]}
    _, settings, _ = run.parse_and_validate(_strip_flags(argv, video_flags, {"--keep-frames"}))
    if settings.image.scales > 1:
        raise UserInputError("--scales: not available for videos (each frame runs at --image-size)")
    if settings.output.save_every:
        raise UserInputError("--save-every: not available for videos (every frame is saved)")
    video = VideoSettings(**{k: v for k, v in values.items() if v is not None},
                          **({"frame_init": args.frame_init} if args.frame_init else {}))
    return args, settings, video


def _format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _manifest(args, clip, settings, video, params_metadata):
    """What must match for a rerun to continue a frames folder (progress flags do not count)."""
    image_settings = {k: v for k, v in settings.to_dict().items() if k not in ("print_every", "save_every")}
    video_settings = {k: v for k, v in dataclasses.asdict(video).items()}
    return {"input": os.path.abspath(args.content), "input_bytes": _size_of(args.content),
            "styles": [os.path.abspath(p) for p in args.styles], "frames": len(clip.frames),
            "shape": list(clip.frames[0].shape[:2]), "settings": image_settings, "video": video_settings,
            "weights_hash": params_metadata.source_hash}


def _size_of(path):
    if os.path.isdir(path):
        return sum(p.stat().st_size for p in os.scandir(path) if p.is_file())
    return os.path.getsize(path)


def stylize_video_files(args, settings, video, load_weights, stream=None, on_frame=None):
    """The CLI's run: check, read, stylize with progress, write frames as they finish, encode.

    Returns a ClipResult. Raises UserInputError (one line) before any compute for unusable
    inputs or outputs. Ctrl-C stops at the next host visit: finished frames stay on disk.
    """
    from nst_jax.imaging import images
    from nst_jax.cli.files import ctrl_c_at_visits, run_description
    stream = stream or sys.stderr
    output = args.output
    video_io.check_video_output(output)
    flow.require_cv2()
    clip = video_io.read_clip(args.content, settings.image.image_size, video.start, video.duration,
                              video.every, video.fps)
    styles = [images.load_image(path) for path in args.styles]
    params, params_metadata = load_weights()
    store = video_io.FrameStore(video_io.frames_folder(output), len(clip.frames),
                                _manifest(args, clip, settings, video, params_metadata),
                                keep=video.long_term)
    first = store.open()
    total = len(clip.frames)
    describe = run_description(args.content, args.styles, settings, params_metadata)
    began, finished_times = time.perf_counter(), []
    if params_metadata.synthetic:
        print("warning: these VGG-19 weights are synthetic random values (for tests); "
              "the picture will not be art", file=stream)
    if first:
        print(f"resuming: {first} of {total} frames already in {store.folder}", file=stream)
    recent = []
    if 0 < first < total:
        recent = store.resume_pixels(first)
        for back, pixels in enumerate(recent):
            if pixels is None:  # not kept (a crash between two writes): from its PNG, 8 bits
                index = first - 1 - back
                recent[back] = _pixels_from_image(images.load_image(store.path(index)), settings)
                store.remember(index, recent[back])

    def write_frame(result):
        store.write(result.index, result.image, result.pixels,
                    describe(frame=result.index + 1, steps=result.steps))
        finished_times.append(result.seconds)
        left = total - result.index - 1
        later = finished_times[1:] if len(finished_times) > 1 else None
        per_frame = np.mean(later) if later else finished_times[0] * video.steps(settings, 1) / max(
            1, video.steps(settings, result.index))
        print(f"frame {result.index + 1}/{total}: {result.steps} steps, loss {result.loss:.4g} "
              f"(temporal {result.temporal:.3g}), "
              f"{result.seconds:.1f} s; clip {result.index + 1}/{total} frames, "
              f"eta {_format_seconds(left * per_frame)}", file=stream, flush=True)
        if on_frame is not None:
            on_frame(result)

    interrupted = False
    if first < total:
        with ctrl_c_at_visits() as ctrl_c:
            def on_visit(index, step, steps, terms):
                if ctrl_c.requested and step < steps:
                    raise KeyboardInterrupt  # the unfinished frame is dropped; the rest are on disk
                if settings.output.print_every and step % settings.output.print_every == 0 and step < steps:
                    print(f"frame {index + 1}/{total}: step {step}/{steps}, loss "
                          f"{float(terms['total']):.4g}", file=stream, flush=True)

            def write_then_check(result):
                write_frame(result)
                if ctrl_c.requested:  # stop between frames rather than one chunk into the next
                    raise KeyboardInterrupt

            try:
                _, interrupted = stylize_frames(
                    clip.frames, styles, settings, video, params, params_metadata.preprocessing,
                    first_index=first, recent_pixels=recent, on_frame=write_then_check,
                    on_visit=on_visit, intervals=(settings.output.print_every, 10))
            except KeyboardInterrupt:
                interrupted = True
            interrupted = interrupted or ctrl_c.requested
    done = next((i for i in range(total) if not store.path(i).exists()), total)
    if interrupted or done < total:
        print(f"interrupted: {done} of {total} frames are in {store.folder}; run the same command "
              f"again to continue", file=stream)
        return ClipResult(done, total, True, time.perf_counter() - began)
    if video_io.is_video_path(output):
        video_io.encode_video(output, store.frames(), clip.fps, clip.source_size,
                              audio_source=clip.source if clip.audio else None,
                              start=clip.start, end=clip.end)
        store.finish()
        if not args.keep_frames:
            _remove_frames(store)
    else:
        store.finish()
    print(f"done: {total} frames in {time.perf_counter() - began:.1f} s; wrote {output}", file=stream)
    return ClipResult(total, total, False, time.perf_counter() - began)


def _pixels_from_image(rgb, settings):
    from nst_jax.imaging import color
    if settings.image.original_colors == "luminance":
        rgb = np.asarray(color.luminance(rgb))[..., None]
    return np.asarray(rgb, np.float32) * np.float32(settings.loss.pixel_range)


def _remove_frames(store):
    for index in range(store.count):
        store.path(index).unlink(missing_ok=True)
    (store.folder / video_io.MANIFEST).unlink(missing_ok=True)
    try:
        store.folder.rmdir()
    except OSError:  # something else lives there: leave it
        pass


def main(argv=None, on_frame: Optional[Callable] = None):
    from nst_jax.cache import enable_compile_cache
    try:
        args, settings, video = parse_and_validate(argv)
        if not args.no_compile_cache:
            enable_compile_cache()
        from nst_jax.cli.run import load_weights
        result = stylize_video_files(args, settings, video,
                                     lambda: load_weights(args.weights, args.preprocessing),
                                     on_frame=on_frame)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished frames are kept", file=sys.stderr)
        return 130
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
