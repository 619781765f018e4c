"""Readers for public VGG-19 weight files: Keras .h5, PyTorch .pth, timm .safetensors.

`sniff_format` tells them (and our own params files) apart by content, never by file name.

Each reader lists the file's layers and shapes, lets `layouts.match_layers` check them against
the VGG-19 table, and only then reads the 16 convolutions (never the classifier), returning our
params: {"conv1_1": {"kernel": HWIO float32, "bias": (C,) float32}, ...}.
"""

import dataclasses
import os
import re
import struct
import zipfile
from typing import Any, Dict

import h5py
import numpy as np

from nst_jax.atomic import PathLike
from nst_jax.errors import WeightsFileError, reason
from nst_jax.weights.params_file import METADATA_ENTRY
from nst_jax.weights.layouts import KERAS, SYNTHETIC_MARKER, TORCH, hwio_from_oihw, match_layers

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What a user may have meant, from the extension, for a file whose content is no known format.
_CLAIMED_BY_EXTENSION = {".h5": "not an HDF5 file", ".hdf5": "not an HDF5 file",
                         ".pth": "not a readable PyTorch file", ".pt": "not a readable PyTorch file",
                         ".safetensors": "not a readable safetensors file",
                         ".npz": "not an nst-jax params file"}
ACCEPTED_FORMATS = ("an nst-jax params file (the output of python -m weights_tools.convert), Keras .h5 weights "
                    "(HDF5), a PyTorch .pth state dict (zip or legacy pickle) or timm .safetensors")


@dataclasses.dataclass(frozen=True)
class SourceWeights:
    """What a reader found: our params, the layout it recognised, and whether it is synthetic."""

    params: dict
    source_format: str
    synthetic: bool = False


def sniff_format(path: PathLike) -> str:
    """The format of a weight file from its content, whatever its name.

    Returns "params" (our .npz), "hdf5" (Keras), "torch-zip", "torch-pickle" (PyTorch's legacy
    format) or "safetensors". Raises WeightsFileError naming the file and the formats we read.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            head = stream.read(16)
            # HDF5 puts its signature at 0, or after a user block of 512, 1024, 2048... bytes.
            offset = 512
            while not head.startswith(_HDF5_SIGNATURE) and offset + 8 <= size:
                stream.seek(offset)
                if stream.read(8) == _HDF5_SIGNATURE:
                    return "hdf5"
                offset *= 2
    except FileNotFoundError:
        raise WeightsFileError(f"{path}: no such file") from None
    except OSError as error:
        raise WeightsFileError(f"{path}: cannot read it ({error.strerror})") from None
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode, protocol 2-5
        return "torch-pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:
        return "safetensors"  # u64 little-endian length of a JSON header, then the header
    raise _unrecognised(path, "its first bytes match no weight format")


def _sniff_zip(path):
    """Our params (.npz with our metadata entry) or a torch zip archive (a data.pkl inside)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise _unrecognised(path, f"a damaged zip archive: {reason(error, first_line=True)}") from None
    if METADATA_ENTRY in names:
        return "params"
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "torch-zip"
    raise _unrecognised(path, "a zip/npz archive with neither nst-jax metadata nor PyTorch's data.pkl")


def _unrecognised(path, why):
    claimed = _CLAIMED_BY_EXTENSION.get(os.path.splitext(path)[1].lower(), "cannot tell the weight format")
    return WeightsFileError(f"{path}: {claimed} ({why}); nst-jax reads {ACCEPTED_FORMATS}")


def read_weights(path: PathLike) -> SourceWeights:
    """Read any supported public VGG-19 file. Returns SourceWeights; raises WeightsFileError."""
    kind = sniff_format(path)
    if kind == "params":
        raise WeightsFileError(f"{path}: already an nst-jax params file, nothing to convert; "
                               f"use it as it is (nst_jax.cli.run --weights {path})")
    readers = {"hdf5": read_keras_h5, "torch-zip": read_torch_pth, "torch-pickle": read_torch_pth,
               "safetensors": read_safetensors}
    return readers[kind](path)


# --- Keras .h5 -------------------------------------------------------------------------------


def read_keras_h5(path: PathLike) -> SourceWeights:
    """Keras .h5 weights in any of the three namings, following `weight_names` like Keras does."""
    if not h5py.is_hdf5(path):
        raise WeightsFileError(f"{path}: not an HDF5 file, so not Keras .h5 weights")
    try:
        with h5py.File(path, "r") as file:
            root = file
            if "layer_names" not in file.attrs and "model_weights" in file:
                root = file["model_weights"]  # a whole model saved with model.save(), as Keras reads it
            layers = _keras_layer_weights(path, root)
            mapping = match_layers(path, {name: tuple(d.shape for d in datasets)
                                          for name, datasets in layers.items()}, KERAS)
            params = {ours: {"kernel": _float32(layers[public][0]), "bias": _float32(layers[public][1])}
                      for ours, public in mapping.items()}
            source_format = _keras_naming(layers[mapping["conv1_1"]][0].name)
            synthetic = SYNTHETIC_MARKER in file.attrs
    except OSError as error:  # h5py's error for damaged files; WeightsFileError is no OSError
        raise WeightsFileError(
            f"{path}: damaged or truncated HDF5 file ({reason(error, first_line=True)})") from None
    return SourceWeights(params, source_format, synthetic)


def _keras_layer_weights(path, root):
    """{layer name: [datasets in weight_names order]} for every layer that holds weights."""
    layer_names = _string_list(root.attrs, "layer_names")
    if layer_names is None:  # no Keras attributes: walk the groups instead
        layer_names = [name for name, item in root.items() if isinstance(item, h5py.Group)]
    layers = {}
    for layer in layer_names:
        if layer not in root:
            raise WeightsFileError(
                f"{path}: layer_names lists {layer!r} but the file has no such group")
        group = root[layer]
        weight_names = _string_list(group.attrs, "weight_names")
        if weight_names is None:
            datasets = _datasets_under(group)
        else:
            missing = [name for name in weight_names if name not in group]
            if missing:
                raise WeightsFileError(f"{path}: layer {layer!r} lists weights {missing} that the "
                                       f"file does not hold")
            datasets = [group[name] for name in weight_names]
        if datasets:
            layers[layer] = datasets
    return layers


def _string_list(attrs, name):
    """A list-of-strings attribute, joined across Keras' chunks (name0, name1, ...), or None."""
    if name in attrs:
        chunks = [attrs[name]]
    elif f"{name}0" in attrs:
        chunks, index = [], 0
        while f"{name}{index}" in attrs:
            chunks.append(attrs[f"{name}{index}"])
            index += 1
    else:
        return None
    return [item.decode("utf8") if isinstance(item, bytes) else str(item)
            for chunk in chunks for item in np.atleast_1d(chunk)]


def _datasets_under(group):
    """Datasets anywhere below `group`, kernels (more dimensions) before biases."""
    datasets = []
    group.visititems(lambda _, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
    return sorted(datasets, key=lambda dataset: (-dataset.ndim, dataset.name))


def _keras_naming(kernel_dataset_name):
    """Which Keras wrote the file, from a kernel's dataset name."""
    leaf = kernel_dataset_name.rsplit("/", 1)[-1]
    if "kernel" not in leaf:
        return "keras-h5"  # Keras 1 release: block1_conv1_W_1:0
    return "keras-h5-tf" if leaf.endswith(":0") else "keras3-h5"


# --- PyTorch .pth and timm .safetensors ------------------------------------------------------


def read_torch_pth(path: PathLike) -> SourceWeights:
    """A PyTorch state dict (torchvision or the Caffe conversion), loaded without running pickles."""
    try:
        import torch
    except ImportError:
        raise WeightsFileError(f"{path}: reading PyTorch .pth files needs torch: "
                               f"pip install 'nst-jax[torch]'") from None
    # Memory-map zip-format files so a 550 MB file with classifier is not read whole; the
    # 2017-era releases are legacy pickles, which torch can only read in full.
    memory_map = zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=memory_map)
    except Exception as error:  # torch reports bad files with many types (RuntimeError, EOFError...)
        raise WeightsFileError(f"{path}: {_torch_load_problem(error)}") from None
    if not isinstance(state, dict):
        raise WeightsFileError(
            f"{path}: holds a {type(state).__name__}, expected a state dict of tensors")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:  # e.g. a training checkpoint wrapping the state dict
        raise WeightsFileError(f"{path}: expected a state dict of tensors, but entries "
                               f"{', '.join(map(str, not_tensors[:5]))} are not tensors")
    params = _params_from_state_dict(path, {key: tuple(value.shape) for key, value in state.items()},
                                     lambda key: state[key].detach().to(torch.float32).numpy())
    is_caffe_layout = any(key.startswith("classifier.1.") for key in state)
    synthetic = SYNTHETIC_MARKER in (getattr(state, "_metadata", None) or {})
    return SourceWeights(params, "caffe-pth" if is_caffe_layout else "torchvision-pth", synthetic)


def _torch_load_problem(error):
    """What torch.load's (long, multi-line) complaint means for a user, in a few words."""
    text = str(error)
    pickled_class = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled_class:
        return (f"holds a pickled {pickled_class.group(1)}, not just tensors; "
                f"save its state_dict() instead")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return f"not a readable PyTorch file ({detail.group(1) if detail else reason(error, first_line=True)})"


def read_safetensors(path: PathLike) -> SourceWeights:
    """timm's vgg19.tv_in1k model.safetensors, read with the safetensors package's numpy API."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise WeightsFileError(f"{path}: reading .safetensors files needs the safetensors package: "
                               f"pip install 'nst-jax[safetensors]'") from None
    try:
        with safe_open(path, framework="np") as file:
            shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
            params = _params_from_state_dict(path, shapes, file.get_tensor)
            synthetic = SYNTHETIC_MARKER in (file.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise WeightsFileError(
            f"{path}: not a readable safetensors file ({reason(error, first_line=True)})") from None
    return SourceWeights(params, "safetensors", synthetic)


def _params_from_state_dict(path, shapes_by_key, load):
    """Our params from `features.N.weight/bias` keys; `load(key)` gives an OIHW or bias array."""
    modules: Dict[str, Dict[str, Any]] = {}
    for key, shape in shapes_by_key.items():
        module, _, leaf = key.rpartition(".")
        if module and leaf in ("weight", "bias"):
            modules.setdefault(module, {})[leaf] = shape
        else:
            modules[key] = {"": shape}  # not a module parameter: reported as unexpected
    found = {module: tuple(entries[leaf] for leaf in ("weight", "bias", "") if leaf in entries)
             for module, entries in modules.items()}
    mapping = match_layers(path, found, TORCH)
    return {ours: {"kernel": _float32(hwio_from_oihw(load(f"{public}.weight"))),
                   "bias": _float32(load(f"{public}.bias"))}
            for ours, public in mapping.items()}


def _float32(array):
    return np.ascontiguousarray(array, dtype=np.float32)
