"""L-BFGS without a line search, as torch.optim.LBFGS runs it for neural-style: one evaluation
per iteration, a fixed step, and no data-dependent branches (so `jax.vmap` over a batch of
images costs what the members cost, where optax's zoom line search pays for every branch).

Each iteration, with g the gradient at the current image x (torch.optim.LBFGS, line_search_fn
None, tolerance_grad = tolerance_change = -1, as jcjohnson/neural-style and neural-style-pt):

    first iteration:  d = −g,                            t = min(1, 1/‖g‖₁)·lr
    later:            y = g − g_prev, s = t·d_prev;  keep (s, y) if y·s > 1e-10 (dropping the
                      oldest past `memory_size`), H₀ = y·s / y·y of the newest kept pair;
                      d = −H·g by the two-loop recursion over the kept pairs,  t = lr
    x ← x + t·d

Pairs with too little curvature are skipped (never a negative H), which is what keeps a fixed
step stable. The pairs live in ring buffers written one slot per iteration, in place.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

# torch.optim.LBFGS keeps a pair only when y·s exceeds this.
CURVATURE_THRESHOLD = 1e-10


class FixedStepLBFGSState(NamedTuple):
    iteration: jax.Array  # int32: iterations done
    previous_gradient: jax.Array
    previous_step: jax.Array  # t·d of the last iteration
    steps: jax.Array  # (memory, *shape): s pairs, ring buffer
    gradient_changes: jax.Array  # (memory, *shape): y pairs
    inverse_curvatures: jax.Array  # (memory,): 1/(y·s); 0 in unused slots
    newest: jax.Array  # int32: slot of the newest pair (−1 before the first)
    kept: jax.Array  # int32: pairs held, ≤ memory
    initial_scale: jax.Array  # H₀ = y·s / y·y of the newest pair


def _dot(a, b):
    return jnp.vdot(a, b).real


def fixed_step_lbfgs(learning_rate: float = 1.0, memory_size: int = 100,
                     storage_dtype: Optional[DTypeLike] = None) -> optax.GradientTransformation:
    """torch.optim.LBFGS without a line search, as an optax transformation of one array.

    `update(gradient, state, params)` returns the step t·d to add to the image (optax's sign
    convention: `optax.apply_updates(x, updates)`); one gradient evaluation per iteration.
    `storage_dtype` (e.g. bfloat16) stores the (s, y) ring buffers, the 2·memory image-sized
    arrays, in that dtype; they are read back into the gradient's dtype, and every dot product,
    curvature and the last pair (previous step and gradient) stay in full precision.
    """
    if memory_size < 1:
        raise ValueError(f"memory_size must be at least 1, got {memory_size}")

    def init(params):
        zeros = jnp.zeros_like(params)
        history = jnp.zeros((memory_size,) + params.shape, storage_dtype or params.dtype)
        return FixedStepLBFGSState(
            iteration=jnp.zeros((), jnp.int32), previous_gradient=zeros, previous_step=zeros,
            steps=history, gradient_changes=jnp.zeros_like(history),
            inverse_curvatures=jnp.zeros((memory_size,), params.dtype),
            newest=jnp.full((), -1, jnp.int32), kept=jnp.zeros((), jnp.int32),
            initial_scale=jnp.ones((), params.dtype))

    def update(gradient, state, params=None):
        del params
        first = state.iteration == 0
        change = gradient - state.previous_gradient
        curvature = _dot(change, state.previous_step)
        keep = jnp.logical_and(jnp.logical_not(first), curvature > CURVATURE_THRESHOLD)
        # A kept pair goes into the slot after the newest (the oldest once full); a skipped one
        # rewrites that slot with what it holds, so nothing else changes and nothing is copied.
        slot = (state.newest + 1) % memory_size
        stored = state.steps.dtype
        steps = state.steps.at[slot].set(
            jnp.where(keep, state.previous_step.astype(stored), state.steps[slot]))
        changes = state.gradient_changes.at[slot].set(
            jnp.where(keep, change.astype(stored), state.gradient_changes[slot]))
        inverse_curvatures = state.inverse_curvatures.at[slot].set(
            jnp.where(keep, 1.0 / jnp.where(keep, curvature, 1.0), state.inverse_curvatures[slot]))
        newest = jnp.where(keep, slot, state.newest)
        kept = jnp.minimum(state.kept + keep.astype(jnp.int32), memory_size)
        initial_scale = jnp.where(keep, curvature / jnp.maximum(_dot(change, change), 1e-30),
                                  state.initial_scale)

        # Two-loop recursion over the kept pairs only: newest to oldest, then back.
        def slot_of(k):  # k = 0 is the newest pair
            return (newest - k) % memory_size

        def backward(k, carry):
            q, alphas = carry
            i = slot_of(k)
            alpha = inverse_curvatures[i] * _dot(steps[i].astype(q.dtype), q)
            return q - alpha * changes[i].astype(q.dtype), alphas.at[i].set(alpha)

        q, alphas = jax.lax.fori_loop(0, kept, backward,
                                      (-gradient, jnp.zeros((memory_size,), gradient.dtype)))
        r = q * initial_scale

        def forward(k, r):
            i = slot_of(kept - 1 - k)
            beta = inverse_curvatures[i] * _dot(changes[i].astype(r.dtype), r)
            return r + (alphas[i] - beta) * steps[i].astype(r.dtype)

        direction = jax.lax.fori_loop(0, kept, forward, r)
        first_step = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(gradient)))
        step_size = jnp.where(first, first_step, 1.0) * learning_rate
        step = (step_size * direction).astype(gradient.dtype)
        return step, FixedStepLBFGSState(
            iteration=state.iteration + 1, previous_gradient=gradient, previous_step=step,
            steps=steps, gradient_changes=changes, inverse_curvatures=inverse_curvatures,
            newest=newest, kept=kept, initial_scale=initial_scale)

    return optax.GradientTransformation(init, update)
