"""Writing a file so that it appears whole or not at all: every file nst_jax writes goes through here.

The data goes to a hidden temporary beside the target (same folder, so same filesystem), is
flushed to disk (fsync), and the temporary is renamed over the target: a reader, a crash or a
Ctrl-C midway never leaves a half-written file under the final name, and any earlier file stays
until the new one is complete. On failure the temporary is removed and the exception goes on.

The file gets the permissions a plain open() would give it: mode 0o666 less the umask, applied
by the kernel when the temporary is created (tempfile.mkstemp would give 0o600, unreadable to
other users). The process umask is never changed, so this is safe alongside other threads.
"""

import contextlib
import os
import secrets
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _hidden_beside(path: PathLike, suffix: str = "") -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp{suffix}")


def _create(temporary: str) -> int:
    """A new file at `temporary` (never an existing one), mode 0o666 less the umask; its descriptor."""
    return os.open(temporary, _FLAGS, 0o666)


def check_writable(path: PathLike) -> None:
    """Raise OSError now if a file cannot be written to `path`'s folder (checked by creating and
    removing a hidden temporary there), rather than after a long computation."""
    temporary = _hidden_beside(path)
    os.close(_create(temporary))
    os.unlink(temporary)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO]:
    """`with atomic_write(path) as stream:` write to `stream`; `path` gets the data when the block ends.

    `mode` is "wb" (default) or "w" (text in `encoding`). An exception in the block (a failed
    encoder, a checksum that does not match, Ctrl-C) leaves `path` as it was and no temporary.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    temporary = _hidden_beside(path)
    descriptor = _create(temporary)
    try:
        with os.fdopen(descriptor, mode, encoding=encoding if mode == "w" else None) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """`with atomic_path(path) as temporary:` have a library write the file named `temporary`.

    For writers that take a file name, not a stream (h5py, PyAV, torch.save): `temporary` is
    created empty beforehand (with ordinary permissions, which the writer's truncation keeps)
    and ends in `suffix` (say ".mp4", for writers that pick a format by extension). When the
    block ends the file is flushed to disk and renamed to `path`; on an exception it is removed.
    """
    temporary = _hidden_beside(path, suffix)
    os.close(_create(temporary))
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """`path` holds exactly `text`, written atomically (`atomic_write`)."""
    with atomic_write(path, "w", encoding) as stream:
        stream.write(text)
