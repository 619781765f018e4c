"""Where a run's time goes: phases, compilation, and the loss at each host visit.

`python -m nst_jax.run ... --report run.json` writes this as JSON; the end-to-end benchmark
(`python -m bench e2e`) reads it to split a whole command's wall time into start-up, weights,
compilation, steps and writing, and to find when each run reached a given objective.
"""

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Union

import jax

from nst_jax.atomic import PathLike, write_text

# JAX's monitoring events around each program it prepares: tracing to a jaxpr, lowering to MLIR,
# and XLA's compilation (or its load from the persistent compilation cache).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
BACKEND_COMPILE_EVENT = COMPILE_EVENTS[-1]
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # a program loaded from the persistent cache


def format_seconds(seconds: float) -> str:
    """A time left as people read it: "4:07" under an hour, "2h05m" from one (progress bars,
    the video command's lines, the notebook preview)."""
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def process_age_seconds() -> Optional[float]:
    """Seconds since this process started (Linux /proc; None elsewhere): start-up and imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def peak_rss_bytes() -> Optional[int]:
    """This process's peak resident memory (Linux VmHWM; None elsewhere). Unlike the kernel's
    ru_maxrss, it starts afresh at exec, so a parent's memory does not leak into it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class CompileCounter:
    """Counts and times the programs JAX traces and compiles while it is active (a context)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.compiles = 0  # XLA compilations or loads from the persistent cache
        self.cache_hits = 0  # of those, loads from the persistent cache
        self.programs: List[str] = []  # their names, in order
        self.backend_seconds: List[float] = []  # XLA's compile (or cache load) of each, in order

    # Signatures as jax.monitoring's listener protocols declare them (it names the duration duration_secs).
    def _listen(self, event: str, duration_secs: float, **kwargs: Union[str, int]) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration_secs
        if event == BACKEND_COMPILE_EVENT:
            self.compiles += 1
            self.programs.append(str(kwargs.get("fun_name", "?")))
            self.backend_seconds.append(duration_secs)

    def _count_hit(self, event: str, **kwargs: Union[str, int]) -> None:
        if event == CACHE_HIT_EVENT:
            self.cache_hits += 1

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        jax.monitoring.register_event_listener(self._count_hit)
        return self

    def __exit__(self, *exc_info: Any) -> Literal[False]:
        jax.monitoring.unregister_event_duration_listener(self._listen)
        jax.monitoring.unregister_event_listener(self._count_hit)
        return False


class RunTimings:
    """Phases of one CLI run (seconds), compile time within them, and each visit's losses."""

    def __init__(self) -> None:
        self.started_at = time.time()  # epoch seconds at the start of the command's main()
        self.startup = process_age_seconds()  # interpreter start and imports, before main()
        self._start = time.perf_counter()
        self.phases: Dict[str, float] = {}
        self.visits: List[Dict[str, Any]] = []
        self.compile = CompileCounter()

    def now(self) -> float:
        """Seconds since main() started."""
        return time.perf_counter() - self._start

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - began

    def visit(self, step: int, losses: Iterable[float]) -> None:
        self.visits.append({"seconds": round(self.now(), 4), "step": int(step),
                            "losses": [float(loss) for loss in losses]})

    def to_dict(self) -> Dict[str, Any]:
        phases = {name: round(seconds, 4) for name, seconds in self.phases.items()}
        return {"started_at": self.started_at, "startup_seconds": self.startup,
                "main_seconds": round(self.now(), 4), "phases": phases,
                "compile_seconds": round(self.compile.seconds, 4),
                "compiled_programs": self.compile.programs, "compile_cache_hits": self.compile.cache_hits,
                "backend_compile_seconds": [round(seconds, 4) for seconds in self.compile.backend_seconds],
                "peak_rss_bytes": peak_rss_bytes(),
                "visits": self.visits}

    def write(self, path: PathLike) -> None:
        """Write the JSON atomically (`nst_jax.atomic`)."""
        write_text(path, json.dumps(self.to_dict(), indent=1))
