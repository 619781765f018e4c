"""nst-jax's cache folder, and JAX's persistent compilation cache inside it.

The folder is $NST_JAX_CACHE, else $XDG_CACHE_HOME/nst-jax, else ~/.cache/nst-jax. It holds the
downloaded default weights (nst_jax.weights.fetch) and, under xla/, compiled programs: a repeat run
at the same settings and size loads its programs instead of compiling them (seconds on a CPU).
"""

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

import jax

from nst_jax.atomic import PathLike

COMPILE_CACHE_SUBDIR = "xla"
# What JAX warns, once per entry, when a cached program cannot be read (a damaged or truncated
# file): it compiles the program again, but leaves the damaged file in place (it never
# overwrites an entry), so every later run would warn again.
_UNREADABLE_ENTRY = re.compile(r"Error reading persistent compilation cache entry for '([^']+)'")


def cache_dir() -> Path:
    """$NST_JAX_CACHE, else $XDG_CACHE_HOME/nst-jax, else ~/.cache/nst-jax (not created here)."""
    if os.environ.get("NST_JAX_CACHE"):
        return Path(os.environ["NST_JAX_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nst-jax"
    return Path.home() / ".cache" / "nst-jax"


def enable_compile_cache(folder: PathLike | None = None) -> Path | None:
    """Keep compiled programs in `folder` (default: cache_dir()/xla) across processes.

    Every program is kept, however quick to compile: a run compiles a handful, and on a warm
    start each one saved counts. Returns the folder, or None (with a warning, the run goes on
    compiling) when it cannot be created.
    """
    folder = Path(folder) if folder is not None else cache_dir() / COMPILE_CACHE_SUBDIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"compile cache {folder}: {error.strerror}; compiling without it", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _one_line_for_unreadable_entries(folder)
    return folder


def _one_line_for_unreadable_entries(folder: Path) -> None:
    """JAX's two-line warning per unreadable cache entry (naming its internals) becomes one short
    line per process, and the damaged file is removed so that the program just compiled takes
    its place; other warnings show as before."""
    shown = warnings.showwarning
    if getattr(shown, "nst_jax_cache", None) is not None:
        shown.nst_jax_cache["folder"] = folder  # type: ignore[attr-defined]  # installed already
        return
    state: Dict[str, Any] = {"folder": folder, "said": False}

    def show(message, category, filename, lineno, file=None, line=None):
        unreadable = _UNREADABLE_ENTRY.search(str(message))
        if unreadable is None:
            shown(message, category, filename, lineno, file, line)
            return
        _remove_damaged(Path(state["folder"]), unreadable.group(1))
        if not state["said"]:
            state["said"] = True
            print(f"warning: compile cache {state['folder']}: damaged entries are compiled again and "
                  f"replaced", file=sys.stderr)

    show.nst_jax_cache = state  # type: ignore[attr-defined]
    warnings.showwarning = show


def _remove_damaged(folder: Path, program: str) -> None:
    """Delete the entries of `program` in `folder` that JAX cannot decompress (best effort: JAX
    writes the one it is compiling once the damaged file is gone)."""
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another JAX's layout: the warning stays, the entry too
        return
    for entry in folder.glob(f"{_glob_escape(program)}-*-cache"):
        try:
            decompress_executable(entry.read_bytes())
        except OSError:
            continue
        except Exception:  # what a damaged file raises depends on the compressor
            entry.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    """`text` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)
