"""`--preview [HOST:]PORT` on the command lines: the page's server, opened before the run's
inputs are read (a port in use is one line, exit 2, before anything compiles), told how the run
ended, and stopped with it."""

import argparse
import contextlib
import os
from typing import Iterator, Optional, Sequence, TextIO, Tuple

from nst_jax.cli.progress import write_line
from nst_jax.errors import UserInputError, reason
from nst_jax.preview.live import LiveRun
from nst_jax.preview.server import PreviewServer, parse_address

PREVIEW_HELP = ("watch the run in a browser at http://HOST:PORT/: the current image (a grid for a batch, "
                "labelled with what varies; the frames for a video), the loss per term, speed and time "
                "left, and the settings. HOST defaults to 127.0.0.1 (this machine only; name 0.0.0.0 to "
                "let others look); PORT 0 takes any free port. The page ends with the run")


def preview_address(text: str) -> Tuple[str, int]:
    """argparse type of --preview: (host, port)."""
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_title(content: str, styles: Sequence[str]) -> str:
    """"photo.jpg in the style of a.jpg, b.jpg": what the page calls the run."""
    return f"{os.path.basename(content)} in the style of {', '.join(os.path.basename(s) for s in styles)}"


def _ending(error: BaseException) -> Tuple[str, str]:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "interrupted"
    if isinstance(error, UserInputError):
        return "failed", f"error: {error}"
    return "failed", f"error: {type(error).__name__}: {reason(error, first_line=True)}"


@contextlib.contextmanager
def preview_session(address: Optional[Tuple[str, int]], title: str, stream: Optional[TextIO] = None,
                    serve: bool = True) -> Iterator[Optional[LiveRun]]:
    """The run's LiveRun served at `address` (None without --preview), for the `with` block.

    A run that ends by an exception shows it on the page ("failed" and the error's line, or
    "interrupted"); one that ends without telling the LiveRun shows "done". `serve` False (a
    host other than the first of a multi-host run) keeps the LiveRun without a server: the host
    still takes part in gathering the images the first one shows.
    """
    if address is None:
        yield None
        return
    live = LiveRun(title)
    server = PreviewServer(address, live) if serve else None
    if server is not None:
        write_line(f"preview: {server.url} (open it in a browser; it ends with the run)", stream)
    try:
        yield live
    except BaseException as error:
        live.end(*_ending(error))
        raise
    finally:
        live.end("done")  # does nothing where the run said how it ended
        if server is not None:
            server.close()
