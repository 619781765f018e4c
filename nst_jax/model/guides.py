"""Region guides carried down VGG-19 to the loss layers (Gatys et al. 2017, "Controlling
Perceptual Factors in Neural Style Transfer", section 4).

A guide (R, H, W) says how much each pixel belongs to each region; the loss needs it on each loss
layer's grid. Three ways, as the paper's code has them:

  simple  the guide resized: each 2×2 pooling averages (the grid the network's VALID pooling
          keeps: an odd last row or column dropped), convolutions leave it as is; soft values stay.
  all     units that see any of the region: the guide thresholded at 0.5, then every 3×3
          convolution dilates it by one unit and every 2×2 pooling takes the maximum.
  inside  units that see only the region: thresholded, each convolution erodes by one unit and
          each pooling takes the minimum; the zero padding past the image is not outside.

`grow` k grows (k > 0) or shrinks (k < 0) each layer's region by k units, a (2|k|+1)² square, as
the paper's code does on every feature map. Pure numpy on the host: guides are constants of a
run, computed once per scale, and a new mask must not compile anything.
"""

from typing import Dict, Sequence

import numpy as np
import numpy.typing as npt

from nst_jax.model.layers import LAYER_ORDER, canonical_layer

PROPAGATIONS = ("simple", "all", "inside")
THRESHOLD = 0.5  # all, inside: a pixel belongs to the region from this guide value on


def _shifted_extreme(guides: np.ndarray, radius: int, take_max: bool) -> np.ndarray:
    """Max (dilation) or min (erosion) over a (2·radius+1)² square around each unit, the outside
    of the array neutral (it neither adds to a region nor takes from it)."""
    if radius == 0:
        return guides
    pick = np.maximum if take_max else np.minimum
    neutral = -np.inf if take_max else np.inf
    result = guides
    for axis in (1, 2):  # separable: rows, then columns
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(result, padding, constant_values=neutral)
        size = result.shape[axis]
        out = np.take(padded, np.arange(size), axis=axis)
        for offset in range(1, 2 * radius + 1):
            out = pick(out, np.take(padded, np.arange(offset, offset + size), axis=axis))
        result = out
    return result


def _pool(guides: np.ndarray, how: str) -> np.ndarray:
    """2×2 stride-2 pooling of (R, H, W), VALID like the network's (odd last rows dropped)."""
    regions, height, width = guides.shape
    blocks = guides[:, :height // 2 * 2, :width // 2 * 2].reshape(regions, height // 2, 2, width // 2, 2)
    return {"mean": blocks.mean(axis=(2, 4)), "max": blocks.max(axis=(2, 4)), "min": blocks.min(axis=(2, 4))}[how]


def layer_guides(guides: npt.ArrayLike, layers: Sequence[str], propagation: str = "simple",
                 grow: int = 0) -> Dict[str, np.ndarray]:
    """{layer: (R, h, w) float32 guide on that layer's grid} for the canonical `layers`, from
    (R, H, W) guides on the network's input grid, carried down as `propagation` says."""
    if propagation not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, not {propagation!r}")
    current = np.asarray(guides, np.float32)
    if current.ndim != 3:
        raise ValueError(f"guides must have shape (R, H, W), got {current.shape}")
    wanted = {canonical_layer(layer) for layer in layers}
    deepest = max(LAYER_ORDER.index(layer) for layer in wanted)
    binary = propagation != "simple" or grow != 0
    if binary:
        current = (current >= THRESHOLD).astype(np.float32)
    found: Dict[str, np.ndarray] = {}
    for layer in LAYER_ORDER[:deepest + 1]:
        if layer.startswith("conv") and propagation != "simple":
            current = _shifted_extreme(current, 1, take_max=propagation == "all")
        elif layer.startswith("pool"):
            current = _pool(current, {"simple": "mean", "all": "max", "inside": "min"}[propagation])
        if layer in wanted:
            on_grid = current
            if grow:
                on_grid = _shifted_extreme(on_grid, abs(grow), take_max=grow > 0)
            found[layer] = np.ascontiguousarray(on_grid, np.float32)
    return found
