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

Two forms of d = −H·g, equal in exact arithmetic (`FORMS`; "auto" picks by backend):
- "two-loop", the recursion torch runs: 2·kept dependent iterations, each a dot product and an
  update of one image-sized vector. On a CPU it is the cheaper one: XLA's CPU backend runs those
  fused vector operations faster than matrix products with a few columns (1.4–3.1× with 100
  pairs held, `python -m bench lbfgs`), and early in a run it reads only the pairs kept so far.
- "compact" (Byrd, Nocedal & Schnabel 1994): a few matrix products over all slots. On a GPU each
  of the two-loop's iterations is a kernel launch and, as the loop's count is data-dependent, a
  host round trip: with 100 pairs at 512 × 512 px on an H200 an update took 5.9 ms that way and
  0.63 ms this way (`python -m bench lbfgs`). With S and Y the kept pairs oldest first, γ = H₀,
  R the upper triangle of SᵀY and D its diagonal:

      a = R⁻¹ Sᵀg,   p = R⁻ᵀ ((D + γ YᵀY) a − γ Yᵀg),   H·g = γ g + S p − γ Y a

  SᵀY and YᵀY are kept up to date one row and column per iteration (by slot), so an iteration
  reads each history twice (Sᵀ·[y, g] and Yᵀ·[s, y, g], then S p and Y a), as the two loops do.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.typing import DTypeLike

# torch.optim.LBFGS keeps a pair only when y·s exceeds this.
CURVATURE_THRESHOLD = 1e-10
# The two-loop form keeps a bfloat16 history as the values' bits. XLA's CPU backend computes
# bfloat16 in float32: reading pairs of a bfloat16 array in a loop, or writing one slot, made it
# convert the whole history (temporaries 2.5 × the history's bytes, each step); bits it only moves.
BFLOAT16_BITS = jnp.uint16
FORMS = ("auto", "two-loop", "compact")


def resolve_form(form: str) -> str:
    """The form "auto" means here: the two-loop recursion on a CPU, the compact form elsewhere."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "auto":
        return "two-loop" if jax.default_backend() == "cpu" else "compact"
    return form


class FixedStepLBFGSState(NamedTuple):
    iteration: jax.Array  # int32: iterations done
    previous_gradient: jax.Array
    previous_step: jax.Array  # t·d of the last iteration
    steps: jax.Array  # (memory, *shape): s pairs, ring buffer (bfloat16 as bits: BFLOAT16_BITS)
    gradient_changes: jax.Array  # (memory, *shape): y pairs
    curvatures: jax.Array  # (memory,): s_i·y_i by slot; 0 in unused slots
    # (2, memory, memory): SᵀY and YᵀY by slot for the compact form; (2, 0, 0) for the two-loop.
    pair_products: jax.Array
    newest: jax.Array  # int32: slot of the newest pair (−1 before the first)
    kept: jax.Array  # int32: pairs held, ≤ memory
    initial_scale: jax.Array  # H₀ = y·s / y·y of the newest pair


def to_storage(vectors: jax.Array, history_dtype: DTypeLike) -> jax.Array:
    """Float vectors as a history of `history_dtype` holds them: rounded to its dtype, or for a
    bfloat16 history kept as bits (uint16), rounded to bfloat16 and reinterpreted."""
    if jnp.dtype(history_dtype) == BFLOAT16_BITS:
        return lax.bitcast_convert_type(vectors.astype(jnp.bfloat16), BFLOAT16_BITS)
    return vectors.astype(history_dtype)


def _from_storage(pair, dtype):
    """One stored pair as `dtype` (float32): bfloat16 bits are a float32's upper half."""
    if pair.dtype == BFLOAT16_BITS:
        return lax.bitcast_convert_type(pair.astype(jnp.uint32) << 16, jnp.float32).astype(dtype)
    return pair.astype(dtype)


def _dot(a, b):  # HIGHEST: a GPU's default float32 product rounds to TF32
    return jnp.vdot(a, b, precision=lax.Precision.HIGHEST).real


def _split(vectors, dtype):
    """`vectors` (k, n) as 2k rows of `dtype`: high parts, then remainders. Products of a bfloat16
    history with both keep about 16 bits of the float32 vectors instead of bfloat16's 8."""
    high = vectors.astype(dtype)
    return jnp.concatenate([high, (vectors - high.astype(vectors.dtype)).astype(dtype)])


def _history_products(history, vectors):
    """(memory, k): each stored pair's dot product with each of the k vectors (k, *shape), in
    float32 whatever the history's dtype (never a float32 copy of a bfloat16 history); one
    matrix product, so one pass over the history."""
    flat = history.reshape(history.shape[0], -1)
    columns = vectors.reshape(vectors.shape[0], -1)
    dims = (((1,), (1,)), ((), ()))
    if flat.dtype == columns.dtype:  # HIGHEST: a GPU's default float32 product rounds to TF32
        return lax.dot_general(flat, columns, dims, precision=lax.Precision.HIGHEST)
    parts = lax.dot_general(flat, _split(columns, flat.dtype), dims, preferred_element_type=columns.dtype)
    return parts[:, :len(columns)] + parts[:, len(columns):]


def _history_combination(history, coefficients, dtype):
    """Σ_i coefficients[i]·history[i], in `dtype`, shaped like one pair (one pass over the history)."""
    flat = history.reshape(history.shape[0], -1)
    dims = (((1,), (0,)), ((), ()))
    rows = coefficients.astype(dtype)[None]
    if flat.dtype == dtype:
        total = lax.dot_general(rows, flat, dims, precision=lax.Precision.HIGHEST)[0]
    else:
        parts = lax.dot_general(_split(rows, flat.dtype), flat, dims, preferred_element_type=dtype)
        total = parts[0] + parts[1]
    return total.reshape(history.shape[1:])


def _two_loop_product(gradient, steps, changes, curvatures, newest, kept, initial_scale):
    """H·g by the two-loop recursion over the kept pairs only: newest to oldest, then back."""
    memory = steps.shape[0]
    inverse_curvatures = jnp.where(curvatures > 0, 1.0 / jnp.where(curvatures > 0, curvatures, 1.0), 0.0)

    def slot_of(k):  # k = 0 is the newest pair
        return (newest - k) % memory

    def backward(k, carry):
        q, alphas = carry
        i = slot_of(k)
        alpha = inverse_curvatures[i] * _dot(_from_storage(steps[i], q.dtype), q)
        return q - alpha * _from_storage(changes[i], q.dtype), alphas.at[i].set(alpha)

    q, alphas = lax.fori_loop(0, kept, backward, (gradient, jnp.zeros((memory,), gradient.dtype)))
    r = q * initial_scale

    def forward(k, r):
        i = slot_of(kept - 1 - k)
        beta = inverse_curvatures[i] * _dot(_from_storage(changes[i], r.dtype), r)
        return r + (alphas[i] - beta) * _from_storage(steps[i], r.dtype)

    return lax.fori_loop(0, kept, forward, r)


def _compact_product(gradient, steps, changes, curvatures, pair_products, steps_dot_gradient,
                     changes_dot_gradient, newest, kept, initial_scale):
    """H·g in the compact form (module docstring), with the pairs in ring-buffer slots and their
    products with g (by slot) already made."""
    memory, dtype = steps.shape[0], gradient.dtype
    order = (newest - kept + 1 + jnp.arange(memory)) % memory  # slots oldest first, then unused ones
    valid = jnp.arange(memory) < kept
    both = valid[:, None] & valid[None, :]
    step_change, change_change = (products[order][:, order] for products in pair_products)
    # Unused positions decouple: a unit diagonal and zero products leave them at zero.
    upper = jnp.where(both, jnp.triu(step_change), jnp.eye(memory, dtype=dtype))
    upper = jnp.where(jnp.eye(memory, dtype=bool) & valid, curvatures[order], upper)
    diagonal = jnp.where(valid, curvatures[order], 0.0)
    change_change = jnp.where(both, change_change, 0.0)
    s_dot_g = jnp.where(valid, steps_dot_gradient[order], 0.0)
    y_dot_g = jnp.where(valid, changes_dot_gradient[order], 0.0)
    a = lax.linalg.triangular_solve(upper, s_dot_g[:, None], left_side=True, lower=False)[:, 0]
    inner = (diagonal * a + initial_scale * jnp.matmul(change_change, a, precision=lax.Precision.HIGHEST)
             - initial_scale * y_dot_g)
    p = lax.linalg.triangular_solve(upper, inner[:, None], left_side=True, lower=False,
                                    transpose_a=True)[:, 0]
    # Back to slots (order is a permutation), then one pass over each history.
    p_by_slot = jnp.zeros_like(p).at[order].set(p)
    a_by_slot = jnp.zeros_like(a).at[order].set(a)
    return (initial_scale * gradient + _history_combination(steps, p_by_slot, dtype)
            - initial_scale * _history_combination(changes, a_by_slot, dtype))


def fixed_step_lbfgs(learning_rate: float = 1.0, memory_size: int = 100,
                     storage_dtype: Optional[DTypeLike] = None,
                     form: str = "auto") -> optax.GradientTransformation:
    """torch.optim.LBFGS without a line search, as an optax transformation of one array.

    `update(gradient, state, params)` returns the step t·d to add to the image (optax's sign
    convention: `optax.apply_updates(x, updates)`); one gradient evaluation per iteration.
    `storage_dtype` (e.g. bfloat16) stores the (s, y) ring buffers, the 2·memory image-sized
    arrays, in that dtype (the two-loop form keeps bfloat16 as its bits, `to_storage`); products
    with them are accumulated in the gradient's dtype, and the curvature products, H₀ and the last
    pair (previous step and gradient) stay in full precision.
    `form`: how H·g is computed (`FORMS`, module docstring); the iterates are the same.
    """
    if memory_size < 1:
        raise ValueError(f"memory_size must be at least 1, got {memory_size}")
    compact = resolve_form(form) == "compact"
    products_size = memory_size if compact else 0
    # The compact form's matrix products take bfloat16 itself (accelerators run them natively).
    bits = not compact and storage_dtype is not None and jnp.dtype(storage_dtype) == jnp.bfloat16
    history_dtype = BFLOAT16_BITS if bits else storage_dtype

    def init(params):
        zeros = jnp.zeros_like(params)
        history = jnp.zeros((memory_size,) + params.shape, history_dtype or params.dtype)
        return FixedStepLBFGSState(
            iteration=jnp.zeros((), jnp.int32), previous_gradient=zeros, previous_step=zeros,
            steps=history, gradient_changes=jnp.zeros_like(history),
            curvatures=jnp.zeros((memory_size,), params.dtype),
            pair_products=jnp.zeros((2, products_size, products_size), params.dtype),
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
        s_stored = jnp.where(keep, to_storage(state.previous_step, stored), state.steps[slot])
        y_stored = jnp.where(keep, to_storage(change, stored), state.gradient_changes[slot])
        steps = state.steps.at[slot].set(s_stored)
        changes = state.gradient_changes.at[slot].set(y_stored)
        curvatures = state.curvatures.at[slot].set(jnp.where(keep, curvature, state.curvatures[slot]))
        newest = jnp.where(keep, slot, state.newest)
        kept = jnp.minimum(state.kept + keep.astype(jnp.int32), memory_size)
        initial_scale = jnp.where(keep, curvature / jnp.maximum(_dot(change, change), 1e-30),
                                  state.initial_scale)
        pair_products = state.pair_products
        if compact:
            # One pass over each history: the new pair's row and column of SᵀY and YᵀY (from the
            # pair as stored) and every pair's product with g.
            s_new, y_new = _from_storage(s_stored, gradient.dtype), _from_storage(y_stored, gradient.dtype)
            with_y = _history_products(changes, jnp.stack([s_new, y_new, gradient]))  # y_j·(s, y, g)
            with_s = _history_products(steps, jnp.stack([y_new, gradient]))  # s_j·(y, g)
            step_change, change_change = pair_products
            pair_products = jnp.where(keep, jnp.stack([
                step_change.at[slot, :].set(with_y[:, 0]).at[:, slot].set(with_s[:, 0]),
                change_change.at[slot, :].set(with_y[:, 1]).at[:, slot].set(with_y[:, 1])]), pair_products)
            product = _compact_product(gradient, steps, changes, curvatures, pair_products, with_s[:, 1],
                                       with_y[:, 2], newest, kept, initial_scale)
        else:
            product = _two_loop_product(gradient, steps, changes, curvatures, newest, kept, initial_scale)
        direction = -product
        first_step = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(gradient)))
        step_size = jnp.where(first, first_step, 1.0) * learning_rate
        step = (step_size * direction).astype(gradient.dtype)
        return step, FixedStepLBFGSState(
            iteration=state.iteration + 1, previous_gradient=gradient, previous_step=step,
            steps=steps, gradient_changes=changes, curvatures=curvatures, pair_products=pair_products,
            newest=newest, kept=kept, initial_scale=initial_scale)

    return optax.GradientTransformation(init, update)
