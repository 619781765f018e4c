"""The loss and its image gradient on every path the engine can take (the plain network, blocks
recomputed in the backward pass, print-size column tiles, a vmapped batch) against one absolute
reference: PyTorch autograd in float64 through an independent VGG-19 with the same weights,
neural-style's preprocessing, Gram matrices ÷ (C·H·W), MSE style and mean content losses.

Other tests compare these paths with each other (tests/test_print_size.py, test_batch.py); this
one says that each of them is right, not only that they agree. Tolerances: float32 against
float64 through three convolutions of random weights; measured: 1.5e-7 relative for the loss,
8.7e-7 of the gradient's largest entry (none, blocks and tiles alike); allowed: 1e-5.
"""

import jax
import jax.numpy as jnp
import pytest

from nst_jax.engine.optimize import BATCH_AXES
from nst_jax.engine.stages import compute_targets
from nst_jax.loss.objective import Objective, loss_weights, total_loss

pytest.importorskip("torch")
from vgg_torch import assert_matches, reference_pictures, settings, torch_loss_and_gradient  # noqa: E402



@pytest.fixture(scope="module")
def pictures():
    return reference_pictures()


@pytest.mark.parametrize("remat", ["none", "blocks", "tiles"])
def test_each_network_path_matches_pytorch(params, pictures, remat):
    content, style, start, _ = pictures
    chosen = settings(remat=remat)
    objective = Objective.from_settings(chosen, "caffe")
    targets = compute_targets(objective, params, jnp.asarray(content), [jnp.asarray(style)])
    weights = loss_weights(chosen.loss.content_weight, chosen.loss.style_weight, chosen.loss.tv_weight)
    # Compiled (the objective static, the params an argument): eagerly each op dispatches alone.
    ours = jax.jit(jax.value_and_grad(total_loss, argnums=2), static_argnums=0)(
        objective, params, jnp.asarray(start), targets, weights)
    assert_matches(ours, torch_loss_and_gradient(params, content, style, start, chosen.loss.content_weight,
                                                 chosen.loss.style_weight))


@pytest.mark.parametrize("remat", ["none", "tiles"])
def test_a_vmapped_batch_matches_pytorch_member_by_member(params, pictures, remat):
    """Members with their own start image, style and weights, as the batched chunk maps them
    (optimize.BATCH_AXES): each member's loss and gradient are its own run's."""
    content, style, start, other = pictures
    chosen = settings(remat=remat)
    objective = Objective.from_settings(chosen, "caffe")
    targets = [compute_targets(objective, params, jnp.asarray(content), [jnp.asarray(painting)])
               for painting in (style, content)]
    weights = [loss_weights(5.0, 100.0, 0.0), loss_weights(2.0, 1000.0, 0.0)]
    stack = lambda *leaves: jnp.stack(leaves)  # noqa: E731
    batch_targets = jax.tree_util.tree_map(stack, *targets)
    batch_targets = type(batch_targets)(targets[0].content, batch_targets.style)  # content: shared
    loss_axes = BATCH_AXES[-2:]  # (targets, weights)
    batched = jax.jit(jax.vmap(jax.value_and_grad(total_loss, argnums=2), in_axes=(None, None, 0, *loss_axes)),
                      static_argnums=0)
    values, gradients = batched(objective, params, jnp.stack([start, other]), batch_targets,
                                jax.tree_util.tree_map(stack, *weights))
    for member, (painting, picture, (content_weight, style_weight)) in enumerate(
            [(style, start, (5.0, 100.0)), (content, other, (2.0, 1000.0))]):
        assert_matches((values[member], gradients[member]),
                       torch_loss_and_gradient(params, content, painting, picture, content_weight, style_weight))
