"""Analytic FLOP counts of one style-transfer step through the truncated VGG-19.

A step evaluates the loss and its gradient with respect to the image only, so each 3×3
convolution costs its forward pass plus one backward-data pass (the input gradient, the same
size of convolution again); the first convolution needs its input gradient too, because the
image is what is optimized. No weight gradient is ever computed, so none is counted.
"""

from nst_jax.model.layers import BLOCK_CHANNELS, CONV_LAYERS, canonical_layer, conv_shape, deepest_conv, layer_block

KERNEL_TAPS = 9  # 3×3


def spatial_size(height, width, block):
    """(h, w) of the activations in `block`: halved (floored) by each 2×2 pool before it."""
    return height >> (block - 1), width >> (block - 1)


def conv_table(height, width, last_conv):
    """[(conv name, h, w, in channels, out channels)] for conv1_1 .. last_conv at this image size."""
    rows = []
    for name in CONV_LAYERS[: CONV_LAYERS.index(last_conv) + 1]:
        _, _, in_channels, out_channels = conv_shape(name)
        h, w = spatial_size(height, width, layer_block(name))
        rows.append((name, h, w, in_channels, out_channels))
    return rows


def conv_forward_flops(height, width, last_conv):
    """Σ 2·h·w·C_in·C_out·9 over the convolutions up to `last_conv` (multiply and add counted)."""
    return sum(2 * h * w * c_in * c_out * KERNEL_TAPS
               for _, h, w, c_in, c_out in conv_table(height, width, last_conv))


def gram_flops(height, width, style_layers):
    """Forward plus input gradient of the Gram matrices: 2·(2·h·w·C²) per style layer.

    G = FᵀF costs 2·M·C² (M = h·w positions); its gradient 2·F·∂G costs the same again.
    Reported beside the convolutions, not inside the GFLOP/s figure (the issue counts convolutions).
    """
    total = 0
    for layer in style_layers:
        h, w = spatial_size(height, width, layer_block(canonical_layer(layer)))
        channels = BLOCK_CHANNELS[layer_block(canonical_layer(layer))]
        total += 2 * (2 * h * w * channels * channels)
    return total


def step_flops(height, width, layers, style_layers=()):
    """FLOPs of one loss-and-input-gradient evaluation for a loss reading `layers`.

    Returns:
      {"last_conv", "conv_forward", "conv_input_gradient", "conv_total", "gram"}; conv_total is
      the figure GFLOP/s is computed from.
    """
    last_conv = deepest_conv(layers)
    forward = conv_forward_flops(height, width, last_conv)
    # The backward-data convolution of a 3×3 "same" convolution has the forward's shape with
    # C_in and C_out swapped: the same number of multiply-adds.
    return {"last_conv": last_conv, "conv_forward": forward, "conv_input_gradient": forward,
            "conv_total": 2 * forward, "gram": gram_flops(height, width, style_layers)}
