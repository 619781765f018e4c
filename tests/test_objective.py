"""The assembled objective: gradient normalization as neural-style computes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.config.settings import Settings
from nst_jax.loss import terms as losses
from nst_jax.loss.objective import Objective, loss_weights, total_loss, vgg_features
from nst_jax.config.presets import preset
from nst_jax.engine.stages import compute_targets
from weights_tools.synthetic import synthetic_params


def test_normalized_gradients_are_strength_times_unit_l1_gradients_per_layer():
    params = jax.tree_util.tree_map(jnp.asarray, synthetic_params(seed=1))
    settings = preset("neural-style").replace(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                                              tv_weight=0.0, normalize_gradients=True)
    objective = Objective.from_settings(settings, "caffe")
    rng = np.random.default_rng(0)
    content, style, start = (jnp.asarray(rng.uniform(0, 255, (20, 24, 3)).astype(np.float32)) for _ in range(3))
    targets = compute_targets(objective, params, content, [style])
    weights = loss_weights(settings.loss.content_weight, settings.loss.style_weight, 0.0)
    # Compiled, everything but the objective as arguments: an eager gradient dispatches each op.
    ours = jax.jit(jax.grad(total_loss, argnums=2), static_argnums=0)(objective, params, start, targets, weights)

    # Reference, following neural-style's ContentLoss/StyleLoss:updateGradInput: each layer's
    # gradient ∂E/∂F is divided by its L1 norm (+1e-8), times the layer's strength, then
    # back-propagated through the network to the image.
    layers = ("relu1_1", "relu2_1")
    features = jax.jit(lambda x, p: vgg_features(objective, p, x, layers))
    acts, pullback = jax.vjp(lambda x: features(x, params), start)
    cotangents = {layer: jnp.zeros_like(acts[layer]) for layer in layers}
    layer_losses = {
        ("content", "relu2_1"): lambda f: losses.content_loss(f, targets.content["relu2_1"], "mean"),
        ("style", "relu1_1"): lambda f: losses.style_layer_loss(f, targets.style["relu1_1"], gram_normalization="chw", style_loss="mse"),
        ("style", "relu2_1"): lambda f: losses.style_layer_loss(f, targets.style["relu2_1"], gram_normalization="chw", style_loss="mse"),
    }
    strengths = {"content": settings.loss.content_weight, "style": settings.loss.style_weight}
    for (kind, layer), loss in layer_losses.items():
        gradient = jax.grad(loss)(acts[layer])
        cotangents[layer] += strengths[kind] * gradient / (jnp.sum(jnp.abs(gradient)) + 1e-8)
    (reference,) = pullback(cotangents)
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=1e-6 * float(jnp.abs(reference).max()))

    # The loss value itself is unchanged by the normalization.
    plain = Objective.from_settings(settings.replace(normalize_gradients=False), "caffe")
    np.testing.assert_allclose(total_loss(objective, params, start, targets, weights),
                               total_loss(plain, params, start, targets, weights), rtol=1e-6)


def test_an_unresolved_auto_is_refused_not_guessed():
    """"auto" is the run's plan's to resolve (engine.plan); what compiles never takes it as "none"."""
    from nst_jax.engine.optimize import OptimizerSpec
    from nst_jax.engine.plan import plan_run
    from nst_jax.engine.stages import InputShapes
    settings = Settings.from_flat(remat="auto", lbfgs_memory="auto")
    with pytest.raises(ValueError, match="remat 'auto' must be resolved"):
        Objective.from_settings(settings, "caffe")
    with pytest.raises(ValueError, match="lbfgs_memory 'auto' must be resolved"):
        OptimizerSpec.from_settings(settings)
    planned = plan_run(settings, InputShapes((48, 64), ((48, 64),)), available=2**40).settings
    assert planned.network.remat == "none" and planned.optimizer.lbfgs_memory == 100
    assert Objective.from_settings(planned, "caffe").remat == "none"
