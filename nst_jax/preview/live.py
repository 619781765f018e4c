"""A run's live state, what a preview shows: updated by the run's thread, read by the views.

The run's thread calls `progress` (numbers: a lock and an append), `offer_images` (a callable
kept for later, the newest replacing an older one not yet made) and `end`. A worker thread makes
the previews (the device-to-host copy, resizing, JPEG) at most every `min_interval` seconds, so
the step never waits for them. Views (`server`'s browser feeds, `notebook`) read `snapshot`s:
each one carries only what that view has not been sent yet.
"""

import dataclasses
import math
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nst_jax.engine.checkpoint import host_terms
from nst_jax.preview.thumbnails import FRAME_SIDE, preview_side, previews

# What a run can be: "starting" until its first step (loading, compiling), then "running", and
# one of the ended ones.
ENDED = ("done", "interrupted", "failed")
# Loss points kept for the curve: past this, every other old point is dropped (the curve keeps
# its shape; a page that knows the old points gets them anew).
MAX_POINTS = 4000
FRAMES_KEPT = 120  # finished video frames shown in the page's strip (the newest)
MIN_INTERVAL = 0.25  # seconds between two previews made: at most four images a second

# () -> one RGB image (H, W, 3) in [0, 1] per output: called on the worker thread.
Images = Callable[[], Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Seen:
    """What a view has been sent so far (`LiveRun.snapshot` sends the rest)."""

    version: int = -1
    news: int = -1  # the state's `news` count (`LiveRun.news`)
    described: int = -1  # the description's (`describe` may come after a page connects)
    epoch: int = -1  # the loss history's (a video frame starts a new one)
    points: int = 0
    images: int = 0
    frames: int = 0


def member_terms(terms: Mapping[str, Any]) -> Dict[str, List[Optional[float]]]:
    """{"total": array of one value per output, ...} -> {"total": [floats], ...}, NaN and ±inf
    as None (JSON has neither; the page draws a gap)."""
    return {name: [value if math.isfinite(value) else None for value in values]
            for name, values in host_terms(terms).items()}


class LiveRun:
    """One run's live state and the worker thread that makes its previews.

    Args:
      title: what the page calls the run ("photo.jpg in the style of starry_night.jpg").
      min_interval: seconds between two previews made (and two notebook renders).
      clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, title: str = "", *, min_interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.title, self.min_interval, self.clock = title, min_interval, clock
        self._changed = threading.Condition()
        # Every change bumps `version`; `news` counts the ones a page shows at once (a point of
        # the curve, images, frames, the description, the status). A change of the numbers alone
        # (a piece's step and speed) can wait: views send those at most about once a second, as
        # each wake-up of a browser takes a core from the run's threads for a moment.
        self.version = 0
        self.news = 0
        self.labels: Tuple[str, ...] = ("",)
        self.settings: Dict[str, Any] = {}
        self.kind = "image"
        self.described = 0
        self.status, self.message, self.problem = "starting", "", ""
        self.step, self.total, self.scale = 0, 0, ""
        self.rate: Optional[float] = None
        self.seconds_left: Optional[float] = None
        self.frame: Optional[int] = None
        self.frames_total = 0
        self.points: List[Dict[str, Any]] = []
        self.epoch = 0
        self.images: List[str] = []  # JPEG data URIs, one per output
        self.image_version, self.image_step = 0, 0
        self.frames: List[Tuple[int, str]] = []  # (frame index, data URI), the newest FRAMES_KEPT
        self.frames_made = 0
        self._pending: Optional[Tuple[int, Images]] = None
        self._frame_jobs: List[Tuple[int, np.ndarray]] = []
        self._listeners: List[Callable[["LiveRun"], None]] = []
        self._listened = -1  # the version the listeners last saw
        self._segment: Optional[Tuple[Any, int, float]] = None  # (scale or frame, step, time) for the rate
        self._worker: Optional[threading.Thread] = None
        self._stopping = False

    # -- the run's side ---------------------------------------------------------------------

    def describe(self, labels: Sequence[str], settings: Mapping[str, Any], *, kind: str = "image",
                 total: int = 0, frames: int = 0) -> None:
        """What the run is: one label per output ("" for a single one), its settings, "image" or
        "video", its steps (per frame for a video) and frames."""
        with self._changed:
            self.labels, self.settings, self.kind = tuple(labels) or ("",), dict(settings), kind
            self.total, self.frames_total = total, frames
            self.described += 1
            self._bump()

    def progress(self, step: int, total: Optional[int] = None, terms: Optional[Mapping[str, Any]] = None,
                 rate: Optional[float] = None, seconds_left: Optional[float] = None, scale: str = "") -> None:
        """Steps done (of `total`), the loss terms at this step (one value per output; a point of
        the curve), the speed and time left where the caller measures them (else estimated here
        from the calls), and the scale ("scale 2/3 (362 px)")."""
        now = self.clock()
        with self._changed:
            news = terms is not None or self.status == "starting"
            if self.status == "starting":
                self.status = "running"
            segment = (scale, self.frame)
            if self._segment is None or self._segment[0] != segment:
                self._segment = (segment, step, now)
            if rate is None and step > self._segment[1] and now > self._segment[2]:
                rate = (step - self._segment[1]) / (now - self._segment[2])
            self.step, self.scale, self.rate = step, scale, rate
            if total is not None:
                self.total = total
            if seconds_left is None and rate:
                seconds_left = max(0, self.total - step) / rate
            self.seconds_left = seconds_left
            if terms is not None:
                self.points.append({"step": step, "terms": member_terms(terms)})
                if len(self.points) > MAX_POINTS:
                    self.points = self.points[:-MAX_POINTS // 2:2] + self.points[-MAX_POINTS // 2:]
                    self.epoch += 1
            self._bump(news)

    def offer_images(self, step: int, images: Images) -> None:
        """The images at `step`, made into previews on the worker when it is next free (an offer
        not yet taken is replaced: only the newest image matters)."""
        with self._changed:
            if self.status in ENDED:
                return
            self._pending = (step, images)
            self._start_worker()
            self._changed.notify_all()

    def begin_frame(self, index: int) -> None:
        """A video's frame `index` starts: the loss curve starts anew."""
        with self._changed:
            self.frame, self.points, self.epoch, self.step = index, [], self.epoch + 1, 0
            self._bump()

    def finish_frame(self, index: int, image: np.ndarray) -> None:
        """A video's frame `index` is finished: it joins the strip (made on the worker)."""
        with self._changed:
            self._frame_jobs.append((index, image))
            self._start_worker()
            self._changed.notify_all()

    def end(self, status: str, message: str = "", images: Optional[Sequence[np.ndarray]] = None,
            step: Optional[int] = None) -> None:
        """The run ended ("done", "interrupted" or "failed"), with the line that says so and its
        final images (else the last offered ones are made now). Stops the worker; later calls do
        nothing."""
        assert status in ENDED, status
        with self._changed:
            if self.status in ENDED:
                return
            self._stopping = True
            self._changed.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join()
        with self._changed:
            pending, frame_jobs = self._pending, self._frame_jobs
            self._pending, self._frame_jobs = None, []
        if images is not None:
            pending = (self.step if step is None else step, lambda: images)
        self._make(pending, frame_jobs)
        with self._changed:
            self.status, self.message = status, message
            if step is not None:
                self.step = step
            self.rate = self.seconds_left = None
            self._bump()
        self._tell_listeners()

    # -- the views' side --------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def subscribe(self, listener: Callable[["LiveRun"], None]) -> None:
        """Call `listener(self)` on the worker thread after changes, at most every min_interval
        seconds, and once more at the end (a notebook's view)."""
        with self._changed:
            self._listeners.append(listener)
            self._start_worker()

    def wait(self, version: int, timeout: float, stop: Callable[[], bool] = lambda: False) -> int:
        """Block until the state's version is not `version`, `stop()` holds (see `wake`) or
        `timeout` seconds pass: the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version or stop(), timeout)
            return self.version

    def wait_news(self, news: int, timeout: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Block until there is news since `news` (a Seen's), `stop()` holds or `timeout` passes."""
        with self._changed:
            self._changed.wait_for(lambda: self.news != news or stop(), timeout)

    def wake(self) -> None:
        """Wake every `wait`, to look at its `stop` again."""
        with self._changed:
            self._changed.notify_all()

    def snapshot(self, seen: Seen = Seen()) -> Tuple[Dict[str, Any], Seen]:
        """(what a view has not been sent yet, as JSON-ready data; what it has been sent then)."""
        with self._changed:
            state: Dict[str, Any] = {
                "version": self.version, "status": self.status, "message": self.message, "problem": self.problem,
                "step": self.step, "total": self.total, "rate": self.rate, "seconds_left": self.seconds_left,
                "scale": self.scale, "frame": self.frame, "frames_total": self.frames_total}
            if seen.described != self.described:
                state["info"] = {"title": self.title, "labels": list(self.labels), "kind": self.kind,
                                 "settings": self.settings}
            fresh = seen.epoch != self.epoch
            state["history"] = {"reset": fresh, "points": self.points[0 if fresh else seen.points:]}
            if seen.images != self.image_version:
                state["images"] = {"step": self.image_step, "uris": list(self.images)}
            if seen.frames != self.frames_made:
                new = self.frames_made - seen.frames
                state["frames"] = [list(frame) for frame in self.frames[-new:]]
            return state, Seen(self.version, self.news, self.described, self.epoch, len(self.points), self.image_version, self.frames_made)

    # -- the worker -------------------------------------------------------------------------

    def _bump(self, news: bool = True) -> None:  # under the lock
        self.version += 1
        self.news += news
        self._changed.notify_all()

    def _start_worker(self) -> None:  # under the lock
        if self._worker is None and not self._stopping:
            self._worker = threading.Thread(target=self._work, name="nst-jax preview", daemon=True)
            self._worker.start()

    def _has_work(self) -> bool:
        return (self._pending is not None or bool(self._frame_jobs)
                or (bool(self._listeners) and self._listened != self.version))

    def _work(self) -> None:
        last = -math.inf
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or self._has_work())
                # At most one round of previews per min_interval; `end` cuts the wait short.
                self._changed.wait_for(lambda: self._stopping, last + self.min_interval - self.clock())
                if self._stopping:
                    return
                pending, frame_jobs = self._pending, self._frame_jobs
                self._pending, self._frame_jobs = None, []
            self._make(pending, frame_jobs)
            self._tell_listeners()
            last = self.clock()

    def _make(self, pending: Optional[Tuple[int, Images]], frame_jobs: List[Tuple[int, np.ndarray]]) -> None:
        """Previews of the offered images and of finished frames (off the lock), then published."""
        made, problem = None, ""
        frames = []
        try:
            if pending is not None:
                step, images = pending
                pictures = list(images())
                made = (step, previews(pictures, preview_side(len(pictures))))
            frames = [(index, previews([image], FRAME_SIDE)[0]) for index, image in frame_jobs]
        except Exception as error:  # a preview must never end the run: the page says what failed
            problem = f"a preview could not be made: {type(error).__name__}: {error}"
        with self._changed:
            if made is not None:
                self.image_step, self.images = made
                self.image_version += 1
            self.frames = (self.frames + frames)[-FRAMES_KEPT:]
            self.frames_made += len(frames)
            self.problem = problem or self.problem
            if made is not None or frames or problem:
                self._bump()

    def _tell_listeners(self) -> None:
        with self._changed:
            listeners, self._listened = list(self._listeners), self.version
        for listener in listeners:
            listener(self)
