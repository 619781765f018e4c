"""L-BFGS without a line search against torch.optim.LBFGS, the optimizer neural-style runs.

Reference: torch.optim.LBFGS(history_size=m, lr=1, line_search_fn=None, tolerance_grad=-1,
tolerance_change=-1) stepping one call of max_iter=N iterations, in float64, as neural-style-pt
calls it. Our transformation must visit the same iterates elementwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nst_jax.engine.lbfgs import fixed_step_lbfgs

torch = pytest.importorskip("torch")

SIZE = 40


def _problem(seed):
    """A smooth non-convex least-squares-plus-quartic function."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((SIZE, SIZE)) / np.sqrt(SIZE)
    target = rng.standard_normal(SIZE)
    start = rng.standard_normal(SIZE) * 0.5

    def jax_loss(x):
        r = matrix @ x - target
        return jnp.sum(r ** 2) + jnp.sum(0.25 * x ** 4 - 0.6 * x ** 2)

    def torch_loss(x):
        r = torch.from_numpy(matrix) @ x - torch.from_numpy(target)
        return torch.sum(r ** 2) + torch.sum(0.25 * x ** 4 - 0.6 * x ** 2)

    return jax_loss, torch_loss, start


def _torch_iterates(torch_loss, start, iterations, memory):
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    iterates = []
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=iterations, history_size=memory,
                                  tolerance_grad=-1, tolerance_change=-1, line_search_fn=None,
                                  max_eval=iterations * 2)

    def closure():
        optimizer.zero_grad()
        loss = torch_loss(x)
        loss.backward()
        iterates.append(x.detach().numpy().copy())  # the point this evaluation was at
        return loss

    optimizer.step(closure)
    iterates.append(x.detach().numpy().copy())
    return np.array(iterates[1:])  # after each iteration (the first evaluation is the start)


def _our_iterates(jax_loss, start, iterations, memory):
    optimizer = fixed_step_lbfgs(learning_rate=1.0, memory_size=memory)

    @jax.jit
    def step(x, state):
        updates, state = optimizer.update(jax.grad(jax_loss)(x), state, x)
        return optax.apply_updates(x, updates), state

    x, state, iterates, kept = jnp.asarray(start), None, [], []
    state = optimizer.init(x)
    for _ in range(iterations):
        x, state = step(x, state)
        iterates.append(np.asarray(x))
        kept.append(int(state.kept))
    return np.array(iterates), kept


@pytest.mark.parametrize("memory", [3, 100])  # 3: the ring buffer wraps; 100: never fills
@pytest.mark.parametrize("seed", [0, 1])
def test_iterates_equal_torch_lbfgs_without_line_search(memory, seed):
    jax_loss, torch_loss, start = _problem(seed)
    iterations = 25
    with jax.enable_x64(True):
        ours, kept = _our_iterates(jax_loss, start, iterations, memory)
    theirs = _torch_iterates(torch_loss, start, iterations, memory)
    assert theirs.shape == ours.shape == (iterations, SIZE)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    assert max(kept) == min(memory, iterations - 1) or memory == 100


def test_pairs_without_curvature_are_skipped_as_torch_does():
    """Fixed steps across a rippled function: pairs with y·s ≤ 1e-10 are refused (12 of 29 here),
    and the iterates still match torch's."""
    start = np.random.default_rng(2).standard_normal(SIZE) * 1.5

    def jax_loss(x):
        return jnp.sum(0.05 * x ** 2 - jnp.cos(2 * x))

    def torch_loss(x):
        return torch.sum(0.05 * x ** 2 - torch.cos(2 * x))

    with jax.enable_x64(True):
        ours, kept = _our_iterates(jax_loss, start, 30, 100)
    theirs = _torch_iterates(torch_loss, start, 30, 100)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    assert kept[-1] < 29, "no pair was skipped: the test does not exercise the skip"


def test_first_step_is_capped_by_the_gradient_l1_norm():
    optimizer = fixed_step_lbfgs(memory_size=4)
    gradient = jnp.asarray([3.0, -4.0, 1.0])
    updates, _ = optimizer.update(gradient, optimizer.init(jnp.zeros(3)))
    np.testing.assert_allclose(np.asarray(updates), -np.asarray(gradient) / 8.0, rtol=1e-6)


def test_batched_under_vmap_equals_one_by_one():
    jax_loss, _, start = _problem(4)
    optimizer = fixed_step_lbfgs(memory_size=5)
    starts = jnp.stack([jnp.asarray(start, jnp.float32), jnp.asarray(start[::-1], jnp.float32)])

    def run(x):
        def body(_, carry):
            x, state = carry
            updates, state = optimizer.update(jax.grad(jax_loss)(x), state, x)
            return optax.apply_updates(x, updates), state
        return jax.lax.fori_loop(0, 12, body, (x, optimizer.init(x)))[0]

    batched = jax.jit(jax.vmap(run))(starts)
    for member, single_start in zip(batched, starts):
        np.testing.assert_allclose(np.asarray(member), np.asarray(jax.jit(run)(single_start)),
                                   rtol=2e-4, atol=1e-5)  # float32 reduction order
