"""Progress on stderr: a tqdm bar redrawn in place on a terminal, plain lines in logs.

Lines meant to stay (the --print-every lines, warnings) go through `write_line`, which tqdm
prints above the bar, so they never land on it. The rate and time left come from the engine's
measured time per step (`measured`: each piece of a chunk, compilation excluded, so from the first
step on); without it, from the host visits after the first (of each scale, in multi-scale runs):
the first chunk includes XLA's compilation, which says nothing about the steps.
"""

import os
import sys
import time
from typing import Callable, Mapping, Optional, TextIO

from tqdm import tqdm

from nst_jax.engine.timings import format_seconds

FALLBACK_COLUMNS, FALLBACK_ROWS = 100, 24
# tqdm's own bar without its time left, which counts all steps at the current scale's rate: ours
# is in the postfix.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def _reports_no_width(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (OSError, ValueError, AttributeError):  # not a terminal's file descriptor
        return False


def write_line(line: str, stream: Optional[TextIO] = None) -> None:
    """Print a line that stays, above any progress bar on `stream` (default stderr)."""
    stream = stream if stream is not None else sys.stderr
    tqdm.write(line, file=stream)
    stream.flush()


def format_terms(terms: Optional[Mapping[str, float]]) -> str:
    """{"total": 1, "content": .5, ...} -> "loss 1  content 0.5 ..." (the total first, as loss)."""
    terms = dict(terms or {})
    if "total" in terms:
        terms = {"loss": terms.pop("total"), **terms}
    return "  ".join(f"{name} {value:.4g}" for name, value in terms.items())


class ProgressBar:
    """A tqdm bar on a terminal (made at the first visit); plain lines (forced updates) elsewhere.

    Call `update` at every host visit: the rate counts from the first visit (of each scale), and
    a line is printed only when forced (the --print-every visits).
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None, label: str = "step",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.label, self.clock = total, label, clock
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        # The first visit's step and time (clock), set together: rates count from there.
        self.first_step: Optional[int] = None
        self.first_time: Optional[float] = None
        self.scale = ""  # the scale of the latest visit (multi-scale runs)
        self.terms: Optional[Mapping[str, float]] = None  # the latest visit's
        # The engine's measured steps and their seconds at this scale (see `measured`).
        self.measured_steps, self.measured_seconds = 0, 0.0
        self.measured_until: Optional[int] = None
        # The latest update's steps per second and seconds left (None until known): what a
        # --preview page shows beside the bar.
        self.rate: Optional[float] = None
        self.seconds_left: Optional[float] = None

    def _new_scale(self, scale: str) -> None:
        # A new scale compiles anew and runs at another speed: its rate counts afresh, on a new bar.
        if scale != self.scale:
            self.scale, self.first_step, self.first_time = scale, None, None
            self.measured_steps, self.measured_seconds, self.measured_until = 0, 0.0, None
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def measured(self, step: int, seconds_per_step: float, scale: str = "") -> None:
        """The engine's timing of the steps up to `step` since its last report (a piece of a
        chunk, compilation excluded): the rate from the first step on."""
        self._new_scale(scale)
        if self.measured_until is not None and step > self.measured_until:
            self.measured_steps += step - self.measured_until
            self.measured_seconds += (step - self.measured_until) * seconds_per_step
        elif self.measured_until is None and step > 0:
            # The scale's first report: its piece's steps are all this scale's last ones.
            self.measured_steps, self.measured_seconds = 1, seconds_per_step
        self.measured_until = step

    def update(self, step: int, terms: Optional[Mapping[str, float]] = None, force_line: bool = False,
               scale: str = "", work_left: Optional[float] = None) -> None:
        """Progress at `step`; terms is {name: value} (None: the latest ones); scale e.g.
        "scale 2/3 (362 px)"; work_left: what is left in steps of the current scale's cost
        (default: the steps left), for the time left of a multi-scale run, whose later scales'
        steps cost more."""
        now = self.clock()
        self._new_scale(scale)
        if self.first_step is None or self.first_time is None:
            self.first_step, self.first_time = step, now
        if terms is not None:
            self.terms = terms
        elapsed = now - self.first_time
        if self.measured_seconds > 0:
            rate: Optional[float] = self.measured_steps / self.measured_seconds
        else:  # the first visit's chunk includes compilation: the rate from later ones
            rate = (step - self.first_step) / elapsed if elapsed > 0 and step > self.first_step else None
        left = self.total - step if work_left is None else work_left
        self.rate, self.seconds_left = rate, left / rate if rate else None
        eta = format_seconds(left / rate) if rate else "?"
        loss = format_terms(self.terms)
        label = f"{scale}, {self.label}" if scale else self.label
        if self.interactive:
            postfix = f"{loss}, eta {eta}" if loss else f"eta {eta}"
            if self.bar is None:
                # A terminal that reports 0 columns (some pseudo-terminals) would get an empty bar.
                width = ({"ncols": FALLBACK_COLUMNS, "nrows": FALLBACK_ROWS} if _reports_no_width(self.stream)
                         else {"dynamic_ncols": True})
                self.bar = tqdm(total=self.total, initial=step, file=self.stream, desc=label, postfix=postfix,
                                unit="step", leave=False, bar_format=BAR_FORMAT, **width)
            else:
                self.bar.set_description(label, refresh=False)
                self.bar.set_postfix_str(postfix, refresh=False)
                self.bar.update(step - self.bar.n)
        if force_line:
            shown = f"{rate:.2f}" if rate else "?"
            line = (f"{label} {step:>{len(str(self.total))}}/{self.total} {loss}  "
                    f"{shown} it/s  eta {eta}")
            write_line(line, self.stream)

    def close(self, message: Optional[str] = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if message:
            write_line(message, self.stream)
