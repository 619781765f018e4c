"""The live view of a run in a notebook cell, without a server: `NotebookPreview`.

It is a host-visit callback (RunOptions.on_visit for images, FrameOptions.on_visit for clips)
over the same LiveRun as the --preview page: the run's thread hands over numbers and the images'
callable, the LiveRun's worker makes the previews and redraws the cell (one HTML display, updated
in place) at most every `min_interval` seconds.
"""

import html
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from nst_jax.engine.stylize import StylizeResult, Visit
from nst_jax.engine.timings import format_seconds
from nst_jax.preview.live import LiveRun
from nst_jax.video.transfer import FrameVisit

# The cell's curve: an inline SVG (no plotting library, nothing for the notebook to trust).
PLOT_WIDTH, PLOT_HEIGHT, PLOT_MARGIN = 420, 180, 34
TERM_COLORS = {"total": "#222222", "content": "#1f77b4", "style": "#ff7f0e", "tv": "#2ca02c",
               "temporal": "#9467bd"}
STATUS_COLORS = {"starting": "#666", "running": "#1f5f99", "done": "#2a7a3b", "interrupted": "#8a6a12",
                 "failed": "#9b2c2c"}


def _ipython_display() -> Callable[[str], None]:
    """A function (html) -> None that redraws one display in the current cell."""
    try:
        from IPython.display import HTML, display
    except ImportError:
        raise ImportError("NotebookPreview needs IPython (it draws into a notebook cell); "
                          "pass display= to draw elsewhere") from None
    handle = display(HTML("<i>nst-jax: starting…</i>"), display_id=True)
    return lambda text: handle.update(HTML(text))


def _seconds(value: Optional[float]) -> str:
    return format_seconds(value) if value is not None and math.isfinite(value) else "–"


def loss_svg(points: Sequence[Dict[str, Any]], member: int = 0) -> str:
    """The loss per term of one output over the steps, log scale, as an SVG element."""
    names = list(points[-1]["terms"]) if points else []
    series = {name: [(p["step"], p["terms"][name][member]) for p in points
                     if name in p["terms"] and (p["terms"][name][member] or 0) > 0] for name in names}
    values = [math.log10(v) for line in series.values() for _, v in line]
    steps = [s for line in series.values() for s, _ in line]
    if not values:
        return ""
    low, high = min(values), max(values)
    low, high = (low - 0.25, high + 0.25) if high - low < 0.5 else (low, high)
    first, last = min(steps), max(steps)
    last = last if last > first else first + 1
    width, height, margin = PLOT_WIDTH, PLOT_HEIGHT, PLOT_MARGIN

    def x(step: float) -> float:
        return margin + (step - first) / (last - first) * (width - margin - 8)

    def y(log: float) -> float:
        return 8 + (high - log) / (high - low) * (height - 8 - 22)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:#fafafa;border:1px solid #ddd">']
    for power in range(math.ceil(low), math.floor(high) + 1):
        parts.append(f'<line x1="{margin}" x2="{width - 8}" y1="{y(power):.1f}" y2="{y(power):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="2" y="{y(power) + 4:.1f}" font-size="10" fill="#777">1e{power}</text>')
    parts.append(f'<text x="{margin}" y="{height - 6}" font-size="10" fill="#777">step {first}</text>'
                 f'<text x="{width - 8}" y="{height - 6}" font-size="10" fill="#777" text-anchor="end">'
                 f'step {last}</text>')
    for index, (name, line) in enumerate(series.items()):
        color = TERM_COLORS.get(name, "#8c564b")
        coordinates = " ".join(f"{x(s):.1f},{y(math.log10(v)):.1f}" for s, v in line)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{coordinates}"/>'
                     f'<text x="{margin + 6 + 80 * index}" y="20" font-size="11" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(state: Dict[str, Any]) -> str:
    """A whole LiveRun snapshot (`LiveRun.snapshot()`) as the cell's HTML."""
    info = state.get("info", {})
    labels: List[str] = info.get("labels", [""])
    uris = state.get("images", {}).get("uris", [])
    status = state["status"]
    frame = (f"frame {state['frame'] + 1} of {state['frames_total']} · "
             if state.get("frame") is not None else "")
    rate = f"{state['rate']:.2f}" if state.get("rate") else "–"
    line = (f'<span style="background:{STATUS_COLORS.get(status, "#666")};color:white;padding:1px 8px;'
            f'border-radius:8px">{html.escape(status)}</span> {frame}step {state["step"]} of '
            f'{state["total"] or "–"} · {rate} it/s · {_seconds(state.get("seconds_left"))} left')
    width = 480 if len(uris) <= 1 else 240
    cells = "".join(
        f'<figure style="margin:0 8px 8px 0;display:inline-block;vertical-align:top;width:{width}px">'
        f'<img src="{uri}" style="width:100%"/>'
        + (f'<figcaption style="font-size:12px;color:#555">{html.escape(label)}</figcaption>' if label else "")
        + "</figure>" for uri, label in zip(uris, labels))
    message = "<br>".join(html.escape(text) for text in (state.get("message"), state.get("problem")) if text)
    curve = loss_svg(state["history"]["points"])
    title = html.escape(info.get("title") or "nst-jax")
    return (f'<div class="nst-jax-preview" data-status="{html.escape(status)}"><b>{title}</b> {line}'
            f'<div style="margin-top:6px">{cells}</div>{curve}'
            + (f'<div style="color:#555">{message}</div>' if message else "") + "</div>")


class NotebookPreview:
    """Watch a run in a notebook cell: the current image(s), the loss per term, speed, time left.

        with NotebookPreview(labels=[m.label for m in members]) as preview:
            results = nst_jax.stylize_batch(content, styles, settings, model, members,
                                            options=nst_jax.RunOptions(on_visit=preview, intervals=(10,)))
            preview.show_results(results)

    Use it for `RunOptions.on_visit` (a run or a batch) or `FrameOptions.on_visit` (a clip; give
    `frames`). Leaving the `with` block says how the run ended (an exception: failed, or
    interrupted on KeyboardInterrupt). Each visit's numbers are taken at once; its images are made
    on a worker thread, and the cell is redrawn at most every `min_interval` seconds, so the run
    never waits for the notebook.

    Args:
      labels: one per output of a batch (shown under each image); () for a single output.
      title: the heading.
      frames: a clip's frame count (0: a run of images).
      display: (html) -> None, to draw elsewhere than the current cell (default: IPython's
        display, updated in place).
    """

    def __init__(self, labels: Sequence[str] = (), title: str = "", *, frames: int = 0,
                 display: Optional[Callable[[str], None]] = None, min_interval: float = 0.5) -> None:
        self.live = LiveRun(title, min_interval=min_interval)
        self.live.describe(labels, {}, kind="video" if frames else "image", frames=frames)
        self.display = display if display is not None else _ipython_display()
        self.live.subscribe(lambda live: self.display(render_html(live.snapshot()[0])))

    def __call__(self, visit: Any) -> None:
        """A host visit: a `Visit` of a run, or a `FrameVisit` of a clip."""
        live = self.live
        if isinstance(visit, FrameVisit):
            if live.frame != visit.index:
                live.begin_frame(visit.index)
            live.progress(visit.step, visit.steps, visit.terms)
            live.offer_images(visit.step, lambda: [visit.image()])
        elif isinstance(visit, Visit):
            scale = f"scale {visit.scale + 1}/{visit.scales}" if visit.scales > 1 else ""
            live.progress(visit.step, visit.total_steps, visit.terms, scale=scale)
            live.offer_images(visit.step, visit.images)
        else:
            raise TypeError(f"NotebookPreview takes a Visit or a FrameVisit, got {type(visit).__name__}")

    def finish(self, status: str = "done", message: str = "",
               images: Optional[Sequence[np.ndarray]] = None) -> None:
        """The run ended ("done", "interrupted" or "failed"); `images` are its results (default: the
        last visit's)."""
        self.live.end(status, message, images)

    def show_results(self, results: Sequence[StylizeResult]) -> None:
        """The run's results end the view: its images, done or interrupted (a notebook's interrupt
        stops a run without an exception)."""
        interrupted = any(result.interrupted for result in results)
        status = "interrupted" if interrupted else "done"
        self.finish(status, f"{status} after {results[0].steps_done} steps", [result.image for result in results])

    def __enter__(self) -> "NotebookPreview":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if error is None:
            self.finish("done")
        elif isinstance(error, KeyboardInterrupt):
            self.finish("interrupted", "interrupted")
        else:
            self.finish("failed", f"{type(error).__name__}: {error}")

