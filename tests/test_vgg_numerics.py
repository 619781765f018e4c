"""Our VGG-19 against independent implementations, on the same synthetic weights and a real photo.

References: Keras 3 Applications' VGG19 (JAX backend, reading the Keras h5 file with Keras' own
loader) and a plain PyTorch network built from torch.nn.functional (reading the torchvision .pth).
Ours always goes convert -> params file -> load_params -> features.
"""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax.model.layers import CONV_LAYERS, LAYER_ORDER
from nst_jax.weights.convert import convert
from weights_tools.synthetic import write_synthetic
from datafiles import IMAGES


RELU_LAYERS = [name for name in LAYER_ORDER if name.startswith("relu")]
# Keras' conv layers include their ReLU (docs/WEIGHTS.md), so block4_conv2's output is relu4_2.
KERAS_TO_RELU = {f"block{block}_conv{index}": f"relu{block}_{index}"
                 for block, convs in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
                 for index in range(1, convs + 1)}
# torchvision's `features` indices of the 16 convolutions, and of the convolution before each pool.
TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
LAST_CONV_OF_BLOCK = {"conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"}

# (height, width): the Keras default size, and a non-square one whose odd halves pooling floors
# (136 -> 68 -> 34 -> 17 -> 8 -> 4, 200 -> 100 -> 50 -> 25 -> 12 -> 6).
SIZES = [(224, 224), (136, 200)]


def photo(height, width):
    """tubingen.jpg as float32 RGB in [0, 1], shape (1, height, width, 3); resized with PIL."""
    with Image.open(IMAGES / "tubingen.jpg") as image:
        resized = image.convert("RGB").resize((width, height), Image.BICUBIC)
    return (np.asarray(resized, np.float32) / 255.0)[None]


def tolerance(reference):
    """Float32 tolerances: relative 1e-4, absolute 1e-5 of the layer's largest activation."""
    return {"rtol": 1e-4, "atol": 1e-5 * float(np.abs(reference).max())}


def converted(tmp_path_factory, layout, name, expected_preprocessing, preprocessing=None):
    """Write a synthetic public file, convert it; returns (public file, params as loaded)."""
    folder = tmp_path_factory.mktemp(layout)
    public = folder / name
    write_synthetic(layout, public)
    convert(public, folder / "params.npz", preprocessing=preprocessing)
    params, metadata = nst_jax.load_params(folder / "params.npz")
    assert metadata.preprocessing == expected_preprocessing
    return public, params


def import_keras_on_jax():
    """Keras 3 with the JAX backend, or skip when this process already has it on another one."""
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        if keras.backend.backend() != "jax":
            pytest.skip(f"keras already imported with the {keras.backend.backend()} backend")
        return keras
    previous = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "jax"  # read once, when keras is first imported
    try:
        return pytest.importorskip("keras")
    finally:
        if previous is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = previous


# ---------------------------------------------------------------- Keras 3 (JAX backend) reference

@pytest.fixture(scope="module")
def keras_weights(tmp_path_factory):
    return converted(tmp_path_factory, "keras-h5", "vgg19_notop.h5", "caffe")


@pytest.fixture(scope="module")
def keras():
    return import_keras_on_jax()


@pytest.fixture(scope="module")
def keras_model(keras, keras_weights):
    """Keras Applications' VGG19 returning all 16 block*_conv* outputs (= relu1_1 ... relu5_4)."""
    h5_path, _ = keras_weights
    network = keras.applications.VGG19(weights=str(h5_path), include_top=False)
    return keras.Model(network.input, [network.get_layer(name).output for name in KERAS_TO_RELU])


@pytest.fixture(scope="module", params=SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def keras_and_ours(request, keras, keras_model, keras_weights):
    _, params = keras_weights
    image = photo(*request.param)
    keras_input = keras.applications.vgg19.preprocess_input(image * 255.0)
    reference = {KERAS_TO_RELU[name]: np.asarray(out)
                 for name, out in zip(KERAS_TO_RELU, keras_model(keras_input))}
    ours = nst_jax.features(params, nst_jax.preprocess(image, "caffe"), RELU_LAYERS)
    return image, keras_input, reference, ours


def test_caffe_preprocessing_matches_keras(keras_and_ours):
    image, keras_input, _, _ = keras_and_ours
    np.testing.assert_allclose(np.asarray(nst_jax.preprocess(image, "caffe")), keras_input,
                               rtol=1e-6, atol=1e-4)


def test_relu_layers_match_keras(keras_and_ours):
    image, _, reference, ours = keras_and_ours
    height, width = image.shape[1:3]
    for layer in RELU_LAYERS:
        halvings = int(layer[4]) - 1
        assert ours[layer].shape == reference[layer].shape == (
            1, height >> halvings, width >> halvings, reference[layer].shape[-1]), layer
        np.testing.assert_allclose(np.asarray(ours[layer]), reference[layer], err_msg=layer,
                                   **tolerance(reference[layer]))


def test_bfloat16_compute_is_close_to_float32(keras_weights):
    _, params = keras_weights
    vgg_input = nst_jax.preprocess(photo(64, 64), "caffe")
    full = nst_jax.features(params, vgg_input, RELU_LAYERS)
    half = nst_jax.features(params, vgg_input, RELU_LAYERS, dtype=jnp.bfloat16)
    for layer in RELU_LAYERS:
        assert half[layer].dtype == jnp.bfloat16, layer  # really computed in bfloat16
        reference = np.asarray(full[layer])
        # bfloat16 keeps 8 significant bits: errors of about 1% of the layer's scale are expected.
        np.testing.assert_allclose(np.asarray(half[layer].astype(jnp.float32)), reference,
                                   rtol=2e-2, atol=2.5e-2 * float(np.abs(reference).max()),
                                   err_msg=layer)


# ---------------------------------------------------------------- plain PyTorch reference

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torchvision_weights(torch, tmp_path_factory):
    # A .pth does not say which expected_preprocessing it was trained for; torchvision's is "torch".
    return converted(tmp_path_factory, "torchvision-pth", "vgg19-synthetic.pth", "torch",
                     preprocessing="torch")


def torch_features(torch, state_dict, image, pooling):
    """Every named activation (NHWC numpy) of VGG-19 written with torch.nn.functional (NCHW, OIHW)."""
    functional = torch.nn.functional
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pool = functional.max_pool2d if pooling == "max" else functional.avg_pool2d
    activations = {}
    with torch.no_grad():
        x = (torch.from_numpy(image).permute(0, 3, 1, 2) - mean) / std
        for index, conv in zip(TORCH_CONV_INDICES, CONV_LAYERS):
            x = functional.conv2d(x, state_dict[f"features.{index}.weight"],
                                  state_dict[f"features.{index}.bias"], stride=1, padding=1)
            activations[conv] = x
            x = functional.relu(x)
            activations["relu" + conv[4:]] = x
            if conv in LAST_CONV_OF_BLOCK:
                x = pool(x, kernel_size=2, stride=2)
                activations[f"pool{conv[4]}"] = x
    return {name: value.permute(0, 2, 3, 1).numpy() for name, value in activations.items()}


@pytest.mark.parametrize("pooling, size", [("max", (224, 224)), ("max", (136, 200)), ("avg", (136, 200))],
                         ids=["max-224x224", "max-136x200", "avg-136x200"])
def test_every_layer_matches_pytorch(torch, torchvision_weights, pooling, size):
    pth_path, params = torchvision_weights
    state_dict = torch.load(pth_path, weights_only=True)
    image = photo(*size)
    reference = torch_features(torch, state_dict, image, pooling)
    ours = nst_jax.features(params, nst_jax.preprocess(image, "torch"), LAYER_ORDER, pooling=pooling)
    assert sorted(reference) == sorted(LAYER_ORDER)
    for layer in LAYER_ORDER:
        assert ours[layer].shape == reference[layer].shape, layer
        np.testing.assert_allclose(np.asarray(ours[layer]), reference[layer], err_msg=layer,
                                   **tolerance(reference[layer]))
