"""Each preset's loss on a fixed input equals its source's formula, written out in numpy.

The references below are float64 numpy transcriptions of each source's loss (the features
themselves come from our VGG, checked against Keras and PyTorch in test_vgg_numerics.py).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.loss.objective import (Objective, Targets, blend_grams, content_targets, loss_terms, loss_weights,
                               style_grams, vgg_features)
from nst_jax.config.presets import PRESETS, preset
from nst_jax.config.settings import Settings

HEIGHT, WIDTH = 40, 48  # non-square; deep enough for relu5_3 (2×3 at block 5)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.uniform(0, 1, (HEIGHT, WIDTH, 3)).astype(np.float32) for _ in range(3)]


def _features(objective, params, pixels):
    return {k: np.asarray(v, np.float64)[0] for k, v in vgg_features(objective, params, jnp.asarray(pixels)).items()}


def _gram(f, normalization):
    h, w, c = f.shape
    m = f.reshape(h * w, c)
    return m.T @ m / {"raw": 1, "hw": h * w, "chw": c * h * w}[normalization]


def _tv_reference(x, kind, beta):
    dh, dw = x[1:, :, :] - x[:-1, :, :], x[:, 1:, :] - x[:, :-1, :]
    if kind == "l1":  # tf.image.total_variation / neural-style-pt
        return np.abs(dh).sum() + np.abs(dw).sum()
    grid = dh[:, :-1] ** 2 + dw[:-1, :] ** 2  # common top-left (H-1)×(W-1) grid
    return 0.5 * grid.sum() if kind == "l2" else (grid ** (beta / 2)).sum()


# Each source's formula: (content term, style term per layer, TV) with its own normalizations.
def _reference_total(name, settings, x, p, a_features, image_positions):
    total_content = 0.0
    weights_c = settings.loss.content_layer_weights or (1.0,) * len(settings.loss.content_layers)
    for layer, w in zip(settings.loss.content_layers, weights_c):
        diff = x[layer] - p[layer]
        total_content += w * {"neural-style": np.mean(diff ** 2),  # nn.MSECriterion
                              "gatys": 0.5 * np.sum(diff ** 2),
                              "thesis": np.sum(diff ** 2),
                              "sandahl": np.sum(diff ** 2),
                              "keras-example": np.sum(diff ** 2),
                              "tf-tutorial": np.mean(diff ** 2),
                              "pytorch-tutorial": np.mean(diff ** 2)}[name]
    total_style = 0.0
    weights_s = settings.loss.style_layer_weights or (1.0,) * len(settings.loss.style_layers)
    for layer, w in zip(settings.loss.style_layers, weights_s):
        f = x[layer]
        h, wd, c = f.shape
        if name == "neural-style" or name == "pytorch-tutorial":  # G/(C·H·W), MSE
            e = np.mean((_gram(f, "chw") - _gram(a_features[layer], "chw")) ** 2)
        elif name in ("gatys", "sandahl"):  # E_l = Σ(G−A)²/(4N²M²)
            e = np.sum((_gram(f, "raw") - _gram(a_features[layer], "raw")) ** 2) / (4 * c ** 2 * (h * wd) ** 2)
        elif name == "thesis":
            e = np.sum((_gram(f, "raw") - _gram(a_features[layer], "raw")) ** 2)
        elif name == "keras-example":  # channels = 3, size = img_nrows * img_ncols
            e = np.sum((_gram(f, "raw") - _gram(a_features[layer], "raw")) ** 2) / (4.0 * 9 * image_positions ** 2)
        elif name == "tf-tutorial":  # gram / num_locations, reduce_mean
            e = np.mean((_gram(f, "hw") - _gram(a_features[layer], "hw")) ** 2)
        total_style += w * e
    return total_content, total_style


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_loss_matches_its_source_formula(name, params, images):
    settings = preset(name)
    objective = Objective.from_settings(settings, "caffe")
    content, style, start = (img * settings.loss.pixel_range for img in images)
    targets = Targets(content_targets(objective, params, jnp.asarray(content)),
                      blend_grams([style_grams(objective, params, jnp.asarray(style))], (1.0,)))
    weights = loss_weights(settings.loss.content_weight, settings.loss.style_weight, settings.loss.tv_weight)
    ours = {k: float(v) for k, v in loss_terms(objective, params, jnp.asarray(start), targets, weights).items()}

    x = _features(objective, params, start)
    p = _features(objective, params, content)
    a = _features(objective, params, style)
    ref_content, ref_style = _reference_total(name, settings, x, p, a, HEIGHT * WIDTH)
    ref_tv = _tv_reference(start.astype(np.float64), settings.loss.tv_loss, settings.loss.tv_beta)
    np.testing.assert_allclose(ours["content"], settings.loss.content_weight * ref_content, rtol=2e-4)
    np.testing.assert_allclose(ours["style"], settings.loss.style_weight * ref_style, rtol=2e-4)
    np.testing.assert_allclose(ours["tv"], settings.loss.tv_weight * ref_tv, rtol=2e-4, atol=1e-12)
    np.testing.assert_allclose(ours["total"], ours["content"] + ours["style"] + ours["tv"], rtol=1e-6)


def test_presets_name_their_source_and_differ():
    for name, make in PRESETS.items():
        assert make.__doc__ and len(make.__doc__.strip()) > 80, f"preset {name} needs a docstring naming its source"
    assert len({make() for make in PRESETS.values()}) == len(PRESETS)


def test_blended_target_is_the_weighted_mean_of_grams(params, images):
    objective = Objective.from_settings(Settings(), "caffe")
    grams = [style_grams(objective, params, jnp.asarray(img * 255)) for img in images[:2]]
    blended = blend_grams(grams, (3.0, 1.0))
    for layer in objective.style_layers:
        np.testing.assert_allclose(blended[layer], 0.75 * np.asarray(grams[0][layer]) + 0.25 * np.asarray(grams[1][layer]),
                                   rtol=1e-5)


@pytest.mark.parametrize("staircase", [False, True])
def test_the_learning_rate_decays_as_keras_exponential_decay(staircase):
    """SGD steps on a unit gradient move by the learning rate: ours against Keras 3's schedule."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")  # read once, when keras is first imported
    import keras

    from nst_jax.engine.optimize import OptimizerSpec, make_optimizer

    settings = preset("keras-example").replace(lr_decay_staircase=staircase)
    optimizer = make_optimizer(OptimizerSpec.from_settings(settings))
    reference = keras.optimizers.schedules.ExponentialDecay(100.0, 100, 0.96, staircase=staircase)
    state = optimizer.init(jnp.zeros(()))
    steps = {}
    for step in range(351):
        update, state = optimizer.update(jnp.ones(()), state)
        steps[step] = -float(update)
    for step in (0, 50, 99, 100, 150, 350):
        np.testing.assert_allclose(steps[step], float(reference(step)), rtol=1e-5)
    assert preset("keras-example").optimizer.lr_decay_staircase is False
