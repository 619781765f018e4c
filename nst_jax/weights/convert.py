"""Convert a public VGG-19 weight file into an nst-jax params file (the command line:
`python -m weights_tools.convert`).

SRC is a Keras .h5/.hdf5, a PyTorch .pth/.pt or a timm .safetensors file (see docs/WEIGHTS.md),
recognised by its content whatever its name (`readers.sniff_format`).
The input convention comes from the format (Keras: caffe; timm: torch) or, for .pth files, from
the published file's hash or name; `--preprocessing` overrides it.
"""

import os
from typing import Optional

from nst_jax.atomic import PathLike
from nst_jax.errors import UserInputError, WeightsFileError, reason
from nst_jax.model.layers import CONV_LAYERS
from nst_jax.weights.params_file import ParamsMetadata, save_params
from nst_jax.model.preprocess import PREPROCESSINGS
from nst_jax.weights.hashing import file_digest
from nst_jax.weights.layouts import PREPROCESSING_BY_FORMAT, identify_by_hash, identify_by_name
from nst_jax.weights.readers import read_weights


def convert(src: PathLike, out: PathLike, preprocessing: Optional[str] = None) -> ParamsMetadata:
    """Read public weights from `src`, write a params file to `out` atomically.

    Args:
      src: path of a public VGG-19 weight file.
      out: path of the params file to write.
      preprocessing: "caffe" or "torch" to override what the file's format or hash says.

    Returns:
      The ParamsMetadata written. Raises UserInputError (or WeightsFileError) naming the
      file or flag at fault; nothing is written then.
    """
    src, out = os.fspath(src), os.fspath(out)
    if preprocessing is not None and preprocessing not in PREPROCESSINGS:
        raise UserInputError(
            f"--preprocessing {preprocessing!r}: choose one of {', '.join(PREPROCESSINGS)}")
    if os.path.isdir(src):
        raise WeightsFileError(f"{src}: is a directory, not a weights file")
    if not os.path.isfile(src):
        raise WeightsFileError(f"{src}: no such file")
    out_directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_directory):
        raise UserInputError(f"-o {out}: directory {out_directory} does not exist")
    if os.path.isdir(out):
        raise UserInputError(f"-o {out}: is a directory; name the params file, such as "
                             f"{os.path.join(out, 'vgg19.npz')}")
    if os.path.abspath(out) == os.path.abspath(src):
        raise UserInputError(f"-o {out}: would overwrite the source file")

    source = read_weights(src)
    is_keras = source.source_format.startswith("keras")
    algorithm = "md5" if is_keras else "sha256"  # Keras publishes MD5s, torch hub SHA-256 prefixes
    digest = file_digest(src, algorithm)
    source_format = source.source_format
    if source_format.endswith("-pth"):
        # Key names cannot tell torchvision's file from the Caffe conversion; its hash or name can.
        known = identify_by_hash(algorithm, digest) or identify_by_name(os.path.basename(src))
        if known is not None:
            source_format = known.source_format
        preprocessing = preprocessing or (known.preprocessing if known else None)
        if preprocessing is None:
            raise UserInputError(
                f"{src}: unknown .pth file (neither vgg19-dcbb9e9d.pth nor vgg19-d01eb7cb.pth by hash "
                f"or name), so its input convention is unknown: pass --preprocessing torch "
                f"(torchvision-trained, RGB) or --preprocessing caffe (Caffe/Oxford, BGR)")
    preprocessing = preprocessing or PREPROCESSING_BY_FORMAT[source_format]

    metadata = ParamsMetadata(preprocessing=preprocessing, source_format=source_format,
                              source_file=os.path.basename(src), source_hash=f"{algorithm}:{digest}",
                              layers=CONV_LAYERS, synthetic=source.synthetic)
    try:
        save_params(out, source.params, metadata)
    except OSError as error:  # a read-only folder, a full disk: the atomic write left nothing
        raise UserInputError(f"-o {out}: cannot write it ({reason(error)})") from None
    return metadata


def summary(out: PathLike, metadata: ParamsMetadata) -> str:
    """The one line the command prints after a conversion."""
    line = (f"wrote {out}: {len(metadata.layers)} VGG-19 convolutions from {metadata.source_format} "
            f"file {metadata.source_file} ({metadata.source_hash}), "
            f"preprocessing {metadata.preprocessing}")
    known = identify_by_hash(*metadata.source_hash.split(":", 1))
    if known is not None:
        line += f"; the published {known.name}"
    if metadata.synthetic:
        line += "; SYNTHETIC random weights, for tests and benchmarks only"
    return line
