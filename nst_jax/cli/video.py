"""python -m nst_jax.video IN STYLE [STYLE ...] -o OUT.mp4 [image flags] [video flags]

The video command: flags (the image command's, plus the video ones) -> Settings and
VideoSettings, then read the clip, stylize its frames (nst_jax.video.transfer.stylize_frames),
write each finished frame at once into a frames folder with a manifest, and encode. Rerunning
the same command after Ctrl-C or a crash resumes at the first missing frame.
"""

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple, cast

import numpy as np

from nst_jax.cache import enable_compile_cache
from nst_jax.cli import run
from nst_jax.cli.files import refuse_undersized, run_description
from nst_jax.cli.regions import frame_guides, load_regions
from nst_jax.cli.flags import add_field_flag, keep_negative_values, same_path
from nst_jax.cli.interrupt import ctrl_c_at_visits, exit_status
from nst_jax.cli.preview import preview_session, run_title
from nst_jax.cli.run import Command, build_parser as build_image_parser, require_pictures
from nst_jax.config.settings import INITS, Settings, flag
from nst_jax.engine.optimize import StopRun
from nst_jax.engine.plan import check_fits, plan_run
from nst_jax.engine.regions import Regions
from nst_jax.engine.stages import InputShapes
from nst_jax.engine.timings import format_seconds
from nst_jax.errors import UserInputError
from nst_jax.imaging import color, images
from nst_jax.preview.live import LiveRun
from nst_jax.video import files as video_io
from nst_jax.video import flow
from nst_jax.video.transfer import (FRAME_INITS, VIDEO_HELP, VIDEO_METAVARS, VIDEO_RANGES, FrameOptions, FrameResult,
                                    VideoSettings, stylize_frames)
from nst_jax.weights.fetch import load_weights
from nst_jax.weights.params_file import Model, Params, ParamsMetadata

USAGE = ("python -m nst_jax.video IN STYLE [STYLE ...] -o OUT.mp4|OUT_FOLDER [--preset NAME] "
         "[flags] [--temporal-weight X] [--frame-steps N] [--start S] [--duration S] [--every N]")
# Image flags that make no sense per frame of a clip (batches, sweeps, intermediate saves...).
REFUSED_FLAGS = ("batch", "sweep_style_weight", "sweep_content_weight", "sweep_seed", "devices", "shard",
                 "distributed", "coordinator", "num_processes", "process_id", "estimate_memory",
                 "report", "init_image", "checkpoint_every", "keep_checkpoint")  # a clip resumes by frames
# Refused after parsing, by the settings they make (`parse_and_validate`); kept out of --help too.
REFUSED_SETTINGS = ("scales", "save_every")


@dataclasses.dataclass
class ClipResult:
    frames_done: int  # finished frames, counting those of earlier (resumed) runs
    frames_total: int
    interrupted: bool
    seconds: float



VIDEO_COMMAND = Command(
    prog="python -m nst_jax.video", usage=USAGE,
    description=("Neural style transfer for videos with temporal consistency (Ruder et al. 2016). IN is a "
                 "video file or a folder of frames; OUT a video (.mp4, .mov, .mkv) or a folder of PNG "
                 "frames. Image flags as in python -m nst_jax.run."),
    content=("IN", "input video file, or a folder of frames (sorted by name)"),
    output=("out.mp4", "output video (.mp4, .mov, .mkv: H.264, the input's rate, size and audio) or, for "
                       "any other name, a folder of PNG frames; default: out.mp4"),
    hidden=REFUSED_FLAGS + REFUSED_SETTINGS,
    # A start image file is an image's, not a clip's.
    field_help=(("init", "start image: the content, noise around the mean color, or flat gray"),),
    choices=(("init", tuple(choice for choice in INITS if choice != "image")),),
    precompiles=False)


def _clip_regions(settings: Settings, video: VideoSettings, clip: video_io.Clip,
                  styles: int) -> Tuple[Optional[Regions], Optional[List[np.ndarray]]]:
    """The clip's Regions and, for a folder of per-frame maps or masks (one per input frame,
    selected as the frames are), each frame's guides."""
    path = settings.regions.mask or settings.regions.content_seg
    if path is None or not os.path.isdir(path):
        return load_regions(settings, styles), None
    option = "--mask" if settings.regions.mask is not None else "--content-seg"
    maps = video_io.read_clip(path, settings.image.image_size, video.start, video.duration, video.every,
                              float(clip.fps * video.every))
    if len(maps.frames) != len(clip.frames):
        raise UserInputError(f"{option} {path}: {len(maps.frames)} maps for the {len(clip.frames)} frames stylized "
                             f"(one map per input frame, selected as the frames are)")
    return load_regions(settings, styles, maps.frames[0]), frame_guides(settings, maps.frames)


def build_parser() -> argparse.ArgumentParser:
    """The image command's parser (every image flag, same checks) plus the video flags, made from
    VideoSettings' fields."""
    parser = build_image_parser(VIDEO_COMMAND)
    group = parser.add_argument_group("video")
    defaults = VideoSettings()
    for field in dataclasses.fields(VideoSettings):
        add_field_flag(group, field.name, field, getattr(defaults, field.name), VIDEO_HELP[field.name],
                       VIDEO_RANGES.get(field.name), FRAME_INITS if field.name == "frame_init" else None,
                       metavar=VIDEO_METAVARS.get(field.name))
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


def parse_and_validate(argv: Optional[Sequence[Any]] = None) -> Tuple[argparse.Namespace, Settings, VideoSettings]:
    """Flags -> (args, Settings, VideoSettings), every value checked; one-line UserInputError."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    argv = keep_negative_values(parser, argv)
    args = parser.parse_args(argv)  # unknown flags and bad values of any flag, with "did you mean"
    require_pictures(parser, args)
    for name in REFUSED_FLAGS:
        if getattr(args, name) not in (None, False):
            raise UserInputError(f"--{name.replace('_', '-')}: not available for videos")
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(VideoSettings)
             if getattr(args, field.name) is not None}
    video = VideoSettings(**given)  # checks its values: one line naming the flag
    video_flags = {"--" + flag(field.name) for field in dataclasses.fields(VideoSettings)}
    _, settings, _ = run.parse_and_validate(_strip_flags(argv, video_flags, {"--keep-frames"}))
    if video_io.is_video_path(args.output) and same_path(video_io.frames_folder(args.output), args.content):
        raise UserInputError(f"-o {args.output}: its frames folder {video_io.frames_folder(args.output)} is the "
                             f"input folder; name the output otherwise")
    if settings.image.scales > 1:
        raise UserInputError("--scales: not available for videos (each frame runs at --image-size)")
    if settings.output.save_every:
        raise UserInputError("--save-every: not available for videos (every frame is saved)")
    return args, settings, video


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


def stylize_video_files(args: argparse.Namespace, settings: Settings, video: VideoSettings,
                        load_weights: Callable[[], Tuple[Params, ParamsMetadata]], stream: Optional[TextIO] = None,
                        on_frame: Optional[Callable[[FrameResult], None]] = None,
                        preview: Optional[LiveRun] = None) -> ClipResult:
    """The CLI's run: check, read, stylize with progress, write frames as they finish, encode.

    preview: a LiveRun (--preview) to show the clip in: the current frame as it optimizes, the
    finished ones, progress and the end.

    Returns a ClipResult. Raises UserInputError (one line) before any compute for unusable
    inputs or outputs. Ctrl-C stops at the next host visit: finished frames stay on disk.
    """
    stream = stream or sys.stderr
    output = args.output
    video_io.check_video_output(output)
    flow.require_cv2()
    clip = video_io.read_clip(args.content, settings.image.image_size, video.start, video.duration,
                              video.every, video.fps)
    styles = [images.load_image(path) for path in args.styles]
    regions, per_frame = _clip_regions(settings, video, clip, len(styles))
    # Frames are read at the working size already; the content's check is on that size.
    inputs = InputShapes.of(clip.frames[0], styles, 0 if regions is None else regions.count)
    refuse_undersized(settings, inputs, args.content, args.styles, long_side=settings.image.image_size)
    plan = plan_run(settings, inputs)  # "auto" resolved for the clip; the manifest keeps the request
    check_fits(plan)
    params, params_metadata = load_weights()
    store = video_io.FrameStore(video_io.frames_folder(output), len(clip.frames),
                                _manifest(args, clip, settings, video, params_metadata),
                                keep=video.long_term)
    first = store.open()
    total = len(clip.frames)
    describe = run_description(args.content, args.styles, plan.settings, params_metadata)  # what ran
    began, finished_times = time.perf_counter(), []
    clip_eta: List[Tuple[float, float]] = []  # (when, seconds left) at the latest finished frame
    if preview is not None:
        preview.describe([""], {"output": output, **plan.settings.to_dict(), **dataclasses.asdict(video)},
                         kind="video", total=video.steps(plan.settings, first), frames=len(clip.frames))

    def show(visit):  # a visit on the --preview page: the frame's progress, its image made off the step
        live = cast(LiveRun, preview)
        if live.frame != visit.index:
            live.begin_frame(visit.index)
        left = None
        if clip_eta:
            when, seconds = clip_eta[-1]
            left = max(0.0, seconds - (time.perf_counter() - when))
        live.progress(visit.step, visit.steps, visit.terms, seconds_left=left)
        live.offer_images(visit.step, lambda: [visit.image()])
    if params_metadata.synthetic:
        print("warning: these VGG-19 weights are synthetic random values (for tests); "
              "the picture will not be art", file=stream)
    if first:
        print(f"resuming: {first} of {total} frames already in {store.folder}", file=stream)
    recent: List[np.ndarray] = []  # frames first - 1, first - 2, ...: every one filled in
    if 0 < first < total:
        for back, pixels in enumerate(store.resume_pixels(first)):
            if pixels is None:  # not kept (a crash between two writes): from its PNG, 8 bits
                index = first - 1 - back
                pixels = _pixels_from_image(images.load_image(store.path(index)), settings)
                store.remember(index, pixels)
            recent.append(pixels)

    def write_frame(result):
        store.write(result.index, result.image, result.pixels,
                    describe(frame=result.index + 1, steps=result.steps))
        finished_times.append(result.seconds)
        left = total - result.index - 1
        later = finished_times[1:] if len(finished_times) > 1 else None
        per_frame = np.mean(later) if later else finished_times[0] * video.steps(settings, 1) / max(
            1, video.steps(settings, result.index))
        clip_eta.append((time.perf_counter(), left * per_frame))
        if preview is not None:
            preview.finish_frame(result.index, result.image)
        print(f"frame {result.index + 1}/{total}: {result.steps} steps, loss {result.loss:.4g} "
              f"(temporal {result.temporal:.3g}), "
              f"{result.seconds:.1f} s; clip {result.index + 1}/{total} frames, "
              f"eta {format_seconds(left * per_frame)}", file=stream, flush=True)
        if on_frame is not None:
            on_frame(result)

    interrupted = False
    if first < total:
        with ctrl_c_at_visits() as ctrl_c:
            def on_visit(visit):
                if ctrl_c.requested and visit.step < visit.steps:
                    raise KeyboardInterrupt  # the unfinished frame is dropped; the rest are on disk
                if preview is not None:
                    show(visit)
                print_every = settings.output.print_every
                if print_every and visit.step % print_every == 0 and visit.step < visit.steps:
                    print(f"frame {visit.index + 1}/{total}: step {visit.step}/{visit.steps}, loss "
                          f"{float(visit.terms['total']):.4g}", file=stream, flush=True)

            def write_then_check(result):
                write_frame(result)
                if ctrl_c.requested:  # stop between frames rather than one chunk into the next
                    raise StopRun

            try:
                _, interrupted = stylize_frames(
                    clip.frames, styles, plan.settings, video, Model(params, params_metadata.preprocessing),
                    FrameOptions(first_index=first, recent_pixels=recent, on_frame=write_then_check,
                                 on_visit=on_visit, intervals=(settings.output.print_every, 10), regions=regions,
                                 frame_guides=per_frame))
            except StopRun:
                interrupted = True
            interrupted = interrupted or ctrl_c.requested
    done = next((i for i in range(total) if not store.path(i).exists()), total)
    if interrupted or done < total:
        line = (f"interrupted: {done} of {total} frames are in {store.folder}; run the same command "
                f"again to continue")
        print(line, file=stream)
        if preview is not None:
            preview.end("interrupted", line)
        return ClipResult(done, total, True, time.perf_counter() - began)
    if video_io.is_video_path(output):
        video_io.encode_video(output, store.frames(), clip.fps, clip.source_size,
                              audio_source=clip.source if clip.audio else None,
                              start=clip.origin + clip.start, end=None if clip.end is None else clip.origin + clip.end)
        store.finish()
        if not args.keep_frames:
            _remove_frames(store)
    else:
        store.finish()
    line = f"done: {total} frames in {time.perf_counter() - began:.1f} s; wrote {output}"
    print(line, file=stream)
    if preview is not None:
        preview.end("done", line)
    return ClipResult(total, total, False, time.perf_counter() - began)


def _pixels_from_image(rgb, settings):
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


def main(argv: Optional[Sequence[Any]] = None, on_frame: Optional[Callable[[FrameResult], None]] = None) -> int:
    return exit_status(lambda: _run(argv, on_frame), "interrupted; finished frames are kept")


def _run(argv: Optional[Sequence[Any]], on_frame: Optional[Callable[[FrameResult], None]]) -> ClipResult:
    """The video command: parse, then stylize the clip's frames."""
    args, settings, video = parse_and_validate(argv)
    if not args.no_compile_cache:
        enable_compile_cache()
    # Bound before the clip is read: a port in use ends the run here.
    with preview_session(args.preview, run_title(args.content, args.styles)) as live:
        return stylize_video_files(args, settings, video, lambda: load_weights(args.weights, args.preprocessing),
                                   on_frame=on_frame, preview=live)

if __name__ == "__main__":
    sys.exit(main())
