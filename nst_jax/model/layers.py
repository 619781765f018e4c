"""VGG-19 layer names: the Caffe/NST names, their order, and the Keras aliases."""

from typing import Iterable, Tuple

# (block, number of convolutions) for VGG-19, configuration "E".
BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))

# Output channels of each block's convolutions.
BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}

CONV_LAYERS = tuple(f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1))


def _execution_order():
    order = []
    for block, n in BLOCKS:
        for i in range(1, n + 1):
            order += [f"conv{block}_{i}", f"relu{block}_{i}"]
        order.append(f"pool{block}")
    return tuple(order)


# Every named activation, in the order the network computes them.
LAYER_ORDER = _execution_order()

# Keras' blockB_convI layers include the ReLU, so they are the relu activations.
KERAS_ALIASES = {
    **{f"block{b}_conv{i}": f"relu{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1)},
    **{f"block{b}_pool": f"pool{b}" for b, _ in BLOCKS},
}


def layer_block(name: str) -> int:
    """The block a canonical layer belongs to: conv1_1, relu1_1 and pool1 are block 1."""
    return int(name[4])


def layer_level(name: str) -> int:
    """The resolution level of a canonical layer's output: 1 full size, 2 half, ... (pool1 is 2)."""
    return layer_block(name) + (1 if name.startswith("pool") else 0)


def conv_shape(name: str) -> Tuple[int, int, int, int]:
    """Kernel shape (HWIO) of a convolution, e.g. conv1_1 -> (3, 3, 3, 64)."""
    block, index = (int(part) for part in name[len("conv"):].split("_"))
    out_channels = BLOCK_CHANNELS[block]
    if index > 1:
        in_channels = out_channels
    elif block == 1:
        in_channels = 3
    else:
        in_channels = BLOCK_CHANNELS[block - 1]
    return (3, 3, in_channels, out_channels)


def canonical_layer(name: str) -> str:
    """The Caffe/NST name of a layer given by that name or its Keras alias."""
    if name in LAYER_ORDER:
        return name
    if name in KERAS_ALIASES:
        return KERAS_ALIASES[name]
    raise ValueError(
        f"unknown VGG-19 layer {name!r}: use conv/relu names such as relu4_2 or pool1 "
        f"(Keras names such as block4_conv2 are accepted too)")


def deepest_conv(layer_names: Iterable[str]) -> str:
    """The last convolution the network must run to produce all of `layer_names`."""
    deepest = max(LAYER_ORDER.index(canonical_layer(n)) for n in layer_names)
    return [c for c in CONV_LAYERS if LAYER_ORDER.index(c) <= deepest][-1]
