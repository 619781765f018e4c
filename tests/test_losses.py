"""Loss terms against references written directly from each formula (numpy float64) or PyTorch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.loss import terms as losses

pytestmark = pytest.mark.usefixtures("strict_rank_promotion")  # conftest.py

RTOL = 1e-5
SHAPE = (1, 4, 5, 3)  # one image, H=4, W=5, C=3: small enough for loops and finite differences


@pytest.fixture
def float64():
    """x64 for finite differences; the context manager restores the setting afterwards."""
    with jax.enable_x64(True):
        yield


def random_features(seed, shape=SHAPE, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ---- numpy float64 references, written from the formulas in docs/CONVENTIONS.md ----

def gram_reference(features, normalization):
    image = np.asarray(features, np.float64).reshape(features.shape[-3:])
    height, width, channels = image.shape
    product = np.einsum("hwc,hwd->cd", image, image)
    divisors = {"raw": 1, "hw": height * width, "chw": channels * height * width}
    return product / divisors[normalization]


def style_reference(features, target_gram, normalization, reduction, image_positions=None):
    height, width, channels = features.shape[-3:]
    squared = (gram_reference(features, normalization) - np.asarray(target_gram, np.float64)) ** 2
    if reduction == "gatys":
        return squared.sum() / (4.0 * channels**2 * (height * width) ** 2)
    if reduction == "mse":
        return squared.mean()
    if reduction == "sum":
        return squared.sum()
    return squared.sum() / (4.0 * 3**2 * float(image_positions) ** 2)


def tv_reference(image, kind, beta=2.5):
    """Loops over pixels, so that no slicing is shared with the code under test."""
    x = np.asarray(image, np.float64).reshape(image.shape[-3:])
    height, width, _ = x.shape
    total = 0.0
    if kind == "l1":
        for i in range(height - 1):
            for j in range(width):
                total += np.abs(x[i + 1, j] - x[i, j]).sum()
        for i in range(height):
            for j in range(width - 1):
                total += np.abs(x[i, j + 1] - x[i, j]).sum()
        return total
    for i in range(height - 1):
        for j in range(width - 1):
            # Keras example: a = (x[:h-1,:w-1] - x[1:,:w-1])², b = (x[:h-1,:w-1] - x[:h-1,1:])²
            a = (x[i, j] - x[i + 1, j]) ** 2
            b = (x[i, j] - x[i, j + 1]) ** 2
            total += (0.5 * (a + b)).sum() if kind == "l2" else ((a + b) ** (beta / 2)).sum()
    return total


def central_differences(function, x, eps=1e-6):
    """Numerical gradient of a scalar function, every element perturbed at once through vmap."""
    flat = x.reshape(-1)
    steps = np.eye(flat.size) * eps
    plus = jax.vmap(function)(jnp.asarray((flat + steps).reshape((-1,) + x.shape)))
    minus = jax.vmap(function)(jnp.asarray((flat - steps).reshape((-1,) + x.shape)))
    return np.asarray((plus - minus) / (2 * eps)).reshape(x.shape)


# ---- values ----

@pytest.mark.parametrize("normalization", losses.GRAM_NORMALIZATIONS)
@pytest.mark.parametrize("shape", [SHAPE, SHAPE[1:]])
def test_gram_matches_numpy(normalization, shape):
    features = random_features(0, shape)
    np.testing.assert_allclose(losses.gram(features, normalization),
                               gram_reference(features, normalization), rtol=RTOL)


def test_gram_of_a_known_matrix():
    # Two positions, two channels: F = [[1, 2], [3, 4]], so FᵀF = [[10, 14], [14, 20]] by hand.
    features = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], np.float32)  # (1, H=2, W=1, C=2)
    np.testing.assert_allclose(losses.gram(features), [[10, 14], [14, 20]])
    np.testing.assert_allclose(losses.gram(features, "hw"), [[5, 7], [7, 10]])
    np.testing.assert_allclose(losses.gram(features, "chw"), [[2.5, 3.5], [3.5, 5]])


@pytest.mark.parametrize("reduction,reference", [
    ("sum", lambda d: (d**2).sum()),
    ("mean", lambda d: (d**2).mean()),
    ("half_sum", lambda d: 0.5 * (d**2).sum()),
])
def test_content_loss_matches_numpy(reduction, reference):
    features, target = random_features(1), random_features(2)
    expected = reference(features.astype(np.float64) - target.astype(np.float64))
    np.testing.assert_allclose(losses.content_loss(features, target, reduction), expected,
                               rtol=RTOL)
    # The same loss from a sum over tiles of the image (remat "tiles"): Σ(F−P)² and H·W·C.
    halves = [np.sum(np.square(features[..., :2, :] - target[..., :2, :])),
              np.sum(np.square(features[..., 2:, :] - target[..., 2:, :]))]
    np.testing.assert_allclose(losses.content_loss_of_sum(jnp.float32(sum(halves)), features.size, reduction),
                               expected, rtol=RTOL)


def test_content_loss_accepts_either_rank():
    features, target = random_features(1), random_features(2)
    np.testing.assert_allclose(losses.content_loss(features[0], target),
                               losses.content_loss(features, target[0]), rtol=RTOL)


@pytest.mark.parametrize("reduction", losses.STYLE_LOSSES)
@pytest.mark.parametrize("normalization", losses.GRAM_NORMALIZATIONS)
def test_style_layer_loss_matches_numpy(reduction, normalization):
    features = random_features(3)
    target_gram = gram_reference(random_features(4), normalization).astype(np.float32)
    positions = 32 * 48  # the content image's H·W, deliberately not this layer's 4·5
    value = losses.style_layer_loss(features, target_gram, gram_normalization=normalization,
                                    style_loss=reduction, image_positions=positions)
    expected = style_reference(features, target_gram, normalization, reduction, positions)
    np.testing.assert_allclose(value, expected, rtol=RTOL)
    # From Gram products summed over two column tiles, as remat "tiles" has them.
    product = losses.gram_product(features[..., :3, :]) + losses.gram_product(features[..., 3:, :])
    height, width = features.shape[-3:-1]
    tiled = losses.gram_distance(losses.normalized_gram(product, height, width, normalization), target_gram,
                                 (height, width), reduction, positions)
    np.testing.assert_allclose(tiled, expected, rtol=RTOL)


def test_pytorch_tutorial_style_loss():
    # Reference: PyTorch (torch 2.x) as in its NST tutorial: G = F Fᵀ / (a·b·c·d), F.mse_loss.
    torch = pytest.importorskip("torch")
    features, style = random_features(5, (1, 6, 7, 4)), random_features(6, (1, 6, 7, 4))

    def torch_gram(nhwc):
        x = torch.from_numpy(nhwc).permute(0, 3, 1, 2).double()  # NCHW as torch models produce
        a, b, c, d = x.shape
        flat = x.reshape(a * b, c * d)
        return flat @ flat.T / (a * b * c * d)

    expected = torch.nn.functional.mse_loss(torch_gram(features), torch_gram(style)).item()
    value = losses.style_layer_loss(features, losses.gram(style, "chw"),
                                    gram_normalization="chw", style_loss="mse")
    np.testing.assert_allclose(value, expected, rtol=RTOL)


@pytest.mark.parametrize("kind", losses.TV_LOSSES)
def test_total_variation_matches_loops(kind):
    image = random_features(7, (1, 6, 7, 3))
    np.testing.assert_allclose(losses.total_variation(image, kind), tv_reference(image, kind),
                               rtol=RTOL)


def test_total_variation_power_uses_beta():
    image = random_features(8, (7, 5, 3))
    np.testing.assert_allclose(losses.total_variation(image, "power", tv_beta=3.0),
                               tv_reference(image, "power", beta=3.0), rtol=RTOL)


def test_neural_style_pt_tv_l1():
    # Reference: PyTorch, neural-style-pt's TVLoss on NCHW: Σ|x_diff| + Σ|y_diff| over full ranges.
    torch = pytest.importorskip("torch")
    image = random_features(9, (1, 6, 7, 3))
    x = torch.from_numpy(image).permute(0, 3, 1, 2).double()
    expected = ((x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum()
                + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum()).item()
    np.testing.assert_allclose(losses.total_variation(image, "l1"), expected, rtol=RTOL)


def test_weighted_sum():
    terms = {"relu1_1": jnp.float32(2.0), "relu2_1": jnp.float32(3.0)}
    np.testing.assert_allclose(losses.weighted_sum(terms, {"relu2_1": 10.0, "relu1_1": 0.5}), 31.0)
    np.testing.assert_allclose(losses.weighted_sum([1.0, 2.0], [3.0, 4.0]), 11.0)
    with pytest.raises(ValueError, match="relu2_1"):
        losses.weighted_sum(terms, {"relu1_1": 1.0})
    with pytest.raises(ValueError, match="2 terms but 1 weights"):
        losses.weighted_sum([1.0, 2.0], [1.0])


# ---- gradients ----

def loss_functions():
    """(name, function of one image) for every loss and option; targets made from fixed seeds."""
    target = random_features(11)
    target_gram = gram_reference(random_features(12), "raw")
    cases = [(f"content-{r}", functools.partial(losses.content_loss, target=target, content_loss=r))
             for r in losses.CONTENT_LOSSES]
    cases += [(f"style-{r}", functools.partial(losses.style_layer_loss, target_gram=target_gram,
                                               style_loss=r, image_positions=600))
              for r in losses.STYLE_LOSSES]
    cases += [("style-chw-mse", functools.partial(
        losses.style_layer_loss, target_gram=gram_reference(random_features(12), "chw"),
        gram_normalization="chw", style_loss="mse"))]
    cases += [(f"tv-{k}", functools.partial(losses.total_variation, tv_loss=k))
              for k in losses.TV_LOSSES]
    return cases


@pytest.mark.parametrize("name,function", loss_functions(), ids=[n for n, _ in loss_functions()])
def test_grad_matches_central_differences(float64, name, function):
    image = random_features(10, dtype=np.float64)
    analytic = np.asarray(jax.grad(function)(jnp.asarray(image)))
    assert analytic.dtype == np.float64
    numeric = central_differences(function, image)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * np.abs(numeric).max())


# The cotangents above are symmetric (a style loss's dL/dG is, when its target Gram is), and for a
# symmetric C a rule that transposes one factor (P·… for Pᵀ·…) gives the same gradient. Below, the
# cotangent is not symmetric, so F·C and F·Cᵀ differ and a transposed rule shows.

def asymmetric_matrix(seed, channels=SHAPE[-1]):
    draw = np.random.default_rng(seed).normal(size=(channels, channels))
    matrix = draw - 0.5 * draw.T  # 0.75·(draw − drawᵀ) + 0.25·(draw + drawᵀ)
    assert np.abs(matrix - matrix.T).max() > 0.5 * np.abs(matrix).max()  # far from symmetric
    return matrix


GRAM_DIVISORS = {"raw": lambda c, h, w: 1.0, "hw": lambda c, h, w: h * w, "chw": lambda c, h, w: c * h * w}


@pytest.mark.parametrize("normalization", losses.GRAM_NORMALIZATIONS)
def test_gram_gradient_for_an_asymmetric_cotangent(float64, normalization):
    """Σ C∘G with G = FᵀF / k: ∂/∂F = F·(C + Cᵀ) / k, elementwise, for every normalization."""
    features = random_features(30, dtype=np.float64)
    cotangent = asymmetric_matrix(31)
    height, width, channels = features.shape[-3:]
    flat = features.reshape(-1, channels)
    expected = (flat @ (cotangent + cotangent.T) / GRAM_DIVISORS[normalization](channels, height, width))
    expected = expected.reshape(features.shape)
    _, pullback = jax.vjp(lambda f: losses.gram(f, normalization), jnp.asarray(features))
    (gradient,) = pullback(jnp.asarray(cotangent))
    assert gradient.dtype == np.float64
    np.testing.assert_allclose(gradient, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    # F·C alone, or F·Cᵀ doubled, is what a transposed factor in the rule would give: far from it.
    for wrong in (flat @ cotangent, 2 * flat @ cotangent.T):
        wrong = wrong.reshape(features.shape) / GRAM_DIVISORS[normalization](channels, height, width)
        assert np.abs(wrong - expected).max() > 0.1 * np.abs(expected).max()
    # The same through jax.grad of a scalar, and for the unnormalized product over any positions.
    scalar = lambda f: jnp.sum(jnp.asarray(cotangent) * losses.gram(f, normalization))
    np.testing.assert_allclose(jax.grad(scalar)(jnp.asarray(features)), expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())
    positions = features.reshape(2, 10, channels)
    _, pullback = jax.vjp(losses.gram_product, jnp.asarray(positions))
    np.testing.assert_allclose(pullback(jnp.asarray(cotangent))[0],
                               (flat @ (cotangent + cotangent.T)).reshape(positions.shape), rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())


def test_gram_gradient_for_an_asymmetric_cotangent_by_central_differences(float64):
    """The same, without the formula: central differences of Σ C∘G in float64, elementwise."""
    features = random_features(32, dtype=np.float64)
    cotangent = jnp.asarray(asymmetric_matrix(33))
    function = lambda f: jnp.sum(cotangent * losses.gram(f))
    numeric = central_differences(function, features)
    analytic = np.asarray(jax.grad(function)(jnp.asarray(features)))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-8 * np.abs(numeric).max())


def style_gradient_reference(features, target_gram, normalization, style_loss, image_positions):
    """∂ style_layer_loss / ∂F transcribed from the formula: with D = ∂L/∂G (for a sum of squares of
    G − A, 2(G − A)/divisor), ∂L/∂F = F·(D + Dᵀ)/k, k the Gram normalization's divisor."""
    height, width, channels = features.shape[-3:]
    flat = np.asarray(features, np.float64).reshape(-1, channels)
    k = GRAM_DIVISORS[normalization](channels, height, width)
    difference = flat.T @ flat / k - np.asarray(target_gram, np.float64)
    divisor = {"gatys": 4.0 * channels**2 * (height * width) ** 2, "mse": channels**2, "sum": 1.0,
               "keras_example": 4.0 * 3**2 * float(image_positions) ** 2}[style_loss]
    d = 2.0 * difference / divisor
    return (flat @ (d + d.T) / k).reshape(features.shape)


@pytest.mark.parametrize("style_loss", losses.STYLE_LOSSES)
@pytest.mark.parametrize("normalization", losses.GRAM_NORMALIZATIONS)
def test_style_layer_loss_gradient_with_an_asymmetric_target(float64, style_loss, normalization):
    """A target Gram that is not symmetric makes ∂L/∂G = 2(G − A)/… asymmetric: the gradient
    with respect to the features against the formula and against central differences, in float64."""
    features = random_features(34, dtype=np.float64)
    height, width, channels = features.shape[-3:]
    scale = GRAM_DIVISORS[normalization](channels, height, width)
    target = asymmetric_matrix(35) * 3.0 / scale  # the size of this layer's own Gram entries
    function = functools.partial(losses.style_layer_loss, target_gram=jnp.asarray(target),
                                 gram_normalization=normalization, style_loss=style_loss,
                                 image_positions=600)
    analytic = np.asarray(jax.grad(function)(jnp.asarray(features)))
    assert analytic.dtype == np.float64
    expected = style_gradient_reference(features, target, normalization, style_loss, 600)
    np.testing.assert_allclose(analytic, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    numeric = central_differences(function, features)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * np.abs(numeric).max())


def test_tv_l2_gradient_is_neural_styles():
    image = random_features(13, (1, 5, 6, 3))
    # jcjohnson/neural-style's TVLoss:updateGradInput, transcribed to numpy on (H, W, C).
    x = image[0].astype(np.float64)
    x_diff = x[:-1, :-1] - x[:-1, 1:]
    y_diff = x[:-1, :-1] - x[1:, :-1]
    expected = np.zeros_like(x)
    expected[:-1, :-1] += x_diff + y_diff
    expected[:-1, 1:] -= x_diff
    expected[1:, :-1] -= y_diff
    gradient = jax.grad(functools.partial(losses.total_variation, tv_loss="l2"))(image)
    np.testing.assert_allclose(gradient[0], expected, rtol=RTOL, atol=1e-6)


def test_tv_power_gradient_is_finite_where_differences_vanish():
    constant = np.full((1, 4, 5, 3), 0.25, np.float32)
    gradient = jax.grad(functools.partial(losses.total_variation, tv_loss="power"))(constant)
    np.testing.assert_array_equal(gradient, np.zeros_like(constant))
    # Half flat, half noisy: the flat part must not poison the rest with NaN.
    mixed = constant.copy()
    mixed[:, 2:] = random_features(14, (1, 2, 5, 3))
    gradient = jax.grad(functools.partial(losses.total_variation, tv_loss="power"))(mixed)
    assert np.all(np.isfinite(gradient))


# ---- dtypes, batching, jit ----

def test_bfloat16_features_are_summed_in_float32():
    features = random_features(15).astype(jnp.bfloat16)
    target = random_features(16).astype(jnp.bfloat16)
    exact_features = np.asarray(features, np.float64)  # the bf16 values, summed exactly
    exact_target = np.asarray(target, np.float64)
    exact_gram = gram_reference(exact_target, "raw")
    results = {
        "gram": (losses.gram(features), gram_reference(exact_features, "raw")),
        "content": (losses.content_loss(features, target, "sum"),
                    ((exact_features - exact_target) ** 2).sum()),
        "style": (losses.style_layer_loss(features, exact_gram),
                  style_reference(exact_features, exact_gram, "raw", "gatys")),
        "tv": (losses.total_variation(features, "power"), tv_reference(exact_features, "power")),
    }
    for name, (value, expected) in results.items():
        assert value.dtype == jnp.float32, name
        np.testing.assert_allclose(value, expected, rtol=RTOL, err_msg=name)


def test_vmap_over_a_batch():
    batch = random_features(17, (3,) + SHAPE)  # (N, 1, H, W, C): N single images
    target_gram = gram_reference(random_features(18), "raw")
    style = functools.partial(losses.style_layer_loss, target_gram=target_gram, style_loss="gatys")
    expected = [style_reference(item, target_gram, "raw", "gatys") for item in batch]
    np.testing.assert_allclose(jax.vmap(style)(batch), expected, rtol=RTOL)
    # (N, H, W, C) mapped gives (H, W, C) items, also accepted.
    np.testing.assert_allclose(jax.vmap(style)(batch[:, 0]), expected, rtol=RTOL)
    tv = jax.vmap(functools.partial(losses.total_variation, tv_loss="l1"))(batch)
    np.testing.assert_allclose(tv, [tv_reference(item, "l1") for item in batch], rtol=RTOL)


def test_keras_example_positions_may_be_a_mapped_int32_array():
    # 512·512 positions: P² overflows int32, so the divisor must be formed in floating point.
    features = random_features(19)
    target_gram = gram_reference(random_features(20), "raw")
    positions = np.array([512 * 512, 64 * 64], np.int32)
    style = functools.partial(losses.style_layer_loss, features, target_gram,
                              style_loss="keras_example")
    values = jax.jit(jax.vmap(lambda p: style(image_positions=p)))(positions)
    expected = [style_reference(features, target_gram, "raw", "keras_example", p)
                for p in positions]
    np.testing.assert_allclose(values, expected, rtol=RTOL)


def test_jit_with_options_closed_over():
    features, target = random_features(21), random_features(22)
    loss = jax.jit(functools.partial(losses.content_loss, content_loss="mean"))
    np.testing.assert_allclose(loss(features, target),
                               ((features.astype(np.float64) - target) ** 2).mean(), rtol=RTOL)


# ---- errors ----

def test_content_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4, 5, 3\).*\(1, 4, 6, 3\)"):
        losses.content_loss(random_features(0), random_features(0, (1, 4, 6, 3)))


def test_style_target_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 3\)"):
        losses.style_layer_loss(random_features(0), np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("call", [
    lambda x: losses.gram(x),
    lambda x: losses.content_loss(x, x),
    lambda x: losses.style_layer_loss(x, np.zeros((3, 3))),
    lambda x: losses.total_variation(x),
])
def test_a_batch_axis_is_not_summed_over(call):
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 3\).*jax\.vmap"):
        call(random_features(0, (2, 4, 5, 3)))


def test_wrong_rank_is_rejected():
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        losses.gram(np.zeros((4, 5), np.float32))


@pytest.mark.parametrize("call,option", [
    (lambda x: losses.gram(x, "c"), "gram_normalization"),
    (lambda x: losses.content_loss(x, x, "l1"), "content_loss"),
    (lambda x: losses.style_layer_loss(x, np.zeros((3, 3)), style_loss="frobenius"), "style_loss"),
    (lambda x: losses.style_layer_loss(x, np.zeros((3, 3)), gram_normalization="n"),
     "gram_normalization"),
    (lambda x: losses.total_variation(x, "l3"), "tv_loss"),
])
def test_unknown_options_are_rejected(call, option):
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        call(random_features(0))


def test_keras_example_needs_image_positions():
    with pytest.raises(ValueError, match="image_positions"):
        losses.style_layer_loss(random_features(0), np.zeros((3, 3)), style_loss="keras_example")


def test_print_size_grams_do_not_overflow_int32():
    # 64 channels × 8192² positions = 2³²: the chw divisor must not travel as an int32.
    features = jax.ShapeDtypeStruct((8192, 8192, 64), jnp.float32)
    for normalization in losses.GRAM_NORMALIZATIONS:
        assert jax.eval_shape(lambda f: losses.gram(f, normalization), features).shape == (64, 64)
    target = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    for style_loss in losses.STYLE_LOSSES:
        value = jax.eval_shape(lambda f, t: losses.style_layer_loss(
            f, t, gram_normalization="chw", style_loss=style_loss, image_positions=8192 * 8192), features, target)
        assert value.shape == ()


def test_gram_product_has_forward_mode_and_a_one_product_gradient(float64):
    # A JVP rule (not a VJP): forward mode works, and JAX transposes P + Pᵀ into F·(dG + dGᵀ).
    features = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 4)))  # float64 under the fixture
    forward = jax.jacfwd(losses.gram_product)(features)
    reverse = jax.jacrev(losses.gram_product)(features)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)
    # The Jacobian from its definition: ∂G_cd/∂F_pc' = δ_cc' F_pd + δ_dc' F_pc.
    f = np.asarray(features).reshape(6, 4)
    expected = np.einsum("ce,pd->cdpe", np.eye(4), f) + np.einsum("de,pc->cdpe", np.eye(4), f)
    np.testing.assert_allclose(np.asarray(forward).reshape(4, 4, 6, 4), expected, rtol=1e-12, atol=1e-12)
    batched = jax.vmap(jax.jacfwd(losses.gram_product))(jnp.stack([features, 2 * features]))
    np.testing.assert_allclose(batched[1], 2 * forward, rtol=1e-12)
    # Reverse mode: one product of the features' size (JAX's own rule had two, then a sum).
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(losses.gram_product(x))))).lower(features).as_text()
    assert hlo.count("stablehlo.dot_general") == 2, hlo  # FᵀF forward, F·(dG + dGᵀ) backward
