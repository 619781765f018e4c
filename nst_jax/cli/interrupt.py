"""Stopping a run (Ctrl-C, SIGTERM, SIGHUP: a flag the run polls, never a KeyboardInterrupt inside
jaxlib) and the command lines' exit statuses (0 done, 2 bad input, 128 + the signal when stopped:
130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""

import contextlib
import os
import select
import signal
import sys
import threading
import types
from typing import Callable, Iterator, List, Optional, Protocol, TextIO

from nst_jax.cli.progress import write_line
from nst_jax.errors import UserInputError, memory_refusal, print_error


# Ctrl-C presses that quit at once, without waiting for the run's next safe point.
QUIT_PRESSES = 3
# What stops a run at its next safe point, keeping the latest image: Ctrl-C, the SIGTERM a
# scheduler, `docker stop` or a preemption sends before killing, the SIGHUP of a closed terminal.
# Each counts as a Ctrl-C press.
STOP_SIGNALS = tuple(signal.Signals[name] for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# The first stop signal this process received: its exit status is 128 + that signal.
_received: List[int] = []


def stopped_status() -> int:
    """The exit status of a run that was stopped: 128 + the first stop signal (130 without one)."""
    return 128 + (_received[0] if _received else signal.SIGINT)


@contextlib.contextmanager
def ctrl_c_at_visits(stream: Optional[TextIO] = None) -> Iterator[types.SimpleNamespace]:
    """Within it Ctrl-C never raises: the first sets `.requested` (the run stops at its next safe
    point, within about a second outside XLA compilation); the third calls `.on_quit()` (set it
    to write what exists) and ends the process with status 130 at once. SIGTERM and SIGHUP count
    as presses too (STOP_SIGNALS), and the process's status becomes 128 + the first one.

    Why no KeyboardInterrupt: raised into jaxlib (0.10, CPU) while XLA compiles or a chunk
    returns, it leaves the interpreter broken (an IndexError, then SIGSEGV at exit). Python runs
    signal handlers only between bytecodes, so while XLA compiles a handler would wait; the
    presses are counted by a thread woken through the signal wakeup fd, at once. Outside the
    main thread (no signals there) nothing changes. Once a stop signal came, the stop signals
    stay ignored after it (the caller is ending with its status).
    """
    state = types.SimpleNamespace(requested=False, presses=0, on_quit=None)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    stream = stream or sys.stderr

    def on_press(signum):
        state.presses += 1
        state.requested = True
        if not _received:
            _received.append(signum)
        if state.presses == 1 and signum == signal.SIGINT:
            say(stream, f"stopping at the next step; Ctrl-C {QUIT_PRESSES - 1} more times to quit at once")
        elif state.presses == 1:
            say(stream, f"{signal.Signals(signum).name}: stopping at the next step and keeping the latest image")
        elif state.presses >= QUIT_PRESSES:
            try:
                if state.on_quit is not None:
                    state.on_quit()
                else:
                    say(stream, "interrupted; nothing written")
            finally:
                stream.flush()
                os._exit(stopped_status())

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
            for signum in data:
                if signum in STOP_SIGNALS:
                    on_press(signum)

    previous = {signum: signal.signal(signum, lambda signum, frame: None)  # counted by the watcher
                for signum in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    watcher.start()
    try:
        yield state
    finally:
        signal.set_wakeup_fd(previous_fd)
        # After a stop signal the process is ending with its status: later ones are ignored, so
        # none lands as a KeyboardInterrupt (or a kill) in the writes or on the way out.
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if state.requested else handler)
        os.close(write_fd)
        watcher.join(timeout=5)
        os.close(read_fd)


def say(stream: TextIO, line: str) -> None:
    """A line that stays: above a terminal's progress bar, never on it."""
    write_line(line, stream)


class Interruptible(Protocol):
    interrupted: bool


def exit_status(command: Callable[[], Optional[Interruptible]], interrupted_line: str) -> int:
    """A command line's exit status: run `command`, 0 when it is done (or returns None), 128 + the
    stop signal when its result was interrupted (`stopped_status`), 2 after one `error: ...` line for bad input or a run that ran out
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
    return stopped_status() if result is not None and result.interrupted else 0


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
