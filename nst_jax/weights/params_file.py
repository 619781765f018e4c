"""The project's one params file: VGG-19 kernels (HWIO) and biases, plus metadata, in one .npz.

Only `nst_jax.weights.convert` writes these from public releases; everything else only loads them.
Loading needs neither the source file nor the converter.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Tuple, Union
import zipfile

import numpy as np

from nst_jax.atomic import atomic_write
from nst_jax.errors import WeightsFileError
from nst_jax.model.layers import CONV_LAYERS, conv_shape
from nst_jax.model.preprocess import PREPROCESSINGS

FORMAT = "nst-jax-vgg19"
FORMAT_VERSION = 1
_METADATA_KEY = "__metadata__"
METADATA_ENTRY = _METADATA_KEY + ".npy"  # its name inside the zip: how a params file is recognised

# VGG-19 params as `load_params` gives them: {"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}
# (numpy arrays, or jax arrays once on a device; the engine adds adjoint kernels).
Params = Dict[str, Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ParamsMetadata:
    """What a params file says about itself.

    Attributes:
      preprocessing: "caffe" (BGR, 0..255 minus means) or "torch" (RGB [0,1], mean/std).
      source_format: the public layout it came from, e.g. "keras-h5", "torchvision-pth".
      source_file: the source file's name (no directory).
      source_hash: "md5:<hex>" or "sha256:<hex>" of the source file.
      layers: the convolutions stored, in network order.
      synthetic: True for random weights made for tests and benchmarks (not for art).
    """

    preprocessing: str
    source_format: str
    source_file: str
    source_hash: str
    layers: tuple = CONV_LAYERS
    synthetic: bool = False

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                           **dataclasses.asdict(self), "layers": list(self.layers)})


@dataclasses.dataclass(frozen=True)
class Model:
    """A VGG-19 as a run takes it: its params and the input convention they were trained with."""

    params: Params
    preprocessing: str  # "caffe" or "torch" (ParamsMetadata.preprocessing)

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, not {self.preprocessing!r}")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Model":
        """The model in a params file (`load_params`)."""
        params, metadata = load_params(path)
        return cls(params, metadata.preprocessing)


def save_params(path: Union[str, os.PathLike], params: Dict[str, Dict[str, Any]], metadata: ParamsMetadata) -> None:
    """Write params ({"conv1_1": {"kernel", "bias"}, ...}) and metadata atomically to `path`."""
    if metadata.preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, not {metadata.preprocessing!r}")
    arrays = {_METADATA_KEY: np.array(metadata.to_json())}
    for layer in metadata.layers:
        arrays[f"{layer}/kernel"] = np.asarray(params[layer]["kernel"], np.float32)
        arrays[f"{layer}/bias"] = np.asarray(params[layer]["bias"], np.float32)
    with atomic_write(path) as stream:  # never half-written under its name; ordinary permissions
        np.savez(stream, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **arrays


def load_params(path: Union[str, os.PathLike]) -> Tuple[Dict[str, Dict[str, np.ndarray]], ParamsMetadata]:
    """Read a params file. Returns (params, ParamsMetadata); raises WeightsFileError naming the file.

    The arrays are read-only: runs in one process then reuse the kernels they prepared from them
    (`nst_jax.engine.stylize.prepare_params`). To change one, copy it; do not make it writable.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise WeightsFileError(f"{path}: no such params file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise WeightsFileError(
            f"{path}: not an nst-jax params file ({error}); convert public weights with "
            f"'python -m weights_tools.convert FILE -o params.npz'") from None
    if _METADATA_KEY not in contents:
        raise WeightsFileError(f"{path}: not an nst-jax params file (no metadata); convert public "
                               f"weights with 'python -m weights_tools.convert FILE -o params.npz'")
    raw = json.loads(str(contents.pop(_METADATA_KEY)))
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise WeightsFileError(f"{path}: params format {raw.get('format')!r} version "
                               f"{raw.get('format_version')!r}, expected {FORMAT!r} {FORMAT_VERSION}")
    metadata = ParamsMetadata(
        preprocessing=raw["preprocessing"], source_format=raw["source_format"],
        source_file=raw["source_file"], source_hash=raw["source_hash"],
        layers=tuple(raw["layers"]), synthetic=bool(raw.get("synthetic", False)))
    params, problems = {}, []
    for layer in metadata.layers:
        kernel, bias = contents.get(f"{layer}/kernel"), contents.get(f"{layer}/bias")
        expected = conv_shape(layer)
        if kernel is None or bias is None:
            problems.append(f"- {layer} missing")
        elif kernel.shape != expected or bias.shape != expected[-1:]:
            problems.append(f"{layer} kernel {kernel.shape} bias {bias.shape}, expected "
                            f"{expected} and {expected[-1:]}")
        else:
            kernel.flags.writeable = bias.flags.writeable = False
            params[layer] = {"kernel": kernel, "bias": bias}
    if problems:
        raise WeightsFileError(f"{path}: damaged params file: {'; '.join(problems)}")
    return params, metadata
