"""nst_jax.weights.convert and its readers, on synthetic files in every public layout."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from nst_jax import CONV_LAYERS, ParamsMetadata, load_params
from nst_jax.errors import UserInputError, WeightsFileError
from nst_jax.model.layers import BLOCKS
from nst_jax.weights import convert as convert_module
from nst_jax.weights.convert import convert, summary
from weights_tools.convert import main
from nst_jax.weights.layouts import (VGG19_CONVS, feature_layout, hwio_from_oihw, identify_by_hash,
                                   identify_by_name)
from nst_jax.weights.readers import sniff_format
from weights_tools.synthetic import synthetic_params, write_synthetic

# (layout, include_top, file name, expected preprocessing, expected source_format). The .pth
# files carry the published hash prefix in their names, the way torch hub names them.
CASES = [
    ("keras-h5", False, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "caffe", "keras-h5"),
    ("keras-h5", True, "vgg19_weights_tf_dim_ordering_tf_kernels.h5", "caffe", "keras-h5"),
    ("keras-h5-tf", False, "vgg19_tf_keras.h5", "caffe", "keras-h5-tf"),
    ("keras3-h5", False, "vgg19_keras3.hdf5", "caffe", "keras3-h5"),
    ("torchvision-pth", False, "vgg19-dcbb9e9d.pth", "torch", "torchvision-pth"),
    ("torchvision-pth", True, "vgg19-dcbb9e9d.pth", "torch", "torchvision-pth"),
    ("caffe-pth", False, "vgg19-d01eb7cb.pth", "caffe", "caffe-pth"),
    ("caffe-pth", True, "vgg19-d01eb7cb.pth", "caffe", "caffe-pth"),
    ("safetensors", False, "model.safetensors", "torch", "safetensors"),
]


def independent_hash(path, algorithm):
    """hashlib over the whole file at once: a reference that shares no code with our streaming."""
    return f"{algorithm}:{hashlib.new(algorithm, path.read_bytes()).hexdigest()}"


def assert_params_equal(params, truth):
    assert sorted(params) == sorted(truth)
    for layer in truth:
        for name in ("kernel", "bias"):
            assert params[layer][name].dtype == np.float32
            np.testing.assert_array_equal(params[layer][name], truth[layer][name],
                                          err_msg=f"{layer} {name}")


def leftovers(folder, keep):
    """Files in `folder` other than `keep` (a failed conversion must leave none)."""
    return sorted(path.name for path in folder.iterdir() if path.name not in keep)


# --- the table -------------------------------------------------------------------------------


def test_table_lists_vgg19_convs_at_public_positions():
    # docs/WEIGHTS.md: torchvision indices 0, 2, 5, ..., 34; Keras blockB_convI; ours convB_I.
    assert [index for _, _, index in VGG19_CONVS] == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25,
                                                      28, 30, 32, 34]
    assert [ours for ours, _, _ in VGG19_CONVS] == list(CONV_LAYERS)
    assert [keras for _, keras, _ in VGG19_CONVS] == [f"block{ours[4]}_conv{ours[6]}"
                                                      for ours in CONV_LAYERS]
    assert feature_layout(BLOCKS) == VGG19_CONVS


def test_hwio_from_oihw_moves_every_element():
    oihw = np.random.default_rng(1).standard_normal((5, 4, 3, 2))
    hwio = hwio_from_oihw(oihw)
    assert hwio.shape == (3, 2, 4, 5)
    for o, i, h, w in np.ndindex(oihw.shape):  # the definition, element by element
        assert hwio[h, w, i, o] == oihw[o, i, h, w]


def test_known_files_by_hash_and_name():
    assert identify_by_hash("md5", "253f8cb515780f3b799900260a226db6").source_format == "keras-h5"
    assert identify_by_hash("md5", "cbe5617147190e668d6c5d5026f83318").preprocessing == "caffe"
    assert identify_by_hash("sha256", "dcbb9e9d" + "0" * 56).preprocessing == "torch"
    assert identify_by_hash("sha256", "d01eb7cb" + "0" * 56).preprocessing == "caffe"
    assert identify_by_hash("sha256", "0" * 64) is None
    assert identify_by_hash("md5", "dcbb9e9d" + "0" * 24) is None  # the algorithm must match too
    assert identify_by_name("vgg19-d01eb7cb.pth").source_format == "caffe-pth"
    assert identify_by_name("my-vgg19.pth") is None


# --- every layout converts, values in place --------------------------------------------------


@pytest.mark.parametrize("layout, include_top, name, preprocessing, source_format", CASES,
                         ids=[f"{case[0]}{'-top' if case[1] else ''}" for case in CASES])
def test_every_layout_converts_to_the_truth(tmp_path, layout, include_top, name, preprocessing,
                                            source_format):
    public = tmp_path / name
    truth = write_synthetic(layout, public, seed=7, include_top=include_top)
    returned = convert(public, tmp_path / "params.npz")
    params, metadata = load_params(tmp_path / "params.npz")

    assert_params_equal(params, truth)  # HWIO orientation and channel order, element by element
    assert metadata == returned
    assert metadata.preprocessing == preprocessing
    assert metadata.source_format == source_format
    assert metadata.source_file == name
    algorithm = "md5" if layout.startswith("keras") else "sha256"
    assert metadata.source_hash == independent_hash(public, algorithm)
    assert metadata.layers == CONV_LAYERS
    assert metadata.synthetic


def test_converted_pth_computes_what_pytorch_computes(tmp_path):
    """Orientation against plain PyTorch (2.13, CPU): conv1_1 -> relu -> conv1_2 on one image."""
    torch = pytest.importorskip("torch")
    import nst_jax

    public = tmp_path / "vgg19-dcbb9e9d.pth"
    write_synthetic("torchvision-pth", public, seed=3)
    convert(public, tmp_path / "params.npz")
    params, _ = load_params(tmp_path / "params.npz")
    state = torch.load(public, weights_only=True)
    image = np.random.default_rng(0).standard_normal((1, 12, 10, 3)).astype(np.float32)

    x = torch.from_numpy(image).permute(0, 3, 1, 2)
    x = torch.nn.functional.conv2d(x, state["features.0.weight"], state["features.0.bias"], padding=1)
    x = torch.nn.functional.conv2d(torch.relu(x), state["features.2.weight"],
                                   state["features.2.bias"], padding=1)
    reference = x.permute(0, 2, 3, 1).numpy()
    ours = nst_jax.features({layer: params[layer] for layer in ("conv1_1", "conv1_2")}, image,
                            ["conv1_2"])["conv1_2"]
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4, atol=1e-4)


def test_pth_re_saved_in_zip_format_converts(tmp_path):
    # neural-style-pt and newer torch re-save files in the zip format, which the reader maps.
    torch = pytest.importorskip("torch")
    legacy = tmp_path / "legacy.pth"
    truth = write_synthetic("caffe-pth", legacy, seed=5, include_top=True)
    public = tmp_path / "vgg19-d01eb7cb.pth"
    torch.save(torch.load(legacy, weights_only=True), public)  # zip format is torch's default
    legacy.unlink()
    metadata = convert(public, tmp_path / "params.npz")
    assert_params_equal(load_params(tmp_path / "params.npz")[0], truth)
    assert (metadata.preprocessing, metadata.source_format) == ("caffe", "caffe-pth")


# --- preprocessing: format, hash, name, flag -------------------------------------------------


def test_unknown_pth_needs_the_flag(tmp_path):
    public = tmp_path / "my_vgg19.pth"
    truth = write_synthetic("torchvision-pth", public)
    out = tmp_path / "params.npz"
    with pytest.raises(UserInputError, match="--preprocessing") as caught:
        convert(public, out)
    assert str(public) in str(caught.value) and "\n" not in str(caught.value)
    assert leftovers(tmp_path, {public.name}) == []

    metadata = convert(public, out, preprocessing="caffe")
    assert (metadata.preprocessing, metadata.source_format) == ("caffe", "torchvision-pth")
    assert_params_equal(load_params(out)[0], truth)


def test_pth_convention_from_its_hash(tmp_path, monkeypatch):
    # No file of ours can have the published hash, so stand in for the hash function.
    public = tmp_path / "renamed.pth"
    write_synthetic("torchvision-pth", public)
    monkeypatch.setattr(convert_module, "file_digest", lambda path, algorithm: "d01eb7cb" + "0" * 56)
    metadata = convert(public, tmp_path / "params.npz")
    assert (metadata.preprocessing, metadata.source_format) == ("caffe", "caffe-pth")
    assert metadata.source_hash == "sha256:d01eb7cb" + "0" * 56


def test_flag_overrides_format(tmp_path):
    public = tmp_path / "vgg19.h5"
    write_synthetic("keras-h5", public)
    assert convert(public, tmp_path / "params.npz", preprocessing="torch").preprocessing == "torch"


def test_file_without_marker_is_not_synthetic(tmp_path):
    public = tmp_path / "vgg19.h5"
    write_synthetic("keras-h5", public)
    with h5py.File(public, "a") as file:
        for name in [name for name in file.attrs if "synthetic" in name]:
            del file.attrs[name]
    assert not convert(public, tmp_path / "params.npz").synthetic


def test_whole_saved_keras_model_converts(tmp_path):
    # model.save("x.h5") nests the weights under model_weights; Keras' loader looks there too.
    nested = tmp_path / "nested.h5"
    truth = write_synthetic("keras-h5-tf", nested)
    public = tmp_path / "model.h5"
    with h5py.File(nested, "r") as source, h5py.File(public, "w") as target:
        source.copy(source["/"], target, "model_weights")
        target["model_weights"].attrs.update(source.attrs)
    convert(public, tmp_path / "params.npz")
    assert_params_equal(load_params(tmp_path / "params.npz")[0], truth)


def test_keras_file_without_keras_attributes_is_walked(tmp_path):
    # Without layer_names / weight_names the reader walks the groups, kernels before biases.
    public = tmp_path / "vgg19.h5"
    truth = write_synthetic("keras-h5-tf", public)
    with h5py.File(public, "a") as file:
        del file.attrs["layer_names"]
        for group in file.values():
            del group.attrs["weight_names"]
    convert(public, tmp_path / "params.npz")
    assert_params_equal(load_params(tmp_path / "params.npz")[0], truth)


def test_summary_names_a_published_file():
    metadata = ParamsMetadata("caffe", "keras-h5", "notop.h5", "md5:253f8cb515780f3b799900260a226db6")
    line = summary("params.npz", metadata)
    assert line.endswith("the published vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert "\n" not in line and "SYNTHETIC" not in line


# --- bad files: one line each, naming the file and the problem, nothing written --------------


def refuse(public, *, match, preprocessing=None, error=WeightsFileError):
    """Convert, expect `error` matching `match`; check the message and that nothing was left."""
    out = public.parent / "params.npz"
    with pytest.raises(error, match=match) as caught:
        convert(public, out, preprocessing=preprocessing)
    message = str(caught.value)
    assert message.startswith(f"{public}: ") and "\n" not in message, message
    assert leftovers(public.parent, {public.name}) == []
    return message


def test_text_file_named_h5(tmp_path):
    public = tmp_path / "weights.h5"
    public.write_text("not weights\n")
    refuse(public, match="not an HDF5 file")


def test_truncated_h5(tmp_path):
    public = tmp_path / "vgg19.h5"
    write_synthetic("keras-h5", public)
    public.write_bytes(public.read_bytes()[: 30_000_000])
    refuse(public, match="truncated")


def test_keras_missing_layer_and_wrong_shape_reported_together(tmp_path):
    public = tmp_path / "vgg19.h5"
    write_synthetic("keras3-h5", public)
    with h5py.File(public, "a") as file:
        del file["block3_conv4"]
        file.attrs["layer_names"] = [name for name in file.attrs["layer_names"]
                                     if name != "block3_conv4"]
        del file["block1_conv1/block1_conv1/kernel"]
        file["block1_conv1"].create_dataset("block1_conv1/kernel", data=np.zeros((3, 3, 4, 64), "f4"))
    message = refuse(public, match="not the VGG-19 layout")
    assert "- conv3_4 (block3_conv4)" in message
    assert "; block1_conv1: kernel is (3,3,4,64), not (3,3,3,64)" in message


def test_torch_missing_unexpected_and_wrong_shape_reported_together(tmp_path):
    torch = pytest.importorskip("torch")
    source = tmp_path / "source.pth"
    write_synthetic("torchvision-pth", source)
    state = torch.load(source, weights_only=True)
    source.unlink()
    del state["features.16.weight"], state["features.16.bias"]
    state["features.99.weight"] = torch.zeros(3)
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    del state["features.2.bias"], state["features.5.weight"]
    public = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, public)
    message = refuse(public, match="not the VGG-19 layout")
    assert "- conv3_4 (features.16)" in message
    assert "+ features.99" in message
    assert "; features.0: kernel is (64,3,5,5), not (64,3,3,3)" in message
    assert "; features.2: no bias (64)" in message and "; features.5: no kernel (128,64,3,3)" in message


@pytest.mark.parametrize("layout, name", [
    ("keras-h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("torchvision-pth", "vgg16-397923af.pth"),
    ("safetensors", "vgg16.safetensors")])
def test_vgg16_is_refused_by_name(tmp_path, layout, name):
    public = tmp_path / name
    write_synthetic(layout, public, vgg16=True)
    message = refuse(public, match="this is VGG-16", preprocessing="torch")
    assert "needs VGG-19" in message


def test_torch_missing(tmp_path, monkeypatch):
    public = tmp_path / "vgg19-dcbb9e9d.pth"
    write_synthetic("torchvision-pth", public)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    refuse(public, match=r"pip install 'nst-jax\[torch\]'")


def test_safetensors_missing(tmp_path, monkeypatch):
    public = tmp_path / "model.safetensors"
    write_synthetic("safetensors", public)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    refuse(public, match=r"pip install 'nst-jax\[safetensors\]'")


def test_garbage_pth_and_safetensors(tmp_path):
    for name, kind in (("vgg19.pth", "PyTorch"), ("model.safetensors", "safetensors")):
        public = tmp_path / name
        public.write_bytes(bytes(range(256)) * 8)
        refuse(public, match=f"not a readable {kind} file")
        public.unlink()


def test_pickled_model_instead_of_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    public = tmp_path / "vgg19.pth"
    torch.save(torch.nn.Conv2d(3, 64, 3), public)
    refuse(public, match=r"holds a pickled torch\.nn\.modules\.conv\.Conv2d, not just tensors")
    torch.save({"epoch": 3, "state_dict": torch.nn.Conv2d(3, 64, 3).state_dict()}, public)
    refuse(public, match="entries epoch, state_dict are not tensors")


def test_unknown_extension_and_missing_file(tmp_path):
    public = tmp_path / "vgg19.bin"
    public.write_bytes(b"\0" * 64)
    refuse(public, match="cannot tell the weight format")
    with pytest.raises(WeightsFileError, match="no such file"):
        convert(tmp_path / "absent.h5", tmp_path / "params.npz")


# --- command line ----------------------------------------------------------------------------


def test_cli_prints_one_summary_line(tmp_path, capsys):
    public = tmp_path / "model.safetensors"
    write_synthetic("safetensors", public)
    main([str(public), "-o", str(tmp_path / "params.npz")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert "safetensors" in lines[0] and "preprocessing torch" in lines[0] and "SYNTHETIC" in lines[0]
    assert load_params(tmp_path / "params.npz")[1].preprocessing == "torch"


def test_cli_error_is_one_line_and_status_2(tmp_path, capsys):
    public = tmp_path / "weights.h5"
    public.write_text("not weights\n")
    assert main([str(public), "-o", str(tmp_path / "params.npz")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {public}: not an HDF5 file")
    assert captured.err.count("\n") == 1
    assert leftovers(tmp_path, {public.name}) == []


@pytest.mark.parametrize("case", ["no -o", "bad choice", "-o a folder", "unwritable -o"])
def test_cli_flag_and_output_errors_are_one_line(tmp_path, capsys, monkeypatch, case):
    public = tmp_path / "model.safetensors"
    write_synthetic("safetensors", public)
    (tmp_path / "folder.npz").mkdir()
    argv, named = {
        "no -o": ([str(public)], "error: -o/--out: missing; usage: python -m weights_tools.convert"),
        "bad choice": ([str(public), "-o", str(tmp_path / "p.npz"), "--preprocessing", "bgr"],
                       "error: --preprocessing: invalid choice"),
        "-o a folder": ([str(public), "-o", str(tmp_path / "folder.npz")], "is a directory"),
        "unwritable -o": ([str(public), "-o", str(tmp_path / "p.npz")], "cannot write it (read-only file system)"),
    }[case]
    if case == "unwritable -o":  # what a read-only folder or a full disk gives (root writes anywhere)
        def refuse(*args, **kwargs):
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr("nst_jax.weights.convert.save_params", refuse)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert named in (err.lower() if case == "unwritable -o" else err), err
    assert leftovers(tmp_path, {public.name, "folder.npz"}) == []


def test_cli_as_a_process_needs_preprocessing_for_unknown_pth(tmp_path):
    public = tmp_path / "my_vgg19.pth"
    write_synthetic("caffe-pth", public)
    out = tmp_path / "params.npz"
    command = [sys.executable, "-m", "weights_tools.convert", str(public), "-o", str(out)]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"error: {public}: ") and "Traceback" not in failed.stderr
    assert "--preprocessing" in failed.stderr and not out.exists()

    done = subprocess.run(command + ["--preprocessing", "caffe"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert_params_equal(load_params(out)[0], synthetic_params(seed=0))


# --- formats told by content, not by name ------------------------------------------------------


def _link(source, path):
    """`source` under another name (a hard link: the 80 MB files are not copied)."""
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)
    return path


@pytest.fixture(scope="module")
def public_files(tmp_path_factory, synthetic_params_path):
    """{format: (path, truth or None)}: one real file per format sniff_format tells apart."""
    folder = tmp_path_factory.mktemp("formats")
    files = {"params": (synthetic_params_path, None)}
    for kind, layout in (("hdf5", "keras-h5"), ("torch-pickle", "torchvision-pth"),
                         ("safetensors", "safetensors")):
        path = folder / f"source-{layout}"
        files[kind] = (path, write_synthetic(layout, path, seed=11))
    torch = pytest.importorskip("torch")
    zipped = folder / "source-zip"
    torch.save(torch.load(files["torch-pickle"][0], weights_only=True), zipped)  # torch's zip format
    files["torch-zip"] = (zipped, files["torch-pickle"][1])
    return files


# Names that say nothing, or the wrong thing, about the content.
MISLEADING_NAMES = ["weights.bin", "weights", "weights.h5", "weights.pth", "weights.safetensors",
                    "weights.npz"]


@pytest.mark.parametrize("kind", ["params", "hdf5", "torch-zip", "torch-pickle", "safetensors"])
def test_sniff_format_reads_the_content_not_the_name(tmp_path, public_files, kind):
    source, _ = public_files[kind]
    for name in MISLEADING_NAMES:
        assert sniff_format(_link(source, tmp_path / name)) == kind, name
        (tmp_path / name).unlink()


@pytest.mark.parametrize("kind, name", [("hdf5", "vgg19.pth"), ("torch-pickle", "vgg19-dcbb9e9d.h5"),
                                        ("torch-zip", "vgg19-dcbb9e9d"), ("safetensors", "model.bin")])
def test_public_file_under_a_wrong_name_converts(tmp_path, public_files, kind, name):
    source, truth = public_files[kind]
    public = _link(source, tmp_path / name)
    convert(public, tmp_path / "params.npz")
    assert_params_equal(load_params(tmp_path / "params.npz")[0], truth)


def test_hdf5_after_a_user_block_is_recognised(tmp_path):
    # HDF5 allows a user block of 512, 1024, ... bytes before its signature.
    path = tmp_path / "blocked"
    with h5py.File(path, "w", userblock_size=1024) as file:
        file["x"] = np.zeros(3)
    assert path.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    assert sniff_format(path) == "hdf5"


def test_converting_a_params_file_says_to_use_it_as_it_is(tmp_path, public_files):
    params = _link(public_files["params"][0], tmp_path / "params.bin")
    message = refuse(params, match="already an nst-jax params file")
    assert f"--weights {params}" in message


@pytest.mark.parametrize("name, content, claim", [
    ("weights.dat", bytes(range(256)) * 4, "cannot tell the weight format"),
    ("weights", b"", "cannot tell the weight format"),
    ("vgg19.pth", b"\x80", "not a readable PyTorch file"),  # a pickle byte but no protocol
    ("model.safetensors", (10**9).to_bytes(8, "little") + b"{}", "not a readable safetensors file"),
])
def test_unrecognised_file_names_itself_and_what_is_read(tmp_path, name, content, claim):
    public = tmp_path / name
    public.write_bytes(content)
    message = refuse(public, match=re.escape(claim))
    for accepted in ("nst-jax params file", "Keras .h5", "PyTorch .pth", "safetensors"):
        assert accepted in message


def test_zip_that_is_neither_ours_nor_torch(tmp_path):
    public = tmp_path / "vgg19.pth"
    np.savez(public.with_suffix(".npz"), kernel=np.ones(3))  # a NumPy archive, not ours
    public.with_suffix(".npz").rename(public)
    message = refuse(public, match="not a readable PyTorch file")
    assert "neither nst-jax metadata nor PyTorch's data.pkl" in message
