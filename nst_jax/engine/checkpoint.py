"""Checkpoints of an image run: its pixels and the optimizer's whole state, resumed bit for bit.

A checkpoint keeps what the next step needs and nothing the run can remake: the pixels and the
optimizer state (L-BFGS's history, Adam's moments and step count, which the learning-rate
schedule reads), the step, the scale of a coarse-to-fine run, and the loss terms at that step.
Targets, start images and the noise seed are remade from the inputs, which the fingerprint
pins: a checkpoint of other settings, images or weights is refused in one line, never mixed in.

Orbax's CheckpointManager (flax installs it) writes them, because it gives what a hand-written
file would have to reimplement:
- sharded arrays written by each process from its own shards (an image split by rows over hosts
  is never gathered to one), and read back straight into the run's shardings;
- atomic writes: a step is written under a temporary name and renamed when complete, the older
  step removed only after, so a kill at any moment leaves the last complete checkpoint;
- writing in the background after a device-to-host copy (the run goes on stepping).
Uncompressed: on this project's 2-core CPU a full 100-pair L-BFGS history at 1024 px (1.9 GB)
is written in about 1 s of wall time and 0.5 s of CPU (zstd took 7 CPU seconds for 10 % fewer
bytes); its import adds 0.2 s, only to runs that checkpoint (BENCHMARKS.md, "Checkpoints").
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from nst_jax.errors import UserInputError, reason

# What a checkpoint folder's "run" item says; a change to what is saved changes it.
FORMAT = 1
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600}


@dataclasses.dataclass(frozen=True)
class Every:
    """How often a run checkpoints: every `steps` steps, or every `seconds` of running."""

    steps: Optional[int] = None
    seconds: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> "Every":
        """"500" (steps), "30s", "10m" or "2h" (time); ValueError naming what is expected."""
        text = text.strip().lower()
        if text.isdigit() and int(text) > 0:
            return cls(steps=int(text))
        match = _DURATION.fullmatch(text)
        if match and float(match.group(1)) > 0:
            return cls(seconds=float(match.group(1)) * _SECONDS[match.group(2)])
        raise ValueError(f"expected a number of steps (500) or a time (30s, 10m, 2h), got {text!r}")

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps else f"{self.seconds:g} s"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a checkpoint stands in its run."""

    scale: int  # which coarse-to-fine pass (0-based)
    step: int  # steps done, over all scales
    terms: Dict[str, List[float]]  # the loss terms at `step`: one value per (padded) member


def file_digest(path: Any) -> str:
    """sha256 of a file's bytes: what pins an input image in a fingerprint."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same(there: Any, here: Any) -> bool:
    if isinstance(there, float) and isinstance(here, float) and math.isnan(there) and math.isnan(here):
        return True
    return bool(there == here)


def _difference(key: str, there: Any, here: Any) -> str:
    """"--style-weight 5.0 there, 7.0 here"; "the content image differs" for digests and long values."""
    if key.endswith(" digest"):
        return f"the {key.removesuffix(' digest')} differs"
    if len(repr(there)) + len(repr(here)) > 60:
        return f"{key} differ"
    return f"{key} {there!r} there, {here!r} here"


class Checkpoints:
    """One run's checkpoints in `folder`, pinned to the run by `fingerprint`.

    `fingerprint` is {what: value} of everything that decides the run's numbers (settings,
    members, the images' and weights' digests, the layout), JSON-able, keys named as the user
    knows them (flags). `latest()` refuses a folder made by another run; `due(step)` says when
    to `save`; `restore` reads the arrays into the run's own shapes and shardings. `at_end`: a
    finished run saves its last step too (a checkpoint kept to run more steps later).
    """

    def __init__(self, folder: Any, fingerprint: Mapping[str, Any], every: Every, at_end: bool = False,
                 on_failure: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = os.fspath(folder)  # as given: what lines name
        # As JSON gives it back (tuples become lists), so that a resumed run compares equal.
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))
        self.every, self.at_end = every, at_end
        # A checkpoint that cannot be written (a full disk) is said once and the run goes on:
        # its pixels are the work, and the next save may succeed.
        self.on_failure = on_failure or (lambda message: warnings.warn(message, stacklevel=2))
        self._failures: List[str] = []
        self._lock: Optional[int] = None  # the folder's open descriptor, flock'ed while the run holds it
        self.clock = clock
        self._last_time = clock()
        self._last_step: Optional[int] = None
        self._manager: Any = None
        self._latest: Optional[Tuple[int, Position]] = None

    def _open(self):
        if self._manager is None:
            import orbax.checkpoint as ocp  # only runs that checkpoint pay its import
            # Uncompressed: zstd saved 10 % of the bytes of a full L-BFGS history for 7 CPU
            # seconds per 1.9 GB, which the steps running meanwhile paid (BENCHMARKS.md).
            self._manager = ocp.CheckpointManager(
                os.path.abspath(self.folder),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=False, enable_async_checkpointing=True),
                item_handlers={"state": ocp.PyTreeCheckpointHandler(use_compression=False),
                               "run": ocp.JsonCheckpointHandler()})
        return self._manager

    def exists(self) -> bool:
        return os.path.isdir(self.folder)

    def acquire(self) -> bool:
        """Hold the folder for this run (an exclusive lock on it, made if missing), so that a
        second run on the same output cannot write into it: UserInputError naming it. The first
        host of a multi-host run holds it for all. Released by close() or remove(). True when
        this call took it (False: held already, or not the first host)."""
        if self._lock is not None or jax.process_index() != 0:
            return False
        try:
            os.makedirs(self.folder, exist_ok=True)
            descriptor = os.open(self.folder, os.O_RDONLY)
        except OSError as error:
            raise UserInputError(f"{self.folder}: cannot make the checkpoint folder ({reason(error)})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise UserInputError(f"{self.folder}: another run is using it (the same -o?); let it finish, "
                                 f"or name another output") from None
        self._lock = descriptor
        return True

    def latest(self) -> Optional[Position]:
        """The latest complete checkpoint's Position, None without one. UserInputError (one
        line naming the folder) when it cannot be read or was made by another run."""
        if not self.exists():
            return None
        import orbax.checkpoint as ocp
        try:
            step = self._open().latest_step()
            if step is None:
                return None
            run = self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run
            position = Position(int(run["scale"]), int(run["step"]), dict(run["terms"]))
            theirs = run["fingerprint"] if run.get("format") == FORMAT else None
        except Exception as error:  # a damaged or foreign folder: Orbax's own errors vary
            raise UserInputError(f"{self.folder}: not a readable checkpoint ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}); remove it to start "
                                 f"afresh") from None
        if theirs is None:
            raise UserInputError(f"{self.folder}: a checkpoint of another nst-jax version (format "
                                 f"{run.get('format')!r}, this one writes {FORMAT}); remove it to start afresh")
        differences = [key for key in sorted(set(theirs) | set(self.fingerprint))
                       if not _same(theirs.get(key), self.fingerprint.get(key))]
        if differences:
            shown = [_difference(key, theirs.get(key), self.fingerprint.get(key)) for key in differences[:3]]
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            raise UserInputError(f"{self.folder}: the checkpoint of another run ({'; '.join(shown)}{more}); "
                                 f"give the same command and inputs to resume it, or remove it to start afresh")
        self._latest = (step, position)
        self._last_step = position.step
        return position

    @property
    def saved_step(self) -> Optional[int]:
        """The step of the last save (or of the checkpoint resumed from)."""
        return self._last_step

    def due(self, step: int) -> bool:
        """Whether to save at `step` (a piece's end): at multiples of `every.steps`, or once
        `every.seconds` have passed since the last save (or the start)."""
        if step == self._last_step:
            return False
        if self.every.steps:
            return step % self.every.steps == 0
        return self.every.seconds is not None and self.clock() - self._last_time >= self.every.seconds

    def save(self, position: Position, pixels: Any, opt_state: Any) -> None:
        """Save in the background (wait() or the next save waits for it); the arrays may be
        donated to the next step once this returns."""
        import orbax.checkpoint as ocp
        run = {"format": FORMAT, "fingerprint": self.fingerprint, "scale": position.scale, "step": position.step,
               "terms": position.terms}
        self._last_step, self._last_time = position.step, self.clock()
        try:
            os.makedirs(self.folder, exist_ok=True)
            manager = self._open()
            manager.wait_until_finished()
            manager.save(position.step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_stored(pixels, opt_state)), run=ocp.args.JsonSave(run)), force=True)
        except Exception as error:  # Orbax's own wrappers of an OSError vary
            self._failed(error)

    def restore(self, pixels: Any, opt_state: Any) -> Tuple[Any, Any]:
        """The latest checkpoint's (pixels, opt_state), shaped, typed and placed like the given
        ones (the fresh state of the run being resumed). Call latest() first."""
        import orbax.checkpoint as ocp
        if self._latest is None:
            raise ValueError("restore() needs latest() to have found a checkpoint")
        leaves, structure = jax.tree_util.tree_flatten((pixels, opt_state))
        # Arrays placed by a mesh are read straight into their shards; a one-device run's
        # (uncommitted, as build_chunk_inputs makes them) are read to the host and put back
        # uncommitted, or the chunk would compile again for committed arguments.
        placed = any(getattr(leaf, "committed", False) for leaf in leaves)
        target = jax.tree_util.tree_map(
            ocp.utils.to_shape_dtype_struct if placed else lambda leaf: np.empty(leaf.shape, leaf.dtype),
            _stored(pixels, opt_state))
        try:
            stored = self._open().restore(self._latest[0], args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
            )).state
        except Exception as error:
            raise UserInputError(f"{self.folder}: cannot read the checkpoint's arrays ({type(error).__name__}); "
                                 f"remove it to start afresh") from None
        if not placed:
            stored = jax.device_put(stored)
        restored = [stored.get(key, leaf) for key, leaf in zip(_leaf_keys(leaves), leaves)]
        return jax.tree_util.tree_unflatten(structure, restored)

    def wait(self) -> None:
        """Wait for a save in the background to be complete on disk."""
        if self._manager is not None:
            try:
                self._manager.wait_until_finished()
            except Exception as error:
                self._failed(error)

    def _failed(self, error: BaseException) -> None:
        """Say once why a save failed, and start afresh with the next one."""
        cause: Optional[BaseException] = error
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        message = (f"cannot write the checkpoint {self.folder} ({reason(cause or error, first_line=True)}); "
                   f"the run goes on without it")
        manager, self._manager = self._manager, None
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.close()
        if message not in self._failures:
            self._failures.append(message)
            self.on_failure(message)

    def remove(self) -> None:
        """Delete the folder (a finished run's) and release it."""
        self._close_manager()
        if jax.process_index() == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._release()

    def close(self) -> None:
        """Wait for any save, then release the folder (removed if nothing was saved in it)."""
        self._close_manager()
        with contextlib.suppress(OSError):
            if self._lock is not None and not os.listdir(self.folder):
                os.rmdir(self.folder)
        self._release()

    def _close_manager(self) -> None:
        self.wait()
        if self._manager is not None:
            with contextlib.suppress(Exception):
                self._manager.close()
            self._manager = None

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the lock goes with the descriptor
            self._lock = None


def _leaf_keys(leaves: List[Any]) -> List[str]:
    return [f"{index:03d}" for index in range(len(leaves))]


def _stored(pixels: Any, opt_state: Any) -> Dict[str, Any]:
    """What is written: (pixels, opt_state)'s leaves by position, empty ones left out (Orbax
    refuses them; the fresh state being resumed has them)."""
    leaves = jax.tree_util.tree_leaves((pixels, opt_state))
    return {key: leaf for key, leaf in zip(_leaf_keys(leaves), leaves) if np.size(leaf)}


def host_terms(terms: Mapping[str, Any]) -> Dict[str, List[float]]:
    """Loss terms (device or host arrays) as JSON-able lists, one value per member."""
    return {name: np.atleast_1d(np.asarray(value, np.float64)).tolist() for name, value in terms.items()}


def finite_terms(terms: Mapping[str, List[float]]) -> bool:
    """Whether every term is finite: a diverged state is never kept."""
    return all(math.isfinite(value) for values in terms.values() for value in values)
