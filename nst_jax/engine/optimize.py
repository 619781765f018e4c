"""The jitted optimization loop: optax transformations, many steps per visit to the host.

A step is (pixels, opt_state) -> (pixels, opt_state, loss terms); `lax.fori_loop` runs a chunk
of them inside one compiled call whose trip count is a traced argument, so chunks of any length
reuse one compilation. Only the image gets a gradient.

L-BFGS comes in two forms: without a line search (`nst_jax.engine.lbfgs`, torch.optim.LBFGS's fixed
step, what neural-style runs: one evaluation per step, no branches, so batches cost what their
members cost) and with optax's zoom line search (several evaluations where the curvature asks).

Keeping pixels valid: Adam and SGD project onto [0, pixel_range] after every step (projected
gradient descent: cheap, and the image never leaves the displayable range). L-BFGS is left
unconstrained while it runs and clipped once at the end, as neural-style does: projecting between
L-BFGS steps would make its stored curvature pairs (s, y) inconsistent with the moves actually
taken, and in practice the image drifts only slightly out of range.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.stages import Wrapped

from nst_jax.config.settings import Settings
from nst_jax.engine.lbfgs import fixed_step_lbfgs
from nst_jax.engine.timings import CompileCounter
from nst_jax.loss.objective import LossWeights, Objective, Targets, loss_terms
from nst_jax.weights.params_file import Params


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer knobs of a run (hashable: compiled chunks are cached by it)."""

    # settings.optimizer's fields but num_steps (their defaults are there).
    name: str
    learning_rate: float
    adam_b1: float
    adam_b2: float
    adam_eps: float
    sgd_momentum: float
    lr_decay_rate: float
    lr_decay_steps: int
    lr_decay_staircase: bool
    lbfgs_memory: int
    lbfgs_linesearch: str
    lbfgs_linesearch_steps: int
    storage_dtype: str  # fixed-step L-BFGS's history, Adam's and SGD's first moment

    @classmethod
    def from_settings(cls, settings: Settings) -> "OptimizerSpec":
        """settings.optimizer without num_steps (a traced argument of the chunk, not compiled in)."""
        group = settings.optimizer
        if not isinstance(group.lbfgs_memory, int):  # "auto": a run's plan chooses (engine.plan)
            raise ValueError(f"lbfgs_memory {group.lbfgs_memory!r} must be resolved by the run's plan "
                             f"(engine.plan.plan_run) first")
        return cls(**{field.name: getattr(group, field.name) for field in dataclasses.fields(cls)})

    @property
    def uses_linesearch(self) -> bool:
        """optax's zoom line search: several evaluations per step, read back from its state."""
        return self.name == "lbfgs" and self.lbfgs_linesearch == "zoom"

    @property
    def projects_pixels(self) -> bool:
        """Adam and SGD clip to the pixel range every step; L-BFGS only at the end (see above)."""
        return self.name != "lbfgs"


# A chunk function: (pixels, opt_state, num_steps, *static args) -> (pixels, opt_state, loss terms).
ChunkFn = Callable[..., Tuple[Any, Any, Any]]


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """The optax transformation an OptimizerSpec names.

    L-BFGS steps with 1 (neural-style's and torch.optim.LBFGS's learning rate) whether or not
    it searches along its direction; --learning-rate is Adam's and SGD's.
    """
    # None keeps optax's defaults (the parameters' dtype): the float32 program is unchanged.
    storage = jnp.bfloat16 if spec.storage_dtype == "bfloat16" else None
    if spec.name == "lbfgs":
        if spec.lbfgs_linesearch == "none":
            return fixed_step_lbfgs(learning_rate=1.0, memory_size=spec.lbfgs_memory,
                                    storage_dtype=storage)
        # optax's L-BFGS has no storage dtype: its zoom line search keeps float32 history.
        return optax.lbfgs(
            memory_size=spec.lbfgs_memory,
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=spec.lbfgs_linesearch_steps, initial_guess_strategy="one"))
    learning_rate = spec.learning_rate
    if spec.lr_decay_rate != 1.0:
        learning_rate = optax.exponential_decay(
            spec.learning_rate, spec.lr_decay_steps, spec.lr_decay_rate, staircase=spec.lr_decay_staircase)
    if spec.name == "adam":
        # optax offers a dtype for the first moment only; the second (squared gradients) stays
        # float32.
        return optax.adam(learning_rate, b1=spec.adam_b1, b2=spec.adam_b2, eps=spec.adam_eps,
                          mu_dtype=storage)
    return optax.sgd(learning_rate, momentum=spec.sgd_momentum or None, accumulator_dtype=storage)


def make_chunk(objective: Objective, spec: OptimizerSpec) -> ChunkFn:
    """An unjitted chunk: (pixels, opt_state, num_steps, params, Targets, LossWeights) -> (pixels, opt_state, terms).

    `terms` are the loss terms ({"total", "content", "style", "tv"}) of the image the chunk's
    last step started from (its gradient's evaluation), as the PyTorch tools print the loss.
    Jit it with `chunk_program` (or vmap it first, for batches).
    """
    optimizer = make_optimizer(spec)

    def chunk(pixels: jax.Array, opt_state: optax.OptState, num_steps: jax.Array, params: Params, targets: Targets,
              weights: LossWeights) -> Tuple[jax.Array, optax.OptState, Dict[str, jax.Array]]:
        def terms_fn(x):
            terms = loss_terms(objective, params, x, targets, weights)
            return terms["total"], terms

        def value_fn(x):
            return terms_fn(x)[0]

        if spec.uses_linesearch:
            value_and_grad = optax.value_and_grad_from_state(value_fn)

            def searched_step(_, carry):
                x, state, _ = carry
                value, grad = value_and_grad(x, state=state)
                updates, state = optimizer.update(grad, state, x, value=value, grad=grad,
                                                  value_fn=value_fn)
                return optax.apply_updates(x, updates), state, x

            # The line search evaluates through optax's state, which keeps no terms: one more
            # forward pass per chunk gives them, at the last step's start like the other paths.
            pixels, opt_state, last_start = jax.lax.fori_loop(0, num_steps, searched_step,
                                                              (pixels, opt_state, pixels))
            return pixels, opt_state, terms_fn(last_start)[1]

        def step(_, carry):
            x, state, _ = carry
            (_, terms), grad = jax.value_and_grad(terms_fn, has_aux=True)(x)
            updates, state = optimizer.update(grad, state, x)
            x = optax.apply_updates(x, updates)
            if spec.projects_pixels:
                x = jnp.clip(x, 0.0, objective.pixel_range)
            return x, state, terms

        empty_terms = {name: jnp.zeros((), jnp.float32) for name in TERMS}
        return jax.lax.fori_loop(0, num_steps, step, (pixels, opt_state, empty_terms))

    return chunk


TERMS = ("content", "style", "tv", "total")
# How the batched chunk's arguments map to members (vmap's in_axes for make_chunk's arguments):
# each member has its own image, optimizer state, style Gram matrices, regions and loss weights;
# the step count, params and content targets are shared.
BATCH_AXES = (0, 0, None, None, Targets(content=None, style=0, guides=0), 0)


# On CPU, XLA's (experimental, default-on) YNNPACK fusion runs VGG's 3×3 convolutions slower
# than its Eigen runtime: 8–23 % per step here (BENCHMARKS.md, "What we tried").
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> Optional[Dict[str, str]]:
    """Compiler options for the chunk on this backend; None where none apply or XLA lacks them.

    Passed per jit rather than through XLA_FLAGS so that a jaxlib without the option raises a
    catchable error here (and is compiled for without it) instead of aborting the process.
    """
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception:  # an unknown option in this jaxlib: keep XLA's defaults
        return None
    return _CPU_COMPILER_OPTIONS


def jit_with_loop_options(fn: Callable, options: Optional[Dict[str, Any]] = None, **jit_kwargs: Any) -> Wrapped:
    """jax.jit(fn, **jit_kwargs) compiled with the loop's compiler options: `options`, or None for
    `compiler_options()`, the shipped ones (the benchmarks pass others to compare). Every program
    that runs VGG (the chunk, the target passes) is jitted here, so all run the same convolutions."""
    return jax.jit(fn, compiler_options=compiler_options() if options is None else options, **jit_kwargs)


def jit_chunk(chunk: Callable, options: Optional[Dict[str, Any]] = None) -> Wrapped:
    """Jit a chunk function (single or vmapped), donating the optimizer state it replaces.

    The optimizer state is the big buffer (L-BFGS keeps 2·memory copies of the image), so it is
    donated; the image is not, so that Ctrl-C during a chunk still finds the last finished image
    intact (it costs one image-sized buffer). `options`: as in jit_with_loop_options.
    """
    return jit_with_loop_options(chunk, options, donate_argnums=(1,))


@functools.lru_cache(maxsize=None)
def chunk_program(objective: Objective, spec: OptimizerSpec, batched: bool) -> Wrapped:
    """The jitted chunk of (objective, spec), vmapped over members (BATCH_AXES) when batched.

    Made once per process for each setting: jax.jit then compiles once per shape, so a second
    run with the same settings and sizes compiles nothing. A single image is not batched: under
    vmap the zoom line search's data-dependent branches become selects that compute every branch.
    """
    chunk = make_chunk(objective, spec)
    if batched:
        chunk = jax.vmap(chunk, in_axes=BATCH_AXES)
    return jit_chunk(chunk)


def init_state(optimizer: optax.GradientTransformation, pixels: jax.Array) -> optax.OptState:
    """optimizer.init(pixels) with every leaf in its own, strongly typed buffer.

    optax's L-BFGS state reuses one zeros array for several leaves (donating it twice fails) and
    holds weakly typed scalars that come back strongly typed from a step (a second compile).
    """
    return jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, dtype=leaf.dtype, copy=True),
                                  optimizer.init(pixels))


@functools.lru_cache(maxsize=None)
def state_program(spec: OptimizerSpec, batched: bool) -> Wrapped:
    """`init_state` for spec's optimizer as one jitted program (vmapped when batched): one
    compile instead of one per leaf; under jit every output leaf gets its own buffer."""
    optimizer = make_optimizer(spec)

    def init(pixels):
        return init_state(optimizer, pixels)

    return jax.jit(jax.vmap(init) if batched else init)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded) arrays; across hosts, every host gets whole arrays."""
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree_util.tree_leaves(tree)):
        return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils
    return jax.tree_util.tree_map(
        np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def visit_steps(num_steps: int, intervals: Iterable[int], first_step: int = 0) -> List[int]:
    """The local step counts after which the host looks at the run: wherever the overall step
    (first_step + local) is a multiple of an interval, and at the end."""
    stops = {num_steps}
    for interval in intervals:
        if interval:
            first = interval - first_step % interval
            stops.update(range(first, num_steps, interval))
    return sorted(stops)


class StopRun(Exception):
    """Raised by a host-visit callback (or by `Pieces.should_stop` between pieces) to end the run
    there: the loop returns the image and state of the last finished step with interrupted=True.
    The engine's one way to stop."""


# With `Pieces`, a chunk runs in pieces of about this many seconds, checking for a stop between them.
PIECE_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class PieceEnd:
    """The run after one piece of a chunk: what a checkpoint keeps and what progress shows."""

    step: int  # steps done so far, over all scales (run_loop's first_step included)
    pixels: jax.Array
    opt_state: optax.OptState  # donated to the next piece: copy (or save) it before returning
    terms: Dict[str, jax.Array]  # the loss terms of the piece's last step, on the device
    seconds_per_step: float  # this piece's wall time less any compilation in it, per step


def agreed(stop: bool, per_step: Optional[float] = None) -> Tuple[bool, Optional[float]]:
    """(stop, seconds per step) as every host of a multi-host run sees them: a stop when any host
    stops (a scheduler's signal reaches one host before another), pieces sized by the slowest
    host, so that all run the same steps in the same calls and their collectives pair up. One
    small all-gather per piece; one host: the values as they are."""
    if jax.process_count() == 1:
        return stop, per_step
    from jax.experimental import multihost_utils
    votes = np.asarray(multihost_utils.process_allgather(np.array([float(stop), per_step or 0.0], np.float32)))
    slowest = float(votes[:, 1].max())
    return bool(votes[:, 0].any()), slowest or None


@dataclasses.dataclass(frozen=True)
class Pieces:
    """Chunks cut into pieces of about `seconds`: between pieces the run can stop (`should_stop`),
    be checkpointed and show its speed (`on_piece`), so none of these waits for a whole chunk.

    Chunks of any length share one compilation, so the pieces compile nothing new and give the
    same bits as whole chunks. The first piece is one step (it includes the compile); the rest
    are sized from the last piece's time per step, compilation excluded.
    """

    should_stop: Optional[Callable[[], bool]] = None  # None: never
    on_piece: Optional[Callable[[PieceEnd], None]] = None
    seconds: float = PIECE_SECONDS


@dataclasses.dataclass
class LoopResult:
    pixels: jax.Array
    steps_done: int
    interrupted: bool
    terms: dict  # the last chunk's loss terms (TERMS): scalars, or one per batch member
    seconds: float
    # The optimizer's state after steps_done (with `pixels`, what a checkpoint keeps); deleted
    # (donated) when a KeyboardInterrupt cut a chunk: `state_kept` says.
    opt_state: optax.OptState = None

    @property
    def loss(self) -> Any:
        return self.terms["total"]

    @property
    def state_kept(self) -> bool:
        return not any(getattr(leaf, "is_deleted", lambda: False)()
                       for leaf in jax.tree_util.tree_leaves(self.opt_state))


def run_loop(chunk_fn: ChunkFn, pixels: jax.Array, opt_state: optax.OptState,
             num_steps: int, loss_args: Sequence[Any], intervals: Iterable[int],
             on_visit: Optional[Callable[[int, jax.Array, Dict[str, Any]], None]] = None,
             first_step: int = 0, pieces: Optional[Pieces] = None) -> LoopResult:
    """Drive `chunk_fn` to `num_steps`, calling on_visit(step, pixels, terms) at each host visit.

    `loss_args` are the chunk's traced arguments after the step count (params, targets, weights).
    `first_step` offsets the steps on_visit sees and aligns the intervals (multi-scale runs).
    `pieces`: cut each chunk into timed pieces (see Pieces); None runs each chunk whole.

    StopRun from on_visit or between pieces ends the run and returns the image and state of the
    last finished step (interrupted=True); so does a KeyboardInterrupt (Ctrl-C in a notebook),
    which keeps the last finished image.
    """
    done, start = 0, time.perf_counter()
    terms: Dict[str, Any] = {name: np.float32(np.nan) for name in TERMS}
    device_terms = None
    per_step: Optional[float] = None
    try:
        for stop in visit_steps(num_steps, intervals, first_step):
            if pieces is None:
                pixels, opt_state, device_terms = chunk_fn(pixels, opt_state, np.int32(stop - done), *loss_args)
                done = stop
            while done < stop:
                assert pieces is not None
                stopping, per_step = agreed(pieces.should_stop is not None and pieces.should_stop(), per_step)
                if stopping:
                    raise StopRun
                steps = 1 if per_step is None else max(1, min(stop - done, int(pieces.seconds / per_step)))
                with CompileCounter() as compiling:
                    began = time.perf_counter()
                    pixels, opt_state, device_terms = jax.block_until_ready(
                        chunk_fn(pixels, opt_state, np.int32(steps), *loss_args))
                    per_step = max(1e-6, (time.perf_counter() - began - compiling.seconds) / steps)
                done += steps
                if pieces.on_piece is not None:
                    pieces.on_piece(PieceEnd(first_step + done, pixels, opt_state, device_terms, per_step))
            terms = to_host(device_terms)  # the one host sync per chunk (pieces: already synced)
            device_terms = None
            if on_visit is not None:
                on_visit(first_step + done, pixels, terms)
    except (StopRun, KeyboardInterrupt):
        if device_terms is not None:  # stopped between pieces: the last piece's terms
            terms = to_host(device_terms)
        return LoopResult(pixels, done, True, terms, time.perf_counter() - start, opt_state)
    return LoopResult(pixels, done, False, terms, time.perf_counter() - start, opt_state)
