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

from nst_jax.engine import lbfgs
from nst_jax.engine.lbfgs import fixed_step_lbfgs, resolve_form



@pytest.fixture(scope="module")
def torch():
    """PyTorch, for the tests held against torch.optim.LBFGS (the others run without it)."""
    return pytest.importorskip("torch")

SIZE = 40


def _problem(seed):
    """A smooth non-convex least-squares-plus-quartic function."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((SIZE, SIZE)) / np.sqrt(SIZE)
    target = rng.standard_normal(SIZE)
    start = rng.standard_normal(SIZE) * 0.5

    def jax_loss(x):  # HIGHEST: a GPU's default float32 product rounds to TF32
        r = jnp.matmul(matrix, x, precision=jax.lax.Precision.HIGHEST) - target
        return jnp.sum(r ** 2) + jnp.sum(0.25 * x ** 4 - 0.6 * x ** 2)

    def torch_loss(x):
        import torch
        r = torch.from_numpy(matrix) @ x - torch.from_numpy(target)
        return torch.sum(r ** 2) + torch.sum(0.25 * x ** 4 - 0.6 * x ** 2)

    return jax_loss, torch_loss, start


def _torch_run(torch_loss, start, iterations, memory):
    """torch's iterates after each of `iterations` iterations (one step call, as neural-style-pt
    makes it), and how many (s, y) pairs its history holds at the end (torch keeps the history in
    the optimizer's state only when step returns)."""
    import torch
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
    state = optimizer.state[x]
    assert state["n_iter"] == iterations
    # After each iteration (the first evaluation is the start).
    return np.array(iterates[1:]), len(state["old_dirs"])


def _torch_iterates(torch_loss, start, iterations, memory):
    return _torch_run(torch_loss, start, iterations, memory)[0]


def _torch_history_lengths(torch_loss, start, iterations, memory):
    """How many pairs torch's LBFGS holds after each of 1..iterations iterations: one run of k
    iterations for each k."""
    return [_torch_run(torch_loss, start, count, memory)[1] for count in range(1, iterations + 1)]


def _our_iterates(jax_loss, start, iterations, memory, form="auto"):
    optimizer = fixed_step_lbfgs(learning_rate=1.0, memory_size=memory, form=form)

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


@pytest.mark.parametrize("form", ["two-loop", "compact"])
@pytest.mark.parametrize("memory", [3, 10, 100])  # 3, 10: the ring buffer wraps; 100: never fills
@pytest.mark.parametrize("seed", [0, 1])
def test_iterates_equal_torch_lbfgs_without_line_search(memory, seed, form, torch):
    jax_loss, torch_loss, start = _problem(seed)
    iterations = 25
    with jax.enable_x64(True):
        ours, kept = _our_iterates(jax_loss, start, iterations, memory, form)
    theirs = _torch_iterates(torch_loss, start, iterations, memory)
    assert theirs.shape == ours.shape == (iterations, SIZE)
    # The pairs held after each iteration, as torch holds them: one more per iteration from the
    # second on (no pair is refused on this problem), capped at the memory once the buffer wraps.
    held = _torch_history_lengths(torch_loss, start, iterations, memory)
    assert held == [min(k, memory) for k in range(iterations)]
    assert kept == held
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("form", ["two-loop", "compact"])
def test_pairs_without_curvature_are_skipped_as_torch_does(form, torch):
    """Fixed steps across a rippled function: pairs with y·s ≤ 1e-10 are refused (12 of 29 here),
    and the iterates still match torch's."""
    start = np.random.default_rng(2).standard_normal(SIZE) * 1.5

    def jax_loss(x):
        return jnp.sum(0.05 * x ** 2 - jnp.cos(2 * x))

    def torch_loss(x):
        return torch.sum(0.05 * x ** 2 - torch.cos(2 * x))

    with jax.enable_x64(True):
        ours, kept = _our_iterates(jax_loss, start, 30, 100, form)
    theirs = _torch_iterates(torch_loss, start, 30, 100)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    assert kept[-1] < 29, "no pair was skipped: the test does not exercise the skip"
    assert kept == _torch_history_lengths(torch_loss, start, 30, 100)  # the same pairs refused


@pytest.mark.parametrize("form", ["two-loop", "compact"])
def test_first_step_is_capped_by_the_gradient_l1_norm(form):
    optimizer = fixed_step_lbfgs(memory_size=4, form=form)
    gradient = jnp.asarray([3.0, -4.0, 1.0])
    updates, _ = optimizer.update(gradient, optimizer.init(jnp.zeros(3)))
    np.testing.assert_allclose(np.asarray(updates), -np.asarray(gradient) / 8.0, rtol=1e-6)


@pytest.mark.parametrize("form", ["two-loop", "compact"])
def test_batched_under_vmap_equals_one_by_one(form):
    jax_loss, _, start = _problem(4)
    optimizer = fixed_step_lbfgs(memory_size=5, form=form)
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


def test_auto_is_the_two_loop_recursion_on_a_cpu_and_the_compact_form_elsewhere(monkeypatch):
    assert resolve_form("two-loop") == "two-loop" and resolve_form("compact") == "compact"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert resolve_form("auto") == "two-loop"
    assert fixed_step_lbfgs(memory_size=3).init(jnp.zeros(4)).pair_products.shape == (2, 0, 0)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_form("auto") == "compact"
    assert fixed_step_lbfgs(memory_size=3).init(jnp.zeros(4)).pair_products.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="form"):
        fixed_step_lbfgs(form="three-loop")


def test_the_compact_form_reads_a_bfloat16_history_with_float32_vectors():
    """bfloat16 pairs (--storage-dtype bfloat16): the compact form's matrix products split each
    float32 vector into two bfloat16 parts, so they keep ~16 bits of it where one bfloat16 copy
    keeps 8. Against float64 products of the same (bfloat16-valued) history."""
    rng = np.random.default_rng(6)
    history = jnp.asarray(rng.standard_normal((5, 7, 9, 3)), jnp.bfloat16)
    vectors = jnp.asarray(rng.standard_normal((3, 7, 9, 3)), jnp.float32)
    coefficients = jnp.asarray(rng.standard_normal(5), jnp.float32)
    exact_history = np.asarray(history.astype(jnp.float32), np.float64).reshape(5, -1)
    exact_vectors = np.asarray(vectors, np.float64).reshape(3, -1)
    products = np.asarray(lbfgs._history_products(history, vectors))
    expected = exact_history @ exact_vectors.T
    combination = np.asarray(lbfgs._history_combination(history, coefficients, jnp.float32)).ravel()
    expected_combination = np.asarray(coefficients, np.float64) @ exact_history
    assert products.dtype == combination.dtype == np.float32
    scale = np.abs(exact_history) @ np.abs(exact_vectors.T)  # the sums' magnitudes without cancellation
    assert np.max(np.abs(products - expected) / scale) < 3e-5
    assert np.max(np.abs(combination - expected_combination)
                  / (np.abs(np.asarray(coefficients, np.float64)) @ np.abs(exact_history))) < 3e-5
    # One bfloat16 copy of the vectors would be ~100x further off: the split is what holds it.
    rounded = np.asarray(vectors.astype(jnp.bfloat16).astype(jnp.float32), np.float64).reshape(3, -1)
    assert np.max(np.abs(exact_history @ rounded.T - expected) / scale) > 3e-4


@pytest.mark.parametrize("storage", [None, jnp.bfloat16])
def test_the_two_forms_agree_step_by_step_in_float32(storage):
    """Lockstep in float32: both forms get the same gradients and the same previous step each
    iteration (the ring buffer wraps: memory 5, 30 iterations), so every update compares the
    compact form's incrementally kept SᵀY and YᵀY against the two-loop's direct dot products."""
    jax_loss, _, start = _problem(7)
    optimizers = {form: fixed_step_lbfgs(memory_size=5, storage_dtype=storage, form=form)
                  for form in ("two-loop", "compact")}
    updates = {form: jax.jit(optimizer.update) for form, optimizer in optimizers.items()}
    x = jnp.asarray(start, jnp.float32)
    states = {form: optimizer.init(x) for form, optimizer in optimizers.items()}
    gradient_of = jax.jit(jax.grad(jax_loss))
    worst = 0.0
    for _ in range(30):
        gradient = gradient_of(x)
        steps = {}
        for form in optimizers:
            steps[form], states[form] = updates[form](gradient, states[form])
        assert int(states["compact"].kept) == int(states["two-loop"].kept)
        reference = np.asarray(steps["two-loop"])
        worst = max(worst, float(np.max(np.abs(np.asarray(steps["compact"]) - reference)) / np.max(np.abs(reference))))
        states["compact"] = states["compact"]._replace(previous_step=states["two-loop"].previous_step)
        x = x + steps["two-loop"]
    assert int(states["two-loop"].kept) == 5 and int(states["two-loop"].iteration) == 30
    assert worst < (1e-3 if storage else 1e-4), worst


SHARDED_COMPACT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from nst_jax.engine.lbfgs import fixed_step_lbfgs
optimizer = fixed_step_lbfgs(memory_size=4, form="compact")
target = np.random.default_rng(0).standard_normal((32, 24, 3)).astype(np.float32)
def loss(x):
    return jnp.sum((x - target) ** 2 * (1 + 0.1 * x ** 2))
@jax.jit
def run(x):
    def body(_, carry):
        x, state = carry
        update, state = optimizer.update(jax.grad(loss)(x), state, x)
        return x + update, state
    return jax.lax.fori_loop(0, 12, body, (x, optimizer.init(x)))[0]
start = jnp.full((32, 24, 3), 0.5, jnp.float32)
one = np.asarray(run(start))
rows = NamedSharding(Mesh(np.array(jax.devices()), ("rows",)), PartitionSpec("rows"))
four = run(jax.device_put(start, rows))
print(json.dumps({"devices": len(four.sharding.device_set), "scale": float(np.abs(one).max()),
                  "difference": float(np.abs(np.asarray(four) - one).max())}))
"""


def test_the_compact_form_split_by_rows_over_devices_equals_one_device():
    """The compact form's matrix products over (memory, H·W·C) when H is split over 4 devices
    (the CPU runs the two-loop, so the simulated-device runs of tests/test_print_size never do)."""
    from simulated import json_report, run_script

    report = json_report(run_script(SHARDED_COMPACT, devices=4))
    assert report["devices"] == 4
    assert report["difference"] <= 1e-5 * report["scale"], report


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's form and XLA's CPU backend")
@pytest.mark.parametrize("storage", [None, jnp.bfloat16])
def test_a_two_loop_update_keeps_no_copy_of_the_history(storage):
    """XLA's memory analysis of one jitted update, the state donated as the loop donates it: the
    temporaries are a few image-sized vectors, not a copy of the history. A bfloat16 history held
    as bfloat16 values made XLA's CPU backend convert all of it to float32 every update (2.5 ×
    the history's bytes); held as bits it is only read."""
    optimizer = fixed_step_lbfgs(memory_size=50, storage_dtype=storage, form="two-loop")
    image = jax.ShapeDtypeStruct((64, 64, 3), jnp.float32)
    state = jax.eval_shape(optimizer.init, image)
    compiled = jax.jit(optimizer.update, donate_argnums=(1,)).lower(image, state).compile()
    history_bytes = state.steps.size * state.steps.dtype.itemsize * 2
    assert compiled.memory_analysis().temp_size_in_bytes < 0.1 * history_bytes
