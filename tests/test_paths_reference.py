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
import numpy as np
import pytest

from nst_jax.config.presets import preset
from nst_jax.engine.optimize import BATCH_AXES
from nst_jax.engine.stages import compute_targets
from nst_jax.loss.objective import Objective, loss_weights, total_loss

torch = pytest.importorskip("torch")

HEIGHT, WIDTH = 32, 48  # column tiles: 4 of 12 columns
CONTENT, STYLES = "relu2_1", ("relu1_1", "relu2_1")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# VGG-19 up to relu2_1: (name, output channels) with "pool" for a 2×2 max pooling.
NETWORK = [("conv1_1", 64), ("relu1_1", 0), ("conv1_2", 64), ("relu1_2", 0), ("pool1", 0),
           ("conv2_1", 128), ("relu2_1", 0)]
LOSS_RTOL, GRADIENT_ATOL = 1e-5, 1e-5  # the gradient's, as a share of its largest entry


def settings(**changes):
    return preset("neural-style").replace(content_layers=(CONTENT,), style_layers=STYLES, tv_weight=0.0,
                                          **changes)


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(11)
    return [rng.uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32) for _ in range(4)]


def torch_features(params, rgb):
    """{layer: (C, H, W) float64} of RGB pixels in 0..255 (a torch tensor), neural-style's way:
    BGR minus the Caffe means, 3×3 convolutions padded by 1, ReLU, 2×2 max pooling."""
    x = rgb.flip(-1) - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64)
    x, found = x.permute(2, 0, 1)[None], {}
    for name, _ in NETWORK:
        if name.startswith("conv"):
            kernel = torch.from_numpy(np.transpose(np.asarray(params[name]["kernel"], np.float64), (3, 2, 0, 1)))
            bias = torch.from_numpy(np.asarray(params[name]["bias"], np.float64))
            x = torch.nn.functional.conv2d(x, kernel, bias, padding=1)
        elif name.startswith("relu"):
            x = torch.relu(x)
        else:
            x = torch.nn.functional.max_pool2d(x, 2)
        found[name] = x[0]
    return found


def torch_gram(features):
    channels, height, width = features.shape
    flat = features.reshape(channels, height * width)
    return flat @ flat.T / (channels * height * width)


def torch_loss_and_gradient(params, content, style, start, content_weight, style_weight):
    """(loss, its gradient with respect to the start image's RGB pixels), float64."""
    as_tensor = lambda picture: torch.from_numpy(np.asarray(picture, np.float64))  # noqa: E731
    target = torch_features(params, as_tensor(content))[CONTENT]
    style_features = torch_features(params, as_tensor(style))
    grams = {layer: torch_gram(style_features[layer]) for layer in STYLES}
    x = as_tensor(start).requires_grad_(True)
    found = torch_features(params, x)
    content_loss = torch.mean((found[CONTENT] - target) ** 2)
    style_loss = sum(torch.mean((torch_gram(found[layer]) - grams[layer]) ** 2) for layer in STYLES)
    loss = content_weight * content_loss + style_weight * style_loss
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


def assert_matches(ours, reference):
    (value, gradient), (reference_value, reference_gradient) = ours, reference
    np.testing.assert_allclose(float(value), reference_value, rtol=LOSS_RTOL)
    scale = np.abs(reference_gradient).max()
    np.testing.assert_allclose(np.asarray(gradient, np.float64) / scale, reference_gradient / scale,
                               rtol=0, atol=GRADIENT_ATOL)


@pytest.mark.parametrize("remat", ["none", "blocks", "tiles"])
def test_each_network_path_matches_pytorch(params, pictures, remat):
    content, style, start, _ = pictures
    chosen = settings(remat=remat)
    objective = Objective.from_settings(chosen, "caffe")
    targets = compute_targets(objective, params, jnp.asarray(content), [jnp.asarray(style)])
    weights = loss_weights(chosen.loss.content_weight, chosen.loss.style_weight, chosen.loss.tv_weight)
    ours = jax.value_and_grad(total_loss, argnums=2)(objective, params, jnp.asarray(start), targets, weights)
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
    batched = jax.vmap(jax.value_and_grad(total_loss, argnums=2), in_axes=(None, None, 0, *loss_axes))
    values, gradients = batched(objective, params, jnp.stack([start, other]), batch_targets,
                                jax.tree_util.tree_map(stack, *weights))
    for member, (painting, picture, (content_weight, style_weight)) in enumerate(
            [(style, start, (5.0, 100.0)), (content, other, (2.0, 1000.0))]):
        assert_matches((values[member], gradients[member]),
                       torch_loss_and_gradient(params, content, painting, picture, content_weight, style_weight))
