"""Video files and frame folders <-> lists of RGB frames, and the folder finished frames go to.

Reading and encoding go through PyAV (its wheels bundle ffmpeg); frames are float32 RGB
(H, W, 3) in [0, 1] like every image in nst_jax. Encoding writes a hidden temporary file beside
the output and renames it: a video appears complete or not at all.
"""

import contextlib
import dataclasses
import json
import os
import sys
import types
from fractions import Fraction
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from nst_jax.imaging import images
from nst_jax.atomic import PathLike, atomic_path, atomic_write, check_writable, write_text
from nst_jax.errors import UserInputError, reason

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# Output names that ask for a video or an image nst-jax does not write: refused, where any other
# name is a folder of PNG frames (`-o out.webm` made a folder named out.webm).
REFUSED_OUTPUT_EXTENSIONS = (".webm", ".avi", ".m4v", ".wmv", ".flv", ".gif", ".mpg", ".mpeg", ".ts", ".m2ts",
                             ".3gp", ".ogv", *FRAME_EXTENSIONS)
MANIFEST = "nst-jax-video.json"
RESUME = "resume.npz"  # the last finished frame's optimized pixels (the next frame warps them)


def require_av() -> types.ModuleType:
    """PyAV, or one line telling how to get it (it is an optional dependency)."""
    try:
        import av
    except ImportError:
        raise UserInputError("videos need PyAV and OpenCV: pip install 'nst-jax[video]'") from None
    return av


def is_video_path(path: PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass
class Clip:
    """The frames of a video (or frame folder) that a run stylizes, and how to encode them back.

    frames: float32 RGB (H, W, 3) in [0, 1], already at the working size.
    fps: frames per second of the selection (the source's rate ÷ --every).
    source_size: (width, height) of the source frames (a video output keeps it).
    audio: whether the source has an audio stream (remuxed into a video output).
    start, end: the selection's time span, seconds from the source's first frame.
    origin: the source's time of its first frame (a capture or a cut clip may start at 10 s):
      the audio is trimmed from origin + start to origin + end.
    """

    source: str
    frames: list
    fps: Fraction
    source_size: tuple
    audio: bool = False
    start: float = 0.0
    end: Optional[float] = None
    origin: float = 0.0


def _select(times, start, duration, every):
    """Indices of the frames at `times` (seconds) inside [start, start + duration), every Nth."""
    end = None if duration is None else start + duration
    chosen = [i for i, t in enumerate(times) if t >= start - 1e-6 and (end is None or t < end - 1e-6)]
    return chosen[::every]


def _range_error(path, length, start, duration):
    flag = "--start" if start >= length or duration is None else "--duration"
    span = f"from {start:g} s" + ("" if duration is None else f" for {duration:g} s")
    return UserInputError(f"{flag}: {path} is {float(length):.3g} s long: no frames {span}")


def read_clip(path: PathLike, long_side: int, start: float = 0.0, duration: Optional[float] = None, every: int = 1,
              fps: Optional[float] = None) -> Clip:
    """The selected frames of a video file or a folder of images, resized to `long_side`.

    Raises UserInputError naming the file or flag: missing, unreadable or empty input, or a
    range (start, duration) holding no frame. `fps` is a frame folder's rate (default 25).
    """
    if os.path.isdir(path):
        return _read_folder(path, long_side, start, duration, every, Fraction(fps or 25))
    if not os.path.exists(path):
        raise UserInputError(f"{path}: no such file")
    av = require_av()
    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UserInputError(f"{path}: not a readable video ({reason(error)})") from None
    with container:
        if not container.streams.video:
            raise UserInputError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        end = None if duration is None else start + duration
        frames, times, count, origin = [], [], 0, None
        try:
            for frame in container.decode(stream):
                seconds = float(frame.time) if frame.time is not None else float(count / rate)
                if origin is None:  # --start and --duration count from the first frame
                    origin = seconds
                seconds -= origin
                count += 1
                if end is not None and seconds >= end - 1e-6:
                    break
                if seconds < start - 1e-6:
                    continue
                times.append(seconds)
                if (len(times) - 1) % every == 0:  # decode all, keep every Nth of the selection
                    rgb = _upright(frame)
                    frames.append(images.resize_long_side(rgb / 255.0, long_side))
                    size = (rgb.shape[1], rgb.shape[0])
        except (av.FFmpegError, OSError, ValueError) as error:
            raise UserInputError(f"{path}: cannot decode the video ({reason(error)})") from None
        if count == 0:
            raise UserInputError(f"{path}: contains no video frames")
        if not frames:
            length = float(stream.duration * stream.time_base) if stream.duration else count / rate
            raise _range_error(path, length, start, duration)
        return Clip(os.fspath(path), frames, rate / every, size, audio=bool(container.streams.audio),
                    start=start, end=end, origin=origin or 0.0)


def _upright(frame: Any) -> np.ndarray:
    """A decoded frame's RGB pixels as players show them: turned by the stream's display matrix
    (a phone's portrait video is stored landscape, tagged to be turned 90°)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4  # counter-clockwise degrees (PyAV >= 14)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _read_folder(path, long_side, start, duration, every, rate):
    files = sorted(p for p in Path(path).iterdir()
                   if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise UserInputError(f"{path}: a folder with no image frames ({', '.join(FRAME_EXTENSIONS)})")
    chosen = _select([i / rate for i in range(len(files))], start, duration, every)
    if not chosen:
        raise _range_error(path, len(files) / rate, start, duration)
    first = images.load_image(files[chosen[0]])
    height, width = images.long_side_shape(first.shape[0], first.shape[1], long_side)
    # One at a time: a folder's full-size frames may not fit in memory together.
    frames = [images.resize_to(first, height, width)] + [
        images.resize_to(_same_shape_frame(files[i], files[chosen[0]], first.shape, (height, width), long_side),
                         height, width)
        for i in chosen[1:]]
    return Clip(os.fspath(path), frames, rate / every, (first.shape[1], first.shape[0]),
                start=start, end=None if duration is None else start + duration)


def _same_shape_frame(path, first_path, first_shape, working_shape, long_side):
    """The frame at `path`, refused if it has another shape than the first (resized to the first's
    working size it would be stretched: most likely a stray image in the folder). Another
    resolution of the same shape is fine: every frame is resized to one working size."""
    frame = images.load_image(path)
    if images.long_side_shape(frame.shape[0], frame.shape[1], long_side) != working_shape:
        raise UserInputError(
            f"{path}: {frame.shape[1]}x{frame.shape[0]} px, another shape than the first frame "
            f"{first_path.name} ({first_shape[1]}x{first_shape[0]} px): a folder's frames must share one shape")
    return frame


def check_video_output(path: PathLike) -> None:
    """Fail before any work if `path` cannot receive a video (or, without a video extension, a
    folder of PNG frames)."""
    directory = os.path.dirname(os.path.abspath(path))
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension in REFUSED_OUTPUT_EXTENSIONS:
        raise UserInputError(f"{path}: nst-jax writes videos as {', '.join(VIDEO_EXTENSIONS)}, or a folder of PNG "
                             f"frames for a name without a format's extension; not {extension}")
    if is_video_path(path):
        if os.path.isdir(path):
            raise UserInputError(f"{path}: is a directory; name a video file such as "
                                 f"{os.path.join(path, 'out.mp4')}")
    elif os.path.exists(path) and not os.path.isdir(path):
        raise UserInputError(f"{path}: exists and is not a folder; the output is a video "
                             f"({', '.join(VIDEO_EXTENSIONS)}) or a folder of PNG frames")
    if not os.path.isdir(directory):
        raise UserInputError(f"{path}: cannot write there: {directory} does not exist")
    try:
        check_writable(path)
    except OSError as error:
        raise UserInputError(f"{path}: cannot write in {directory} ({reason(error)})") from None


def frames_folder(output_path: PathLike) -> Path:
    """Where finished frames go: the output itself for a PNG-folder output, else OUT_frames."""
    if not is_video_path(output_path):
        return Path(output_path)
    stem, _ = os.path.splitext(os.fspath(output_path))
    return Path(stem + "_frames")


class FrameStore:
    """The folder of finished frames: PNGs written as they finish, a manifest of the settings
    that made them, and the last frame's optimized pixels, so an interrupted run resumes."""

    def __init__(self, folder: PathLike, count: int, manifest: Mapping[str, Any], keep: int = 1) -> None:
        # As JSON gives it back (tuples become lists), so a rerun's manifest compares equal.
        self.folder, self.count = Path(folder), count
        self.manifest = json.loads(json.dumps(manifest))
        self.keep = keep  # how many recent frames' pixels a resumed run needs (--long-term)
        self._recent: List[Tuple[int, np.ndarray]] = []  # [(index, pixels)], newest first
        self.digits = max(5, len(str(count)))

    def path(self, index: int) -> Path:
        return self.folder / f"frame_{index + 1:0{self.digits}d}.png"

    def open(self) -> int:
        """Create the folder, or check that its frames were made by the same settings.

        Returns the index of the first missing frame (0 for a fresh run). Raises
        UserInputError naming the folder when the settings differ.
        """
        self.folder.mkdir(exist_ok=True)
        manifest_path = self.folder / MANIFEST
        if manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                previous = None
            if previous != self.manifest:
                differ = sorted(self._differences(previous or {}, self.manifest))
                raise UserInputError(
                    f"{self.folder}: holds frames made with other settings "
                    f"({', '.join(differ[:4]) or 'unreadable manifest'}); delete it or choose "
                    f"another -o to start afresh")
        elif any(self.folder.glob("frame_*.png")):
            raise UserInputError(f"{self.folder}: holds frames this program did not make; "
                                 f"delete them or choose another -o")
        else:
            write_text(manifest_path, json.dumps(self.manifest, indent=1))
        return next((i for i in range(self.count) if not self.path(i).exists()), self.count)

    @staticmethod
    def _differences(old, new, prefix=""):
        for key in set(old) | set(new):
            a, b = old.get(key), new.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                yield from FrameStore._differences(a, b, f"{prefix}{key}.")
            elif a != b:
                yield prefix + key

    def write(self, index: int, rgb: np.ndarray, pixels: npt.ArrayLike,
              metadata: Optional[Mapping[str, str]] = None) -> None:
        """Frame `index` (RGB in [0, 1]) as PNG, then the recent frames' pixels for later
        frames to warp (the PNG first: a crash between the two loses nothing but precision)."""
        images.save_image(self.path(index), rgb, metadata)
        self._recent = [(index, np.asarray(pixels, np.float32))] + [
            entry for entry in self._recent if entry[0] < index][: self.keep - 1]
        with atomic_write(self.folder / RESUME) as stream:
            np.savez(stream, indices=np.array([i for i, _ in self._recent], np.int64),
                     pixels=np.stack([p for _, p in self._recent]))

    def resume_pixels(self, first: int) -> List[Optional[np.ndarray]]:
        """The optimized pixels of frames first−1, first−2, … (up to `keep`, nearest first), each
        None where it was not kept."""
        saved = {}
        try:
            with np.load(self.folder / RESUME) as stored:
                saved = dict(zip(stored["indices"].tolist(), np.array(stored["pixels"])))
        except (OSError, ValueError, KeyError):
            pass
        wanted = range(first - 1, max(-1, first - 1 - self.keep), -1)
        recent = [(i, saved.get(i)) for i in wanted]
        self._recent = [(i, p) for i, p in recent if p is not None]
        return [p for _, p in recent]

    def remember(self, index: int, pixels: np.ndarray) -> None:
        """Pixels of a finished frame recovered elsewhere (its PNG), kept for the next writes."""
        self._recent = sorted(self._recent + [(index, pixels)], key=lambda entry: -entry[0])

    def finish(self) -> None:
        """The clip is done: the resume state is no longer needed."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / RESUME).unlink()

    def frames(self) -> List[np.ndarray]:
        return [images.load_image(self.path(i)) for i in range(self.count)]


def even_size(width: int, height: int) -> Tuple[int, int]:
    """H.264 in yuv420p needs even sides: round down (never below 2)."""
    return max(2, width - width % 2), max(2, height - height % 2)


def encode_video(output_path: PathLike, frames: Sequence[np.ndarray], fps: Union[Fraction, float],
                 size: Tuple[int, int], audio_source: Optional[PathLike] = None, start: float = 0.0,
                 end: Optional[float] = None) -> None:
    """Encode RGB frames (each resized to size = (width, height)) as H.264, atomically.

    With `audio_source`, its first audio stream's packets in [start, end) are copied in, shifted
    to start at 0 (no re-encoding). An audio stream the container cannot hold is left out with
    a warning rather than failing the video.
    """
    av = require_av()
    width, height = even_size(*size)
    extension = os.path.splitext(output_path)[1].lower()
    try:
        # The container is closed (ExitStack) before the file is renamed to output_path.
        with atomic_path(output_path, extension) as temporary, contextlib.ExitStack() as stack:
            container = stack.enter_context(av.open(temporary, "w"))
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            audio_in = audio_out = None
            if audio_source is not None:
                source = stack.enter_context(av.open(audio_source))
                if source.streams.audio:
                    audio_in = source.streams.audio[0]
                    audio_out = container.add_stream_from_template(audio_in)
            for index, rgb in enumerate(frames):
                if rgb.shape[:2] != (height, width):
                    rgb = images.resize_to(rgb, height, width)
                frame = av.VideoFrame.from_ndarray(
                    (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = index, 1 / Fraction(fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
            if audio_in is not None:
                _copy_audio(source, audio_in, audio_out, container, start, end)
    except (av.FFmpegError, OSError) as error:
        if audio_source is not None and isinstance(error, av.FFmpegError):
            # Most likely an audio codec this container cannot hold: keep the video at least.
            print(f"warning: {output_path}: the audio of {audio_source} could not be copied "
                  f"({reason(error)}); writing the video without it", file=sys.stderr)
            return encode_video(output_path, frames, fps, size)
        raise UserInputError(f"{output_path}: cannot write the video ({reason(error)})") from None


def _copy_audio(source, audio_in, audio_out, container, start, end):
    offset = int(round(start / audio_in.time_base))
    for packet in source.demux(audio_in):
        if packet.pts is None or packet.size == 0:
            continue
        seconds = float(packet.pts * audio_in.time_base)
        if seconds < start - 1e-6 or (end is not None and seconds >= end):
            continue
        packet.pts -= offset
        packet.dts = None if packet.dts is None else packet.dts - offset
        packet.stream = audio_out
        container.mux(packet)
