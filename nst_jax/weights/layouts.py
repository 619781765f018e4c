"""Public VGG-19 releases: their layer names, known files, and the one OIHW -> HWIO transpose.

This is the only place that maps public names onto ours. Readers list what a file holds with
`match_layers`, which checks names and shapes and reports every mismatch at once.
"""

import dataclasses
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from nst_jax.atomic import PathLike

from nst_jax.errors import WeightsFileError
from nst_jax.model.layers import conv_shape

# Our name, the Keras layer name, and the torchvision / timm `features` index (convolutions sit
# between ReLUs and pools in `features`, hence the gaps).
VGG19_CONVS = (
    ("conv1_1", "block1_conv1", 0),
    ("conv1_2", "block1_conv2", 2),
    ("conv2_1", "block2_conv1", 5),
    ("conv2_2", "block2_conv2", 7),
    ("conv3_1", "block3_conv1", 10),
    ("conv3_2", "block3_conv2", 12),
    ("conv3_3", "block3_conv3", 14),
    ("conv3_4", "block3_conv4", 16),
    ("conv4_1", "block4_conv1", 19),
    ("conv4_2", "block4_conv2", 21),
    ("conv4_3", "block4_conv3", 23),
    ("conv4_4", "block4_conv4", 25),
    ("conv5_1", "block5_conv1", 28),
    ("conv5_2", "block5_conv2", 30),
    ("conv5_3", "block5_conv3", 32),
    ("conv5_4", "block5_conv4", 34),
)

# Naming families: Keras h5 files name layers, torch state dicts (torchvision, the Caffe
# conversion, timm's safetensors) name `features.N` modules.
KERAS, TORCH = "keras", "torch"

PUBLIC_NAMES = {
    KERAS: {keras: ours for ours, keras, _ in VGG19_CONVS},
    TORCH: {f"features.{index}": ours for ours, _, index in VGG19_CONVS},
}

# Classifier layers a complete file also holds; we know them and leave them unread.
CLASSIFIER_NAMES = {
    KERAS: ("fc1", "fc2", "predictions"),
    TORCH: ("classifier.0", "classifier.3", "classifier.6",  # torchvision, neural-style-pt
            "classifier.1", "classifier.4",  # jcjohnson's Caffe conversion: .1/.4/.6
            "pre_logits.fc1", "pre_logits.fc2", "head.fc"),  # timm
}

# Blocks of (block, convolutions) for the VGG configurations a user may bring by mistake.
VGG16_BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
# Number of convolutions -> VGG depth, to name the network in a refusal.
DEPTH_BY_CONV_COUNT = {8: 11, 10: 13, 13: 16, 16: 19}

# Root attribute (HDF5), `_metadata` entry (torch) or metadata key (safetensors) that
# weights_tools.synthetic leaves so converted random weights are flagged as such.
SYNTHETIC_MARKER = "nst_jax_synthetic"

PREPROCESSING_BY_FORMAT = {
    "keras-h5": "caffe", "keras-h5-tf": "caffe", "keras3-h5": "caffe",
    "safetensors": "torch",  # timm vgg19.tv_in1k holds torchvision's weights
}


@dataclasses.dataclass(frozen=True)
class KnownFile:
    """A published weight file: where it lives, its hash (or hash prefix), its input convention."""

    name: str
    url: str
    algorithm: str
    digest: str  # full hex digest, or the prefix torch hub checks
    size: int | None  # bytes; None where no source we trust records it
    source_format: str
    preprocessing: str


_KERAS_FOLDER = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
KNOWN_FILES = (
    KnownFile("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              _KERAS_FOLDER + "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "md5", "253f8cb515780f3b799900260a226db6", 80_134_624, "keras-h5", "caffe"),
    KnownFile("vgg19_weights_tf_dim_ordering_tf_kernels.h5",
              _KERAS_FOLDER + "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
              "md5", "cbe5617147190e668d6c5d5026f83318", 574_710_816, "keras-h5", "caffe"),
    KnownFile("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
              "sha256", "dcbb9e9d", 574_673_361, "torchvision-pth", "torch"),
    KnownFile("vgg19-d01eb7cb.pth", "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
              "sha256", "d01eb7cb", None, "caffe-pth", "caffe"),
)


def identify_by_hash(algorithm: str, hexdigest: str) -> Optional[KnownFile]:
    """The known file with this digest (a prefix match for torch hub's 8-digit names), or None."""
    for known in KNOWN_FILES:
        if known.algorithm == algorithm and hexdigest.startswith(known.digest):
            return known
    return None


def identify_by_name(file_name: str) -> Optional[KnownFile]:
    """The known .pth file whose hash prefix appears in `file_name` (torch hub's naming), or None."""
    for known in KNOWN_FILES:
        if known.name.endswith(".pth") and known.digest in file_name:
            return known
    return None


def hwio_from_oihw(kernel: npt.ArrayLike) -> np.ndarray:
    """PyTorch conv kernel (out, in, kh, kw) -> Flax/Keras (kh, kw, in, out); both cross-correlate."""
    return np.transpose(kernel, (2, 3, 1, 0))


def expected_shapes(ours: str, naming: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(kernel shape, bias shape) of one of our convolutions as a `naming` file stores it."""
    height, width, in_channels, out_channels = conv_shape(ours)
    if naming == TORCH:
        return (out_channels, in_channels, height, width), (out_channels,)
    return (height, width, in_channels, out_channels), (out_channels,)


def _shape_text(shape):
    return "(" + ",".join(str(size) for size in shape) + ")"


def _shape_problems(shapes, expected):
    """What differs between a layer's weight shapes (file order) and its (kernel, bias) shapes:
    "kernel is (64,3,5,5), not (64,3,3,3)", "no bias (64)", "an extra array (3)"."""
    roles = ("kernel", "bias")
    if len(shapes) == 1 and shapes[0] == expected[1]:  # the bias alone
        return f"no kernel {_shape_text(expected[0])}"
    found = [f"{role} is {_shape_text(got)}, not {_shape_text(want)}"
             for role, want, got in zip(roles, expected, shapes) if got != want]
    found += [f"no {role} {_shape_text(want)}" for role, want in zip(roles, expected)][len(shapes):]
    found += [f"an extra array {_shape_text(extra)}" for extra in shapes[len(expected):]]
    return " and ".join(found)


def match_layers(path: PathLike, found: Mapping[str, Sequence[Sequence[int]]], naming: str) -> Dict[str, str]:
    """Map our conv names to a file's layer names, or refuse with every problem in one line.

    Args:
      path: the file, for the message.
      found: {public layer name: tuple of its weight shapes in file order (kernel, bias)} for
        every layer that holds weights.
      naming: KERAS or TORCH.

    Returns:
      {our conv name: public layer name}, in network order.
    """
    public_to_ours = PUBLIC_NAMES[naming]
    ignored = set(CLASSIFIER_NAMES[naming])
    body = {name: shapes for name, shapes in found.items() if name not in ignored}
    _refuse_other_vgg(path, body)
    problems = [f"- {ours} ({public})" for public, ours in public_to_ours.items()
                if public not in body]
    problems += [f"+ {name}" for name in body if name not in public_to_ours]
    for public, ours in public_to_ours.items():
        if public not in body:
            continue
        expected = expected_shapes(ours, naming)
        shapes = tuple(tuple(shape) for shape in body[public])
        if shapes != expected:
            problems.append(f"{public}: {_shape_problems(shapes, expected)}")
    if problems:
        raise WeightsFileError(f"{path}: not the VGG-19 layout nst-jax reads: {'; '.join(problems)}")
    return {ours: public for public, ours in public_to_ours.items()}  # table is in network order


def _refuse_other_vgg(path, body):
    """Name the network when a file holds another VGG depth (its count of 4-D conv kernels)."""
    conv_count = sum(1 for shapes in body.values() if shapes and len(shapes[0]) == 4)
    depth = DEPTH_BY_CONV_COUNT.get(conv_count)
    if depth is not None and depth != 19:
        raise WeightsFileError(f"{path}: this is VGG-{depth} ({conv_count} convolutions); "
                               f"nst-jax needs VGG-19 weights (16 convolutions)")


def feature_layout(blocks: Iterable[Tuple[int, int]]) -> Tuple[Tuple[str, str, int], ...]:
    """(our name, Keras name, torch `features` index) for each conv of a VGG with these blocks."""
    rows, index = [], 0
    for block, convs in blocks:
        for number in range(1, convs + 1):
            rows.append((f"conv{block}_{number}", f"block{block}_conv{number}", index))
            index += 2  # the conv and its ReLU
        index += 1  # the pool
    return tuple(rows)
