"""Random VGG-19 weights in exactly the public file layouts, for tests and benchmarks (not for art).

No public weights can be downloaded here, so every reader is exercised on files that have the
real names, shapes, dtypes and attributes (see docs/WEIGHTS.md) but He-initialised random values.
Each file carries a marker the converter sees, so converted params say `synthetic=True`.

    python -m weights_tools.synthetic --layout keras-h5 [--seed N] [--include-top] OUT
"""

import argparse
import collections
import json
import os
import struct
import sys
from typing import Dict, Optional, Sequence, Tuple

import h5py
import numpy as np

from nst_jax.atomic import PathLike, atomic_path
from nst_jax.errors import UserInputError, bad_input_exits_2
from nst_jax.model.layers import BLOCKS, conv_shape
from nst_jax.weights.layouts import SYNTHETIC_MARKER, VGG16_BLOCKS, feature_layout

LAYOUTS = ("keras-h5", "keras-h5-tf", "keras3-h5", "torchvision-pth", "caffe-pth", "safetensors")

MARKER_TEXT = "random weights from weights_tools.synthetic: for tests and benchmarks, not for art"
_BIAS_SCALE = 0.05  # small but non-zero, so a bias in the wrong place shows

# Classifier shapes in each layout's own orientation (Keras Dense kernels are (in, out)).
_KERAS_TOP = (("fc1", (25088, 4096)), ("fc2", (4096, 4096)), ("predictions", (4096, 1000)))
_TORCH_TOP = {"torchvision-pth": (("classifier.0", (4096, 25088)), ("classifier.3", (4096, 4096)),
                                  ("classifier.6", (1000, 4096))),
              "caffe-pth": (("classifier.1", (4096, 25088)), ("classifier.4", (4096, 4096)),
                            ("classifier.6", (1000, 4096)))}
_TIMM_TOP = (("pre_logits.fc1", (4096, 512, 7, 7)), ("pre_logits.fc2", (4096, 4096, 1, 1)),
             ("head.fc", (1000, 4096)))


def synthetic_params(seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Random VGG-19 params in our in-memory format: {"conv1_1": {"kernel": HWIO, "bias"}, ...}.

    The same values that `write_synthetic(..., seed=seed)` writes for VGG-19.
    """
    return _random_params(feature_layout(BLOCKS), seed)


def _random_params(rows, seed):
    rng = np.random.default_rng(seed)
    params = {}
    for ours, _, _ in rows:
        shape = conv_shape(ours)
        fan_in = shape[0] * shape[1] * shape[2]
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.standard_normal(shape[-1:], dtype=np.float32) * np.float32(_BIAS_SCALE)
        params[ours] = {"kernel": kernel, "bias": bias}
    return params


def write_synthetic(layout: str, path: PathLike, *, seed: int = 0, include_top: bool = False,
                    vgg16: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
    """Write random weights to `path` in a public `layout` (one of LAYOUTS).

    Args:
      include_top: add the classifier with its exact shapes, stored as zeros that cost (almost)
        no disk space.
      vgg16: write VGG-16 (13 convolutions) instead, to test that it is refused.

    Returns:
      The truth, {"conv1_1": {"kernel": HWIO float32, "bias": float32}, ...}: what a params file
      converted from this file must hold (input channels as the file stores them).
    """
    if layout not in LAYOUTS:
        raise UserInputError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    rows = feature_layout(VGG16_BLOCKS if vgg16 else BLOCKS)
    truth = _random_params(rows, seed)
    writers = {"keras-h5": _write_keras, "keras-h5-tf": _write_keras, "keras3-h5": _write_keras,
               "torchvision-pth": _write_torch, "caffe-pth": _write_torch,
               "safetensors": _write_safetensors}
    _write_atomically(path, lambda temporary: writers[layout](temporary, layout, rows, truth,
                                                               include_top))
    return truth


def _write_atomically(path, write):
    """Call write(temporary path), then move it to `path`: no half-written file under that name."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserInputError(f"{path}: directory {directory} does not exist")
    with atomic_path(path) as temporary:
        write(temporary)


# --- Keras .h5: Keras 1 release, tf.keras (Keras 2), Keras 3 legacy h5 -----------------------


def _keras_weight_names(layout, layer):
    """Dataset names (relative to the layer's group) of a layer's (kernel, bias)."""
    if layout == "keras-h5":
        return f"{layer}_W_1:0", f"{layer}_b_1:0"
    suffix = ":0" if layout == "keras-h5-tf" else ""
    return f"{layer}/kernel{suffix}", f"{layer}/bias{suffix}"


def _write_keras(path, layout, rows, truth, include_top):
    blocks = sorted({keras.split("_")[0] for _, keras, _ in rows})
    layer_names = []
    for block in blocks:
        layer_names += [keras for _, keras, _ in rows if keras.startswith(block + "_")]
        layer_names.append(f"{block}_pool")
    if include_top:
        layer_names += ["flatten"] + [name for name, _ in _KERAS_TOP]
    kernels = {keras: truth[ours] for ours, keras, _ in rows}
    top_shapes = dict(_KERAS_TOP)
    with h5py.File(path, "w") as file:
        if layout == "keras-h5":
            # Written by Keras 1 with h5py 2: fixed-length byte strings, no version attributes.
            file.attrs["layer_names"] = np.array([name.encode() for name in layer_names])
        else:
            input_layer = "input_1" if layout == "keras-h5-tf" else "input_layer"
            file.attrs["layer_names"] = [name.encode() for name in [input_layer] + layer_names]
            file.attrs["backend"] = b"tensorflow"
            file.attrs["keras_version"] = b"2.15.0" if layout == "keras-h5-tf" else b"3.5.0"
            file.create_group(input_layer).attrs["weight_names"] = []
        # Keras' loader ignores unknown root attributes, so the marker does not stop it.
        file.attrs[SYNTHETIC_MARKER] = MARKER_TEXT
        for layer in layer_names:
            group = file.create_group(layer)
            if layer in kernels or layer in top_shapes:
                names = _keras_weight_names(layout, layer)
                group.attrs["weight_names"] = _keras_strings(layout, names)
            else:
                group.attrs["weight_names"] = []
            if layer in kernels:
                group.create_dataset(names[0], data=kernels[layer]["kernel"])
                group.create_dataset(names[1], data=kernels[layer]["bias"])
            elif layer in top_shapes:
                # Created but never written: HDF5 allocates no space and reads back zeros.
                shape = top_shapes[layer]
                group.create_dataset(names[0], shape=shape, dtype=np.float32)
                group.create_dataset(names[1], shape=shape[-1:], dtype=np.float32)
        if layout == "keras3-h5":
            file.create_group("top_level_model_weights").attrs["weight_names"] = []


def _keras_strings(layout, names):
    encoded = [name.encode() for name in names]
    return np.array(encoded) if layout == "keras-h5" else encoded


# --- PyTorch state dicts and timm safetensors ------------------------------------------------


def _oihw(kernel_hwio):
    """HWIO -> OIHW, spelled as an einsum so it shares no code with the converter's transpose."""
    return np.ascontiguousarray(np.einsum("hwio->oihw", kernel_hwio))


def _write_torch(path, layout, rows, truth, include_top):
    import torch

    state = collections.OrderedDict()
    for ours, _, index in rows:
        state[f"features.{index}.weight"] = torch.from_numpy(_oihw(truth[ours]["kernel"]))
        state[f"features.{index}.bias"] = torch.from_numpy(truth[ours]["bias"].copy())
    if include_top:
        for name, shape in _TORCH_TOP[layout]:
            # Views of one zero: the file stores a single element per tensor.
            state[f"{name}.weight"] = torch.zeros(1).expand(shape)
            state[f"{name}.bias"] = torch.zeros(1).expand(shape[:1])
    # load_state_dict only looks up module prefixes in _metadata, so an extra entry is harmless.
    # (torch's own attribute on state dicts, which OrderedDict's stub does not know.)
    state._metadata = {SYNTHETIC_MARKER: {"note": MARKER_TEXT}}  # type: ignore[attr-defined]
    # The 2017 releases predate torch's zip format; write the legacy format they use.
    torch.save(state, path, _use_new_zipfile_serialization=False)


def _write_safetensors(path, layout, rows, truth, include_top):
    tensors = {}
    for ours, _, index in rows:
        tensors[f"features.{index}.weight"] = _oihw(truth[ours]["kernel"])
        tensors[f"features.{index}.bias"] = truth[ours]["bias"]
    zero_shapes: Dict[str, Tuple[int, ...]] = {}
    if include_top:
        for name, shape in _TIMM_TOP:
            zero_shapes[f"{name}.weight"], zero_shapes[f"{name}.bias"] = shape, shape[:1]
    metadata = {"format": "pt", SYNTHETIC_MARKER: MARKER_TEXT}
    if not zero_shapes:
        from safetensors.numpy import save_file

        save_file(tensors, path, metadata=metadata)
    else:
        _write_safetensors_with_zeros(path, tensors, zero_shapes, metadata)


def _write_safetensors_with_zeros(path, tensors, zero_shapes, metadata):
    """The safetensors layout by hand, so zero tensors can stay a hole in a sparse file.

    Format: little-endian u64 header size, JSON header (dtype, shape, byte range of each
    tensor), then the tensors' bytes back to back.
    """
    header, offset = {"__metadata__": metadata}, 0
    shapes = {key: array.shape for key, array in tensors.items()} | zero_shapes
    for key, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as the library does
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            stream.write(np.ascontiguousarray(array, "<f4").tobytes())
        stream.truncate(8 + len(text) + offset)  # the zero tensors: a hole, read back as zeros


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weights_tools.synthetic",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="the public file layout to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--include-top", action="store_true", help="add the classifier (as zeros)")
    parser.add_argument("--vgg16", action="store_true", help="write VGG-16, to test refusals")
    parser.add_argument("out", help="file to write")
    return parser


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: write one synthetic file and say what it is."""
    args = build_parser().parse_args(argv)
    write_synthetic(args.layout, args.out, seed=args.seed, include_top=args.include_top, vgg16=args.vgg16)
    network = "VGG-16" if args.vgg16 else "VGG-19"
    print(f"wrote {args.out}: {MARKER_TEXT} ({network}, {args.layout} layout, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
