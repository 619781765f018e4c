"""A one-line progress bar on stderr: step, loss terms, it/s, time left."""

import sys
import time


def _format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    """Redraws one line in place on a terminal; prints a plain line per update elsewhere (logs)."""

    def __init__(self, total, stream=None, width=24, label="step"):
        self.total, self.width, self.label = total, width, label
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.first_step, self.first_time = None, None

    def update(self, step, terms=None, force_line=False):
        """Show progress at `step`; terms is {name: value} (e.g. total, content, style, tv)."""
        now = time.perf_counter()
        if self.first_step is None:  # the first chunk includes compilation: rate from later ones
            self.first_step, self.first_time = step, now
            rate = step / max(now - self.start, 1e-9)
        else:
            rate = (step - self.first_step) / max(now - self.first_time, 1e-9)
        filled = int(self.width * step / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        terms = dict(terms or {})
        if "total" in terms:  # the total first, as "loss"
            terms = {"loss": terms.pop("total"), **terms}
        loss = "  ".join(f"{name} {value:.4g}" for name, value in terms.items())
        eta = _format_seconds((self.total - step) / rate) if rate > 0 else "?"
        line = (f"{self.label} {step:>{len(str(self.total))}}/{self.total} [{bar}] "
                f"{loss}  {rate:.2f} it/s  eta {eta}")
        if self.interactive and not force_line:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, message=None):
        if self.interactive:
            self.stream.write("\n")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
