"""weights_tools.synthetic: random weights in exactly the public layouts (docs/WEIGHTS.md)."""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # read once, when keras is first imported

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nst_jax import CONV_LAYERS, load_params  # noqa: E402
from nst_jax.model.layers import conv_shape  # noqa: E402
from weights_tools.synthetic import LAYOUTS, synthetic_params, write_synthetic  # noqa: E402

MIB = 1 << 20
CONV_BYTES = 80_097_536  # docs/WEIGHTS.md: the convolutional part in float32
TORCH_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
KERAS_CONVS = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
               for i in range(1, n + 1)]
KERAS_LAYERS = [name for block in range(1, 6)
                for name in [c for c in KERAS_CONVS if c.startswith(f"block{block}_")]
                + [f"block{block}_pool"]]


def strings(values):
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def test_layouts_listed():
    assert LAYOUTS == ("keras-h5", "keras-h5-tf", "keras3-h5", "torchvision-pth", "caffe-pth",
                       "safetensors")


def test_params_are_he_initialised_and_seeded():
    params = synthetic_params(seed=0)
    assert list(params) == list(CONV_LAYERS)
    for layer, weights in params.items():
        kernel, bias = weights["kernel"], weights["bias"]
        assert kernel.shape == conv_shape(layer) and bias.shape == kernel.shape[-1:]
        assert kernel.dtype == bias.dtype == np.float32
        fan_in = 9 * kernel.shape[2]
        # He initialisation: std sqrt(2 / fan_in); at least 1728 samples, so within 10%.
        assert abs(kernel.std() / np.sqrt(2.0 / fan_in) - 1.0) < 0.1, layer
        assert np.all(bias != 0) and len(np.unique(bias)) == bias.size, layer
    again, other = synthetic_params(seed=0), synthetic_params(seed=1)
    np.testing.assert_array_equal(again["conv5_4"]["kernel"], params["conv5_4"]["kernel"])
    assert not np.array_equal(other["conv1_1"]["kernel"], params["conv1_1"]["kernel"])


def test_write_returns_synthetic_params(tmp_path):
    truth = write_synthetic("keras-h5", tmp_path / "vgg19.h5", seed=4)
    expected = synthetic_params(seed=4)
    for layer in CONV_LAYERS:
        np.testing.assert_array_equal(truth[layer]["kernel"], expected[layer]["kernel"])
        np.testing.assert_array_equal(truth[layer]["bias"], expected[layer]["bias"])


# --- each layout, read with the format's own library, not our readers ------------------------


def test_keras1_release_layout(tmp_path):
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    truth = write_synthetic("keras-h5", path)
    with h5py.File(path, "r") as file:
        assert strings(file.attrs["layer_names"]) == KERAS_LAYERS  # 21 names, no input layer
        assert "keras_version" not in file.attrs and "backend" not in file.attrs
        assert strings(file["block1_conv1"].attrs["weight_names"]) == ["block1_conv1_W_1:0",
                                                                      "block1_conv1_b_1:0"]
        assert len(file["block1_pool"].attrs["weight_names"]) == 0
        kernel = file["block5_conv4/block5_conv4_W_1:0"]
        assert kernel.shape == (3, 3, 512, 512) and kernel.dtype == np.float32
        np.testing.assert_array_equal(kernel[...], truth["conv5_4"]["kernel"])  # HWIO as stored
        np.testing.assert_array_equal(file["block1_conv1/block1_conv1_b_1:0"][...],
                                      truth["conv1_1"]["bias"])
    # Same size as the release (80,134,624 bytes) up to attributes and the marker.
    assert abs(os.path.getsize(path) - 80_134_624) < 64 * 1024


@pytest.mark.parametrize("layout, input_layer, suffix", [("keras-h5-tf", "input_1", ":0"),
                                                        ("keras3-h5", "input_layer", "")])
def test_later_keras_layouts(tmp_path, layout, input_layer, suffix):
    path = tmp_path / "vgg19.h5"
    truth = write_synthetic(layout, path, include_top=True)
    with h5py.File(path, "r") as file:
        assert strings(file.attrs["layer_names"]) == ([input_layer] + KERAS_LAYERS
                                                      + ["flatten", "fc1", "fc2", "predictions"])
        assert "keras_version" in file.attrs and "backend" in file.attrs
        assert strings(file["block2_conv1"].attrs["weight_names"]) == [
            f"block2_conv1/kernel{suffix}", f"block2_conv1/bias{suffix}"]
        np.testing.assert_array_equal(file[f"block2_conv1/block2_conv1/kernel{suffix}"][...],
                                      truth["conv2_1"]["kernel"])
        assert file[f"fc1/fc1/kernel{suffix}"].shape == (25088, 4096)
        assert file[f"predictions/predictions/kernel{suffix}"].shape == (4096, 1000)
        assert file[f"fc2/fc2/bias{suffix}"][...].max() == 0  # never written: the fill value
    assert os.path.getsize(path) < CONV_BYTES + MIB  # 123 M classifier parameters cost nothing


@pytest.mark.parametrize("layout, classifier", [("torchvision-pth", (0, 3, 6)),
                                                ("caffe-pth", (1, 4, 6))])
def test_torch_layouts(tmp_path, layout, classifier):
    torch = pytest.importorskip("torch")
    path = tmp_path / "vgg19.pth"
    truth = write_synthetic(layout, path, include_top=True)
    state = torch.load(path, weights_only=True)  # plain torch, as torchvision loads it
    expected = [f"features.{i}.{leaf}" for i in TORCH_INDICES for leaf in ("weight", "bias")]
    expected += [f"classifier.{i}.{leaf}" for i in classifier for leaf in ("weight", "bias")]
    assert list(state) == expected
    assert all(value.dtype == torch.float32 for value in state.values())
    assert state[f"classifier.{classifier[0]}.weight"].shape == (4096, 25088)
    assert state[f"classifier.{classifier[2]}.weight"].shape == (1000, 4096)
    weight = state["features.34.weight"].numpy()  # OIHW
    assert weight.shape == (512, 512, 3, 3)
    hwio = truth["conv5_4"]["kernel"]
    for o, i, h, w in [(0, 0, 0, 0), (3, 7, 0, 2), (511, 100, 2, 1), (17, 511, 1, 0)]:
        assert weight[o, i, h, w] == hwio[h, w, i, o]
    np.testing.assert_array_equal(state["features.0.bias"].numpy(), truth["conv1_1"]["bias"])
    assert os.path.getsize(path) < CONV_BYTES + MIB


def test_timm_safetensors_layout(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "model.safetensors"
    truth = write_synthetic("safetensors", path, include_top=True)
    with safetensors.safe_open(path, framework="np") as file:
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
        np.testing.assert_array_equal(file.get_tensor("features.10.weight"),
                                      np.einsum("hwio->oihw", truth["conv3_1"]["kernel"]))
        np.testing.assert_array_equal(file.get_tensor("head.fc.bias"), np.zeros(1000, np.float32))
        assert file.metadata()["format"] == "pt"
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["pre_logits.fc1.weight"] == (4096, 512, 7, 7)
    assert shapes["pre_logits.fc2.weight"] == (4096, 4096, 1, 1)
    assert shapes["head.fc.weight"] == (1000, 4096)
    assert len(shapes) == 2 * (16 + 3)
    assert os.stat(path).st_blocks * 512 < CONV_BYTES + MIB  # the classifier is a sparse hole


def test_vgg16_layouts(tmp_path):
    truth = write_synthetic("keras3-h5", tmp_path / "vgg16.h5", vgg16=True)
    assert len(truth) == 13 and "conv3_4" not in truth and "conv5_3" in truth
    with h5py.File(tmp_path / "vgg16.h5", "r") as file:
        assert "block3_conv4" not in file and "block5_conv3" in file


# --- Keras itself loads the h5 files ---------------------------------------------------------


def test_keras_loads_the_h5_files(tmp_path):
    keras = pytest.importorskip("keras")  # Keras 3 (JAX backend unless this process chose another)
    model = None
    for seed, layout in enumerate(("keras-h5", "keras-h5-tf", "keras3-h5")):
        path = tmp_path / f"{layout}.h5"
        truth = write_synthetic(layout, path, seed=seed)
        if model is None:
            model = keras.applications.VGG19(weights=str(path), include_top=False)
        else:
            model.load_weights(str(path))  # what VGG19(weights=path) does after building
        kernel, bias = model.get_layer("block4_conv2").get_weights()
        np.testing.assert_array_equal(kernel, truth["conv4_2"]["kernel"], err_msg=layout)
        np.testing.assert_array_equal(bias, truth["conv4_2"]["bias"], err_msg=layout)
        path.unlink()


# --- command line ----------------------------------------------------------------------------


def test_cli_writes_a_file_that_converts(tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    done = subprocess.run([sys.executable, "-m", "weights_tools.synthetic", "--layout",
                           "torchvision-pth", "--seed", "3", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "random" in done.stdout and "not for art" in done.stdout and str(path) in done.stdout

    from nst_jax.weights.convert import convert

    convert(path, tmp_path / "params.npz")
    params, metadata = load_params(tmp_path / "params.npz")
    assert metadata.synthetic and metadata.preprocessing == "torch"
    expected = synthetic_params(seed=3)
    for layer in CONV_LAYERS:
        np.testing.assert_array_equal(params[layer]["kernel"], expected[layer]["kernel"])


def test_cli_refuses_missing_directory(tmp_path, capsys):
    from weights_tools.synthetic import main

    assert main(["--layout", "keras-h5", str(tmp_path / "absent" / "vgg19.h5")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
