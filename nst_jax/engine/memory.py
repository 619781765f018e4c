"""How much device memory a run will take: XLA's analysis of the compiled step (no compute), and
the analytic estimate of the whole run that every plan makes before compiling (engine/plan.py).

The chunk is lowered and compiled for the run's exact shapes with abstract inputs
(jax.ShapeDtypeStruct), so nothing is allocated; XLA reports its arguments, outputs and
temporaries. Compiling takes seconds; running the estimate costs no optimization step.
"""

import dataclasses
import math
import os
import re
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.stages import Compiled

from nst_jax.config.settings import Settings
from nst_jax.errors import UserInputError
from nst_jax.imaging import images
from nst_jax.model.layers import (BLOCK_CHANNELS, BLOCKS, CONV_LAYERS, canonical_layer, conv_shape, deepest_conv,
                                  layer_block)
from nst_jax.loss.objective import LossWeights, Objective, RegionGuides, content_targets
from nst_jax.engine.chunk_inputs import ChunkInputs, MemberInputs, build_chunk_inputs
from nst_jax.engine.devices import Layout, image_mesh
from nst_jax.engine.buckets import loop_shape
from nst_jax.model.extent import Extent
from nst_jax.engine.stages import SEPARATE_PASSES_FROM, InputShapes, style_side
from nst_jax.engine.optimize import OptimizerSpec
from nst_jax.model.ops import ADJOINT
from nst_jax.model.tiles import TileGrid, front_layers
from nst_jax.model.vgg import layer_level, layer_size


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the compiled loop needs on its device (per device when sharded)."""

    arguments: int  # params, targets, image and optimizer state
    temporaries: int  # activations kept for the backward pass, line search, etc.
    outputs_not_aliased: int  # outputs that do not reuse a donated input buffer

    @property
    def total(self) -> int:
        return self.arguments + self.temporaries + self.outputs_not_aliased


def abstract_chunk_inputs(settings: Settings, height: int, width: int, preprocessing: str = "caffe",
                          batch_size: int = 1, batched: Optional[bool] = None,
                          rows: Optional[Mesh] = None, regions: int = 0) -> ChunkInputs:
    """The chunk's inputs as jax.ShapeDtypeStructs, as the engine builds them
    (`build_chunk_inputs`: kernel, bias and the prepared adjoint kernel of each layer it runs),
    for `inputs.program().lower(inputs.pixels, inputs.opt_state, steps, *inputs.loss_args)`:
    nothing is allocated.

    `batched` (default: batch_size > 1) says whether the run uses the vmapped chunk, as sharded
    runs do even for one member per device. `rows`: a "rows" mesh (devices.image_mesh) to split
    the image over, as the engine does; XLA's analysis is then per device. `regions`: that many
    regions' guides and guided Grams (spatial control).
    """
    channels = 1 if settings.image.original_colors == "luminance" else 3
    objective = Objective.from_settings(settings, preprocessing)
    used = CONV_LAYERS[: CONV_LAYERS.index(deepest_conv(objective.layers)) + 1]
    params = {layer: {"kernel": jax.ShapeDtypeStruct(conv_shape(layer), jnp.float32),
                      "bias": jax.ShapeDtypeStruct(conv_shape(layer)[-1:], jnp.float32),
                      ADJOINT: jax.ShapeDtypeStruct(adjoint_shape(conv_shape(layer)), jnp.float32)}
              for layer in used}
    pixels = jax.ShapeDtypeStruct((height, width, channels), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    extent = Extent(scalar, scalar) if settings.network.shape_buckets == "on" else None  # padded to a bucket
    content = jax.eval_shape(lambda p, x, e: content_targets(objective, p, x, e), params, pixels, extent)
    per_region = (regions,) if regions else ()
    grams = {layer: jax.ShapeDtypeStruct(per_region + (BLOCK_CHANNELS[layer_block(layer)],) * 2, jnp.float32)
             for layer in objective.style_layers}
    weight = jax.ShapeDtypeStruct((), jnp.float32)
    guides = None if not regions else RegionGuides(
        {layer: jax.ShapeDtypeStruct((regions, *layer_size(height, width, layer)), jnp.float32)
         for layer in objective.style_layers},
        {layer: jax.ShapeDtypeStruct((regions,), jnp.float32) for layer in objective.style_layers})
    member = MemberInputs(pixels, grams, LossWeights(weight, weight, weight), guides=guides)
    return build_chunk_inputs(objective, OptimizerSpec.from_settings(settings), params, content,
                              [member] * batch_size, rows, batched=batch_size > 1 if batched is None else batched,
                              extent=extent)


def compiled_chunk(settings: Settings, height: int, width: int, preprocessing: str = "caffe", batch_size: int = 1,
                   batched: Optional[bool] = None, rows: Optional[Mesh] = None, regions: int = 0) -> Compiled:
    """The chunk the engine would run for these settings and sizes, compiled (nothing run)."""
    inputs = abstract_chunk_inputs(settings, height, width, preprocessing, batch_size, batched, rows, regions)
    return inputs.program().lower(inputs.pixels, inputs.opt_state, jax.ShapeDtypeStruct((), jnp.int32),
                                  *inputs.loss_args).compile()


def estimate_memory(settings: Settings, height: int, width: int, preprocessing: str = "caffe", batch_size: int = 1,
                    batched: Optional[bool] = None, rows: Optional[Mesh] = None, regions: int = 0) -> MemoryEstimate:
    """Estimate the memory of `settings` at an output of height × width for `batch_size` members
    (per device, with `rows`, a "rows" mesh splitting the image; `regions` guided regions)."""
    analysis = compiled_chunk(settings, height, width, preprocessing, batch_size, batched,
                              rows, regions).memory_analysis()
    assert analysis is not None  # None only where a backend has no memory analysis
    return MemoryEstimate(analysis.argument_size_in_bytes, analysis.temp_size_in_bytes,
                          max(0, analysis.output_size_in_bytes - analysis.alias_size_in_bytes))


def adjoint_shape(kernel_shape: Sequence[int]) -> Tuple[int, int, int, int]:
    """HWIO shape of a kernel's adjoint: input and output channels swapped."""
    height, width, inputs, outputs = kernel_shape
    return (height, width, outputs, inputs)


# --- the fit check: an analytic estimate of the whole run, made before anything compiles -------

# XLA keeps 1.5–1.8 × one forward pass's conv outputs as the loop's temporaries with the paper's
# layers (to relu5_1), 2.0 × for a net cut after block 2 (forward activations for the backward
# pass and their gradients; measured with `estimate_memory` on CPU, 96 to 2048 px, Adam, L-BFGS
# with and without the zoom line search, whose evaluations run one after another): 3 covers them
# with room for another compiler's choices. The targets' program (content features and each style's Grams, before the loop) keeps 1.8–1.9 × one image's conv outputs for a content and a
# style image, 2.3 × for two styles (256 to 1024 px; XLA's CPU compiler overlaps the passes,
# optimization barriers do not order them): 1 per image covers it.
LOOP_ACTIVATIONS = 3
TARGET_ACTIVATIONS = 1
# With remat "tiles", XLA keeps about 1.5 × one tile's conv outputs while it recomputes a tile
# (CPU, 96 to 1024 px); 2 leaves room for another compiler's schedule, as LOOP_ACTIVATIONS does.
TILE_ACTIVATIONS = 2
# Image-sized buffers besides L-BFGS's history: the image, its gradient, the last finished
# image kept for Ctrl-C, Adam's two moments, the chunk's outputs.
IMAGE_BUFFERS = 6
# Regions: the weighted features F∘t_r of every region at the largest style layer, in the forward
# pass and again in the backward pass (jax.checkpoint makes them afresh there).
GUIDED_COPIES = 2
# For tests and for sharing a device: the bytes the run may use, overriding what is detected.
LIMIT_ENV = "NST_JAX_MEMORY_LIMIT_BYTES"
# On a CPU the run may use the host's available memory less this margin (10 %, at least 1 GiB):
# a 4096 × 3072 px Adam run that the check let through with no margin died in the allocator
# (C++ bad_alloc, which ends the process) once it ran.
HOST_MARGIN_SHARE = 0.1
HOST_MARGIN_BYTES = 2**30
FLOAT_BYTES = 4  # float32 everywhere: bfloat16 compute only lowers the real figure


@dataclasses.dataclass(frozen=True)
class RunEstimate:
    """Bytes a whole run needs per device (Python ints: no size overflows)."""

    params: int  # kernels, biases and adjoint kernels of the layers the loss reads
    state: int  # members' images, optimizer state (L-BFGS: 2 × memory images), targets
    loop: int  # the loop's temporaries: activations for the backward pass
    targets: int  # the content's and the largest style's forward pass, done before the loop

    @property
    def total(self) -> int:
        # The targets' pass runs, and frees its temporaries, before the loop starts.
        return self.params + self.state + max(self.loop, self.targets)


def _activation_floats(height, width, deepest):
    """Floats in one forward pass's conv outputs up to `deepest`, each at its block's size."""
    return sum(_layer_floats(height, width, layer) for layer in CONV_LAYERS[: CONV_LAYERS.index(deepest) + 1])


def _layer_floats(height, width, layer):
    """Floats of one activation (relu4_2, conv2_1, pool1): its block's channels at its level's
    size, rounded up (pool1 has block 1's channels at half size)."""
    name = canonical_layer(layer)
    scale = 2 ** (layer_level(name) - 1)
    return -(-height // scale) * -(-width // scale) * BLOCK_CHANNELS[layer_block(name)]


def _tiled_front(height, width, objective):
    """(TileGrid, the tiled layers, floats of one tile's conv outputs, floats of the same conv
    outputs for the whole image) of a remat "tiles" objective."""
    grid = TileGrid.for_layers(objective.layers, width, objective.pooling)
    front = front_layers(objective.layers, objective.pooling)
    front_deepest = [name for name in front if name.startswith("conv")][-1]
    return (grid, front, _activation_floats(height, grid.width + 2 * grid.halo, front_deepest),
            _activation_floats(height, width, front_deepest))


def _remat_loop_floats(height, width, objective):
    """Floats the loop keeps with each block recomputed in the backward pass: every block's input and the
    activations the loss reads (and their gradients), plus one block recomputed at a time."""
    deepest = int(deepest_conv(objective.layers)[4])
    blocks = [(block, convs) for block, convs in BLOCKS if block <= deepest]
    inputs = sum(_layer_floats(height, width, f"pool{block - 1}") for block, _ in blocks if block > 1)
    read = sum(_layer_floats(height, width, layer) for layer in objective.layers)
    recomputed = max(convs * _layer_floats(height, width, f"conv{block}_1") for block, convs in blocks)
    # XLA's temporaries (CPU, 96 to 1024 px) are 0.56–0.62 of this, the net cut after block 2 highest.
    return inputs + read + LOOP_ACTIVATIONS * recomputed


def _pass_floats(height, width, objective, kept=()):
    """Floats of one forward pass's conv outputs (a target's pass); with remat "tiles" the first
    two blocks' are one tile's, plus the `kept` layers among them assembled whole (the content
    pass keeps its content layers)."""
    everything = _activation_floats(height, width, deepest_conv(objective.layers))
    if objective.remat != "tiles":
        return everything
    _, front, tile, tiled = _tiled_front(height, width, objective)
    whole = sum(_layer_floats(height, width, layer) for layer in kept if layer in front)
    return tile + whole + everything - tiled


def _tiles_loop_floats(height, width, objective):
    """Floats the loop keeps with blocks 1-2 in column tiles (tiles.features_in_tiles): one tile's
    activations at a time (recomputed in the backward pass), a zero-padded copy of each content
    target inside the tiled blocks, the front's output and its gradient, and past it what the
    loss reads plus a block's activations and gradients at a time (the ReLUs keep bits: 1/32 of
    a float each)."""
    grid, front, tile, _ = _tiled_front(height, width, objective)
    deepest = deepest_conv(objective.layers)
    padded_targets = sum(_layer_floats(height, grid.padded_width(layer) * grid.scale(layer), layer)
                         for layer in objective.content_layers if layer in front)
    back = [layer for layer in CONV_LAYERS[: CONV_LAYERS.index(deepest) + 1] if layer not in front]
    if not back:
        return TILE_ACTIVATIONS * tile + padded_targets + 2 * height * width * 3
    read = sum(_layer_floats(height, width, layer) for layer in objective.layers if layer not in front)
    bits = sum(_layer_floats(height, width, layer) for layer in back) // 32
    largest = max(_layer_floats(height, width, layer) for layer in back)
    boundary = 2 * _layer_floats(height, width, front[-1])
    # XLA's temporaries (CPU, 96 to 1024 px, Adam and L-BFGS) are 0.60–0.63 of this with the
    # paper's layers, 0.82–0.84 for a net cut after block 2 (its tile is most of it).
    return TILE_ACTIVATIONS * tile + LOOP_ACTIVATIONS * largest + read + bits + boundary + padded_targets


def estimate_run(settings: Settings, inputs: InputShapes, layout: Layout = Layout()) -> RunEstimate:
    """Analytic RunEstimate of a run at its largest scale, per device.

    Analytic rather than XLA's analysis: that compiles the chunk (seconds to a minute), which
    every run would pay twice; this costs microseconds and tests/test_memory.py checks that it
    covers XLA's figure. Split by rows (layout.shard "image"), a device holds its share of the
    images, their optimizer state and the loop's activations, and of the targets' passes from
    SEPARATE_PASSES_FROM pixels on (below it they run on one device).
    """
    objective = Objective.from_settings(settings, "caffe")
    deepest = deepest_conv(objective.layers)
    used = CONV_LAYERS[: CONV_LAYERS.index(deepest) + 1]
    params = sum(2 * math.prod(conv_shape(layer)) + conv_shape(layer)[-1] for layer in used) * FLOAT_BYTES
    height, width = loop_shape(settings, inputs.working_shape(settings.image.image_size))
    channels = 1 if settings.image.original_colors == "luminance" else 3
    rows, devices, per_device = layout.splits_rows, layout.devices, layout.per_device
    # Split by rows, a device holds its share of every row-split array (heights the device count
    # does not divide keep the image and optimizer state whole: see devices.row_shardings).
    own_height = -(-height // devices) if rows else height
    state_height = own_height if not rows or height % devices == 0 else height
    image = state_height * width * channels * FLOAT_BYTES
    spec = OptimizerSpec.from_settings(settings)
    history = 2 * spec.lbfgs_memory if spec.name == "lbfgs" else 0
    if spec.storage_dtype == "bfloat16" and spec.lbfgs_linesearch == "none":
        history //= 2  # bfloat16 pairs: half the bytes of float32 ones
    regions = inputs.regions
    grams = max(1, regions) * sum(BLOCK_CHANNELS[layer_block(layer)] ** 2 for layer in objective.style_layers) * FLOAT_BYTES
    # Regions: each member's guides on every style layer, and the guided products' F∘t_r, made
    # again in the backward pass for one layer at a time (all regions at once under vmap).
    grams += regions * sum(math.prod(layer_size(height, width, layer)) for layer in objective.style_layers) * FLOAT_BYTES
    guided_floats = GUIDED_COPIES * regions * max(_layer_floats(own_height, width, layer) for layer in objective.style_layers)
    # The compact L-BFGS form's SᵀY and YᵀY (2·memory² floats, kept on accelerators), counted on
    # every backend: the estimate does not depend on where it runs, and they are small.
    fixed_step = spec.name == "lbfgs" and spec.lbfgs_linesearch == "none"
    pair_products = 2 * spec.lbfgs_memory ** 2 * FLOAT_BYTES if fixed_step else 0
    content = sum(_layer_floats(height, width, layer) for layer in objective.content_layers) * FLOAT_BYTES
    state = per_device * ((IMAGE_BUFFERS + history) * image + grams + pair_products) + content
    activations = _pass_floats(height, width, objective, objective.content_layers) * FLOAT_BYTES
    if objective.remat == "blocks":
        loop_floats = _remat_loop_floats(own_height, width, objective)
    elif objective.remat == "tiles":
        loop_floats = _tiles_loop_floats(own_height, width, objective)
    else:
        loop_floats = LOOP_ACTIVATIONS * _activation_floats(own_height, width, deepest)
    loop = per_device * (loop_floats + guided_floats) * FLOAT_BYTES
    styles = [_pass_floats(*loop_shape(settings, images.long_side_shape(*shape, style_side(settings))), objective)
              for shape in inputs.styles]
    if height * width < SEPARATE_PASSES_FROM:  # one program: XLA overlaps the passes
        targets = TARGET_ACTIVATIONS * (activations + sum(styles) * FLOAT_BYTES) + guided_floats * FLOAT_BYTES
    else:  # a program per image, each split by rows like the loop
        split = devices if rows else 1
        targets = TARGET_ACTIVATIONS * max([activations] + [style * FLOAT_BYTES for style in styles]) // split
    return RunEstimate(params, state, loop, targets)


_BINARY_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_BYTES = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\+?\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*", re.IGNORECASE)


def limit_from_env(text: str) -> int:
    """$NST_JAX_MEMORY_LIMIT_BYTES's value in bytes: 8589934592, 8.5e9, 8G or 8GiB (K, M, G, T are
    powers of 1024). Anything else is a UserInputError naming the variable."""
    match = _BYTES.fullmatch(text)
    size = float(match.group(1)) * _BINARY_UNITS[(match.group(2) or "").upper()] if match else math.nan
    if not 1 <= size < math.inf:
        raise UserInputError(f"${LIMIT_ENV}: expected a positive number of bytes such as 8000000000, "
                             f"8e9 or 8G, got {text!r}")
    return int(size)


def available_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
    """Bytes a run may use on `device`: $NST_JAX_MEMORY_LIMIT_BYTES, else the accelerator's free
    memory (memory_stats), else on CPU the host's MemAvailable less a margin (HOST_MARGIN_*);
    None when unknown."""
    if os.environ.get(LIMIT_ENV):
        return limit_from_env(os.environ[LIMIT_ENV])
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        host = _host_available_bytes()
        # XLA aborts the process when the host runs out (no error to catch), and nothing counts
        # the process's own arrays or the runtime's buffers: keep a margin of the host's memory.
        return None if host is None else host - max(HOST_MARGIN_BYTES, int(HOST_MARGIN_SHARE * host))
    return None


def _host_available_bytes() -> Optional[int]:
    """The host's MemAvailable (Linux), or None."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measured_run(settings: Settings, inputs: InputShapes, layout: Layout = Layout()) -> RunEstimate:
    """`estimate_run` with the loop's figure from XLA's analysis of the compiled chunk (its
    arguments, temporaries and unaliased outputs, per device), the targets' pass still counted."""
    analytic = estimate_run(settings, inputs, layout)
    height, width = loop_shape(settings, inputs.working_shape(settings.image.image_size))
    rows = image_mesh(layout.devices) if layout.splits_rows else None
    loop = estimate_memory(settings, height, width, batch_size=layout.per_device, batched=layout.batched,
                           rows=rows).total
    # The loop's program holds the params and state itself: what is left over is the loop's.
    held = analytic.params + analytic.state
    return RunEstimate(analytic.params, analytic.state, max(0, loop - held), analytic.targets)


def gib(size: float) -> str:
    """Bytes as every message shows them: '1.25 GiB'."""
    return f"{size / 2**30:.2f} GiB"
