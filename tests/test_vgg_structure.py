"""VGG-19's shape: parameter count, truncation at the deepest layer, layer names, params files."""

import dataclasses
import time

import jax
import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax.errors import WeightsFileError
from nst_jax.model.ops import with_adjoint_kernels
from nst_jax.weights.params_file import ParamsMetadata, load_params, save_params
from weights_tools.synthetic import synthetic_params
from datafiles import IMAGES


@pytest.fixture(scope="module")
def vgg_input():
    """A small real photo, preprocessed for Caffe-convention weights: (1, 48, 64, 3)."""
    with Image.open(IMAGES / "starry_night.jpg") as image:
        rgb = np.asarray(image.convert("RGB").resize((64, 48), Image.BICUBIC), np.float32) / 255.0
    return nst_jax.preprocess(rgb[None], "caffe")


def count_primitive(jaxpr, primitive):
    """Occurrences of `primitive` in a jaxpr and, recursively, in every sub-jaxpr (pjit, scan, ...)."""
    total = 0
    for equation in jaxpr.eqns:
        total += equation.primitive.name == primitive
        for value in equation.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):  # a Jaxpr
                    total += count_primitive(sub, primitive)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):  # a ClosedJaxpr
                    total += count_primitive(sub.jaxpr, primitive)
    return total


def test_parameter_count_is_vgg19s(params):
    # docs/WEIGHTS.md: 20,024,384 parameters in the convolutional part (80,097,536 bytes of float32).
    sizes = [array.size for layer in params.values() for array in layer.values()]
    assert len(params) == 16
    assert sum(sizes) == 20_024_384
    assert sum(array.nbytes for layer in params.values() for array in layer.values()) == 80_097_536


@pytest.mark.parametrize("layer, convolutions", [("relu2_1", 3), ("conv2_1", 3), ("relu4_2", 10),
                                                 ("block4_conv2", 10), ("pool5", 16)])
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_network_stops_at_the_deepest_layer_asked_for(params, vgg_input, layer, convolutions, jitted):
    def extract(params, image):
        return nst_jax.features(params, image, [layer])

    # Under jit every convolution sits in the jit equation's sub-jaxpr: counted all the same.
    jaxpr = jax.make_jaxpr(jax.jit(extract) if jitted else extract)(params, vgg_input)
    assert count_primitive(jaxpr.jaxpr, "conv_general_dilated") == convolutions


def test_later_layers_params_may_be_absent(params, vgg_input):
    first_three = {name: params[name] for name in ("conv1_1", "conv1_2", "conv2_1")}
    truncated = nst_jax.features(first_three, vgg_input, ["relu2_1"])
    full = nst_jax.features(params, vgg_input, ["relu2_1", "relu5_1"])
    np.testing.assert_array_equal(np.asarray(truncated["relu2_1"]), np.asarray(full["relu2_1"]))


def test_keras_names_are_aliases(params, vgg_input):
    by_alias = nst_jax.features(params, vgg_input, ["block4_conv2", "block1_pool"])
    by_name = nst_jax.features(params, vgg_input, ["relu4_2", "pool1"])
    assert sorted(by_alias) == ["pool1", "relu4_2"]
    for layer in by_name:
        np.testing.assert_array_equal(np.asarray(by_alias[layer]), np.asarray(by_name[layer]))
    assert nst_jax.canonical_layer("block4_conv2") == "relu4_2"
    assert nst_jax.canonical_layer("block1_pool") == "pool1"
    assert nst_jax.canonical_layer("conv4_2") == "conv4_2"


@pytest.mark.parametrize("unknown", ["relu9_9", "block6_conv1", "fc6"])
def test_unknown_layer_is_refused_by_name(params, vgg_input, unknown):
    with pytest.raises(ValueError, match=unknown):
        nst_jax.features(params, vgg_input, ["relu1_1", unknown])


def test_conv_is_before_relu(params, vgg_input):
    activations = nst_jax.features(params, vgg_input, ["conv4_2", "relu4_2"])
    conv, relu = np.asarray(activations["conv4_2"]), np.asarray(activations["relu4_2"])
    assert (conv < 0).any() and (conv > 0).any()
    # Written from the definition of ReLU with numpy: exact, not approximate.
    np.testing.assert_array_equal(relu, np.maximum(conv, 0.0))


# ---------------------------------------------------------------- the params file


METADATA = ParamsMetadata(preprocessing="torch", source_format="torchvision-pth",
                          source_file="vgg19-dcbb9e9d.pth", source_hash="sha256:" + "ab" * 32,
                          synthetic=True)


def test_params_file_round_trip(tmp_path):
    written = synthetic_params(seed=3)
    path = tmp_path / "params.npz"
    save_params(path, written, METADATA)
    started = time.perf_counter()
    loaded, metadata = load_params(path)
    print(f"load_params: {time.perf_counter() - started:.3f} s for 80 MB")  # informative, not asserted
    assert metadata == METADATA
    assert sorted(loaded) == sorted(written)
    for layer, arrays in written.items():
        assert loaded[layer]["kernel"].dtype == np.float32
        np.testing.assert_array_equal(loaded[layer]["kernel"], arrays["kernel"])
        np.testing.assert_array_equal(loaded[layer]["bias"], arrays["bias"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.npz"]  # no temporary file left


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsFileError, match="random.npz"):
        load_params(path)


def test_npz_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, **{f"{layer}/{kind}": array for layer, arrays in synthetic_params().items()
                      for kind, array in arrays.items()})
    with pytest.raises(WeightsFileError, match="plain.npz.*metadata"):
        load_params(path)


def test_wrong_shape_is_refused_naming_file_and_layer(tmp_path):
    damaged = synthetic_params()
    damaged["conv3_2"] = {"kernel": np.zeros((3, 3, 128, 256), np.float32),
                          "bias": damaged["conv3_2"]["bias"]}
    path = tmp_path / "damaged.npz"
    save_params(path, damaged, dataclasses.replace(METADATA, preprocessing="caffe"))
    with pytest.raises(WeightsFileError, match=r"damaged.npz.*conv3_2.*\(3, 3, 128, 256\)"):
        load_params(path)


def test_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(WeightsFileError, match="absent.npz"):
        load_params(tmp_path / "absent.npz")


def test_prepared_adjoint_kernels_give_the_same_features_and_image_gradient(params, vgg_input):
    prepared = with_adjoint_kernels(params)
    assert set(prepared["conv3_1"]) == {"kernel", "bias", "adjoint_kernel"}
    assert "adjoint_kernel" not in params["conv3_1"]  # the caller's dict is left alone
    layers = ("relu1_1", "relu3_1", "relu4_2")

    def loss(weights, image):
        return sum(jax.numpy.sum(a * a) for a in nst_jax.features(weights, image, layers).values())

    value_and_gradient = jax.jit(jax.value_and_grad(loss, argnums=1))
    ours, theirs = (value_and_gradient(w, vgg_input) for w in (prepared, params))
    assert float(ours[0]) == float(theirs[0])
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(theirs[1]))
    # The adjoint kernel really is what the input gradient uses: a wrong one changes it (the
    # program compiled for `prepared` serves it: the same structure, other values).
    conv2_1 = prepared["conv2_1"]  # (conv1_1's 3 input channels take another path)
    broken = {**prepared, "conv2_1": {**conv2_1, "adjoint_kernel": -conv2_1["adjoint_kernel"]}}
    assert not np.allclose(np.asarray(value_and_gradient(broken, vgg_input)[1]), np.asarray(ours[1]))


def test_the_engine_rotates_kernels_once_per_run_not_in_each_step(params):
    """The engine's params (nst_jax.engine.stylize.prepare_params, which stylize_batch runs before
    compiling) carry the adjoint kernels: nothing traced in the chunk rotates any."""
    from nst_jax.config.presets import preset
    from nst_jax.engine.optimize import OptimizerSpec, init_state, make_chunk, make_optimizer
    from nst_jax.engine.stylize import prepare_params
    from nst_jax.loss.objective import Objective, Targets, content_targets, loss_weights, style_grams
    from nst_jax.model.ops import ConvImpl, adjoint_kernel

    traced_rotations = []

    def counting(kernel):
        if isinstance(kernel, jax.core.Tracer):
            traced_rotations.append(kernel.shape)
        return adjoint_kernel(kernel)

    settings = preset("neural-style").replace(num_steps=2, image_size=24, content_layers=("relu2_1",),
                                              style_layers=("relu1_1", "relu2_1"))
    objective = dataclasses.replace(Objective.from_settings(settings, "caffe"), conv=ConvImpl(rotate=counting))
    prepared = prepare_params(params, objective)
    pixels = jax.numpy.asarray(np.random.default_rng(0).random((24, 24, 3), np.float32) * 255)
    targets = Targets(content_targets(objective, prepared, pixels), style_grams(objective, prepared, pixels))
    weights = loss_weights(1.0, 1.0, 1.0)

    def trace(weights_of_the_network, optimizer):
        spec = OptimizerSpec.from_settings(settings.replace(optimizer=optimizer))
        state = init_state(make_optimizer(spec), pixels)
        jax.make_jaxpr(make_chunk(objective, spec))(pixels, state, 2, weights_of_the_network, targets, weights)

    for optimizer in ("adam", "lbfgs"):
        trace(prepared, optimizer)
    assert traced_rotations == []
    # The check can fail: unprepared params are rotated inside the traced loss.
    trace({layer: params[layer] for layer in prepared}, "adam")
    assert traced_rotations


@pytest.mark.parametrize("in_channels", [1, 3, 8, 9, 64])  # both input-gradient paths, and the edge
def test_conv3x3_same_gradients_equal_jax_autodiff_of_the_convolution(in_channels):
    from nst_jax.model.ops import adjoint_kernel, conv3x3_same

    rng = np.random.default_rng(in_channels)
    x = jax.numpy.asarray(rng.standard_normal((2, 7, 10, in_channels), np.float32))
    kernel = jax.numpy.asarray(rng.standard_normal((3, 3, in_channels, 16), np.float32))
    cotangent = jax.numpy.asarray(rng.standard_normal((2, 7, 10, 16), np.float32))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)

    ours, our_vjp = jax.vjp(lambda x, k: conv3x3_same(x, k, adjoint_kernel(k)), x, kernel)
    theirs, their_vjp = jax.vjp(reference, x, kernel)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-5)
    for got, expected in zip(jax.jit(our_vjp)(cotangent), their_vjp(cotangent)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5,
                                   atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 7, 9, 4)])  # even, and odd (last row/column dropped)
def test_max_pool_gradient_goes_to_the_first_maximum_as_torch_gives_it(shape):
    """Integer-valued input: most windows hold ties. Forward equals flax's nn.max_pool; the
    gradient equals torch's max_pool2d backward (and XLA's select-and-scatter) elementwise."""
    import flax.linen as nn
    import torch

    from nst_jax.model.ops import max_pool_2x2

    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 3, shape).astype(np.float32)
    cotangent = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32)
    ours, vjp = jax.vjp(max_pool_2x2, jax.numpy.asarray(x))
    flax_pooled, flax_vjp = jax.vjp(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding="VALID"),
                                    jax.numpy.asarray(x))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax_pooled))
    (gradient,) = jax.jit(vjp)(jax.numpy.asarray(cotangent))
    np.testing.assert_array_equal(np.asarray(gradient), np.asarray(flax_vjp(jax.numpy.asarray(cotangent))[0]))

    reference = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    torch.nn.functional.max_pool2d(reference, 2).backward(torch.from_numpy(cotangent).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(gradient), reference.grad.permute(0, 2, 3, 1).numpy())
    # The check can fail: sharing tied gradients (jnp.max's own rule) differs on this input.
    shared = jax.vjp(lambda v: v[:, : shape[1] // 2 * 2, : shape[2] // 2 * 2].reshape(
        shape[0], shape[1] // 2, 2, shape[2] // 2, 2, shape[3]).max(axis=(2, 4)), jax.numpy.asarray(x))[1]
    assert not np.array_equal(np.asarray(shared(jax.numpy.asarray(cotangent))[0]), np.asarray(gradient))


def test_prepared_params_are_reused_only_for_read_only_or_jax_arrays(synthetic_params_path, params):
    """A second run in one process reuses the prepared kernels when its arrays are the same
    read-only ones (load_params's) or jax.Arrays; writable numpy arrays are prepared anew, so
    changing one in place between runs is seen."""
    from nst_jax.config.presets import preset
    from nst_jax.engine.stylize import prepare_params
    from nst_jax.loss.objective import Objective
    from nst_jax.model.ops import ADJOINT

    loaded, _ = load_params(synthetic_params_path)
    with pytest.raises(ValueError, match="read-only"):
        loaded["conv1_1"]["kernel"][0, 0, 0, 0] = 1.0
    deep = Objective.from_settings(preset("neural-style"), "caffe")
    shallow = Objective.from_settings(preset("neural-style").replace(
        content_layers=("relu2_1",), style_layers=("relu1_1",)), "caffe")
    first = prepare_params(loaded, deep)
    second = prepare_params(loaded, deep)
    assert second["conv4_1"][ADJOINT] is first["conv4_1"][ADJOINT]  # reused, not rotated again
    second["conv1_1"] = None  # the dict handed out is the caller's: changing it changes nothing later
    assert prepare_params(loaded, deep)["conv1_1"][ADJOINT] is first["conv1_1"][ADJOINT]
    assert set(prepare_params(loaded, shallow)) == {"conv1_1", "conv1_2", "conv2_1"}
    from_jax = prepare_params(params, deep)
    assert prepare_params(params, deep)["conv4_1"][ADJOINT] is from_jax["conv4_1"][ADJOINT]

    writable = jax.tree_util.tree_map(np.array, loaded)
    prepare_params(writable, deep)
    writable["conv1_1"]["kernel"] *= 2.0
    changed = prepare_params(writable, deep)
    np.testing.assert_array_equal(np.asarray(changed["conv1_1"]["kernel"]), 2.0 * loaded["conv1_1"]["kernel"])
    # The adjoint kernel is the kernel flipped in space with its channels swapped, of the new values.
    np.testing.assert_array_equal(np.asarray(changed["conv1_1"][ADJOINT]),
                                  np.swapaxes(writable["conv1_1"]["kernel"][::-1, ::-1], 2, 3))
