"""The jitted optimization loop: optax transformations, many steps per visit to the host.

A step is (pixels, opt_state) -> (pixels, opt_state, loss); `lax.fori_loop` runs a chunk of
them inside one compiled call whose trip count is a traced argument, so chunks of any length
reuse one compilation. Only the image gets a gradient.

Keeping pixels valid: Adam and SGD project onto [0, pixel_range] after every step (projected
gradient descent: cheap, and the image never leaves the displayable range). L-BFGS is left
unconstrained while it runs and clipped once at the end, as neural-style does: projecting between
L-BFGS steps would make its stored curvature pairs (s, y) inconsistent with the moves actually
taken, and in practice the image drifts only slightly out of range.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax.objective import total_loss


def make_optimizer(settings):
    """The optax transformation named by settings.optimizer."""
    if settings.optimizer == "lbfgs":
        return optax.lbfgs(
            memory_size=settings.lbfgs_memory,
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=settings.lbfgs_linesearch_steps, initial_guess_strategy="one"))
    learning_rate = settings.learning_rate
    if settings.lr_decay_rate != 1.0:
        learning_rate = optax.exponential_decay(
            settings.learning_rate, settings.lr_decay_steps, settings.lr_decay_rate, staircase=True)
    if settings.optimizer == "adam":
        return optax.adam(learning_rate, b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps)
    return optax.sgd(learning_rate, momentum=settings.sgd_momentum or None)


def make_chunk(objective, optimizer, is_lbfgs):
    """An unjitted chunk function: (pixels, opt_state, num_steps, params, targets, weights) -> same + loss.

    Jit it with `jit_chunk` (or vmap it first, for batches).
    """

    def chunk(pixels, opt_state, num_steps, params, targets, weights):
        def value_fn(x):
            return total_loss(objective, params, x, targets, weights)

        if is_lbfgs:
            value_and_grad = optax.value_and_grad_from_state(value_fn)

            def step(_, carry):
                x, state, _ = carry
                value, grad = value_and_grad(x, state=state)
                updates, state = optimizer.update(grad, state, x, value=value, grad=grad,
                                                  value_fn=value_fn)
                return optax.apply_updates(x, updates), state, value
        else:
            def step(_, carry):
                x, state, _ = carry
                value, grad = jax.value_and_grad(value_fn)(x)
                updates, state = optimizer.update(grad, state, x)
                x = jnp.clip(optax.apply_updates(x, updates), 0.0, objective.pixel_range)
                return x, state, value

        return jax.lax.fori_loop(0, num_steps, step, (pixels, opt_state, jnp.zeros((), jnp.float32)))

    return chunk


# On CPU, XLA's (experimental, default-on) YNNPACK fusion runs VGG's 3×3 convolutions slower
# than its Eigen runtime: 8–23 % per step here (BENCHMARKS.md, "What we tried").
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options():
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


def jit_chunk(chunk):
    """Jit a chunk function (single or vmapped), donating the optimizer state it replaces.

    The optimizer state is the big buffer (L-BFGS keeps 2·memory copies of the image), so it is
    donated; the image is not, so that Ctrl-C during a chunk still finds the last finished image
    intact (it costs one image-sized buffer).
    """
    return jax.jit(chunk, donate_argnums=(1,), compiler_options=compiler_options())


def init_state(optimizer, pixels):
    """optimizer.init(pixels) with every leaf in its own, strongly typed buffer.

    optax's L-BFGS state reuses one zeros array for several leaves (donating it twice fails) and
    holds weakly typed scalars that come back strongly typed from a step (a second compile).
    """
    return jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, dtype=leaf.dtype, copy=True),
                                  optimizer.init(pixels))


def to_host(array):
    """A numpy copy of a (possibly sharded) array; across hosts, every host gets the whole array."""
    if getattr(array, "is_fully_addressable", True):
        return np.asarray(array)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def visit_steps(num_steps, intervals, first_step=0):
    """The local step counts after which the host looks at the run: wherever the overall step
    (first_step + local) is a multiple of an interval, and at the end."""
    stops = {num_steps}
    for interval in intervals:
        if interval:
            first = interval - first_step % interval
            stops.update(range(first, num_steps, interval))
    return sorted(stops)


@dataclasses.dataclass
class LoopResult:
    pixels: jax.Array
    steps_done: int
    interrupted: bool
    loss: np.ndarray  # the last chunk's final loss: a scalar, or one per batch member
    seconds: float


def run_loop(chunk_fn, pixels, opt_state, num_steps, static_args, intervals, on_visit=None,
             first_step=0):
    """Drive `chunk_fn` to `num_steps`, calling on_visit(step, pixels, loss) at each host visit.

    `static_args` are the chunk's arguments after the step count (params, targets, weights).
    `first_step` offsets the steps on_visit sees and aligns the intervals (multi-scale runs).

    Ctrl-C stops the run between chunks and returns the last finished image (interrupted=True).
    """
    done, loss, start = 0, float("nan"), time.perf_counter()
    last_good = pixels
    try:
        for stop in visit_steps(num_steps, intervals, first_step):
            pixels, opt_state, loss_array = chunk_fn(pixels, opt_state, jnp.int32(stop - done),
                                                     *static_args)
            loss = to_host(loss_array)  # the one host sync per chunk (one loss per member in a batch)
            done, last_good = stop, pixels
            if on_visit is not None:
                on_visit(first_step + done, pixels, loss)
    except KeyboardInterrupt:
        return LoopResult(last_good, done, True, loss, time.perf_counter() - start)
    return LoopResult(pixels, done, False, loss, time.perf_counter() - start)
