"""Ctrl-C during a run (a flag the run polls, never a KeyboardInterrupt inside jaxlib) and the
command lines' exit statuses (0 done, 2 bad input, 130 interrupted)."""

import contextlib
import os
import select
import signal
import sys
import threading
import types
from typing import Callable, Iterator, Optional, Protocol, TextIO

from nst_jax.cli.progress import write_line
from nst_jax.errors import UserInputError, memory_refusal, print_error


# Ctrl-C presses that quit at once, without waiting for the run's next safe point.
QUIT_PRESSES = 3


@contextlib.contextmanager
def ctrl_c_at_visits(stream: Optional[TextIO] = None) -> Iterator[types.SimpleNamespace]:
    """Within it Ctrl-C never raises: the first sets `.requested` (the run stops at its next safe
    point, within about a second outside XLA compilation); the third calls `.on_quit()` (set it
    to write what exists) and ends the process with status 130 at once.

    Why no KeyboardInterrupt: raised into jaxlib (0.10, CPU) while XLA compiles or a chunk
    returns, it leaves the interpreter broken (an IndexError, then SIGSEGV at exit). Python runs
    signal handlers only between bytecodes, so while XLA compiles a handler would wait; the
    presses are counted by a thread woken through the signal wakeup fd, at once. Outside the
    main thread (no signals there) nothing changes. Once a Ctrl-C was pressed, SIGINT stays
    ignored after it (the caller is ending with status 130).
    """
    state = types.SimpleNamespace(requested=False, presses=0, on_quit=None)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    stream = stream or sys.stderr

    def on_press():
        state.presses += 1
        state.requested = True
        if state.presses == 1:
            say(stream, f"stopping at the next step; Ctrl-C {QUIT_PRESSES - 1} more times to quit "
                         f"at once")
        elif state.presses >= QUIT_PRESSES:
            try:
                if state.on_quit is not None:
                    state.on_quit()
                else:
                    say(stream, "interrupted; nothing written")
            finally:
                stream.flush()
                os._exit(130)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C-level handler must never block

    def watch():
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for _ in range(data.count(signal.SIGINT)):
                on_press()

    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)  # counted by the watcher
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    watcher.start()
    try:
        yield state
    finally:
        signal.set_wakeup_fd(previous_fd)
        # After a Ctrl-C the process is ending with status 130: later presses are ignored, so
        # none lands as a KeyboardInterrupt in the writes or on the way out.
        signal.signal(signal.SIGINT, signal.SIG_IGN if state.requested else previous)
        os.close(write_fd)
        watcher.join(timeout=5)
        os.close(read_fd)


def say(stream: TextIO, line: str) -> None:
    """A line that stays: above a terminal's progress bar, never on it."""
    write_line(line, stream)




class Interruptible(Protocol):
    interrupted: bool


def exit_status(command: Callable[[], Optional[Interruptible]], interrupted_line: str) -> int:
    """A command line's exit status: run `command`, 0 when it is done (or returns None), 130 when
    its result was interrupted, 2 after one `error: ...` line for bad input or a run that ran out
    of memory (errors.memory_refusal; any other error propagates). A Ctrl-C that lands
    before the run's own watcher is up (while importing or loading) prints `interrupted_line`, 130."""
    try:
        result = command()
        sys.stdout.flush()  # a pipe's buffered output: written here, where a closed pipe is caught
    except UserInputError as error:
        return print_error(error)
    except KeyboardInterrupt:
        print(interrupted_line, file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_reader_left():
            raise  # another pipe (a download, a peer host) broke: not the reader's doing
        # stdout's reader left (`--estimate-memory | head -1`): nothing more to say to it.
        _silence_stdout()
        return 128 + signal.SIGPIPE  # what a shell shows for a command a closed pipe ended
    except Exception as error:  # an allocation that failed is a run that does not fit: one line
        refusal = memory_refusal(error)
        if refusal is None:
            raise
        return print_error(refusal)
    return 130 if result is not None and result.interrupted else 0


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout
        return False


def _silence_stdout():
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe
    again (the recipe of Python's signal module documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout (embedded)
        pass
