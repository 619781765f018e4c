"""nst-jax's cache folder, and JAX's persistent compilation cache inside it.

The folder is $NST_JAX_CACHE, else $XDG_CACHE_HOME/nst-jax, else ~/.cache/nst-jax. It holds the
downloaded default weights (nst_jax.weights.fetch) and, under xla/, compiled programs: a repeat run
at the same settings and size loads its programs instead of compiling them (seconds on a CPU).
"""

import os
import warnings
from pathlib import Path

import jax

from nst_jax.atomic import PathLike

COMPILE_CACHE_SUBDIR = "xla"


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
    return folder
