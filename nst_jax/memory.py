"""How much device memory a run will take, from XLA's analysis of the compiled step (no compute).

The chunk is lowered and compiled for the run's exact shapes with abstract inputs
(jax.ShapeDtypeStruct), so nothing is allocated; XLA reports its arguments, outputs and
temporaries. Compiling takes seconds; running the estimate costs no optimization step.
"""

import dataclasses

import jax
import jax.numpy as jnp

from nst_jax.layers import BLOCK_CHANNELS, CONV_LAYERS, conv_shape, deepest_conv
from nst_jax.objective import Objective, content_targets
from nst_jax.optimize import OptimizerSpec, chunk_program, make_optimizer
from nst_jax.vgg import ADJOINT


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the compiled loop needs on its device (per device when sharded)."""

    arguments: int  # params, targets, image and optimizer state
    temporaries: int  # activations kept for the backward pass, line search, etc.
    outputs_not_aliased: int  # outputs that do not reuse a donated input buffer

    @property
    def total(self):
        return self.arguments + self.temporaries + self.outputs_not_aliased


def abstract_chunk_args(settings, height, width, convention="caffe", batch_size=1, batched=None):
    """(objective, spec, args): the chunk's arguments as jax.ShapeDtypeStructs, as the engine
    ships them (kernel, bias and the prepared adjoint kernel of each layer it runs), for
    `chunk_program(objective, spec, batched).lower(*args)`: nothing is allocated.

    `batched` (default: batch_size > 1) says whether the run uses the vmapped chunk, as sharded
    runs do even for one member per device.
    """
    if batched is None:
        batched = batch_size > 1
    channels = 1 if settings.original_colors == "luminance" else 3
    objective = Objective.from_settings(settings, convention)
    spec = OptimizerSpec.from_settings(settings)
    used = CONV_LAYERS[: CONV_LAYERS.index(deepest_conv(objective.layers)) + 1]
    params = {layer: {"kernel": jax.ShapeDtypeStruct(conv_shape(layer), jnp.float32),
                      "bias": jax.ShapeDtypeStruct(conv_shape(layer)[-1:], jnp.float32),
                      ADJOINT: jax.ShapeDtypeStruct(adjoint_shape(conv_shape(layer)), jnp.float32)}
              for layer in used}
    members = (batch_size,) if batched else ()
    pixels = jax.ShapeDtypeStruct(members + (height, width, channels), jnp.float32)
    init = make_optimizer(spec).init
    state = jax.eval_shape(jax.vmap(init) if batched else init, pixels)
    content = jax.eval_shape(lambda p, x: content_targets(objective, p, x), params,
                             jax.ShapeDtypeStruct((height, width, channels), jnp.float32))
    grams = {layer: jax.ShapeDtypeStruct(members + (BLOCK_CHANNELS[int(layer[4])],) * 2, jnp.float32)
             for layer in objective.style_layers}
    weights = {key: jax.ShapeDtypeStruct(members, jnp.float32) for key in ("content", "style", "tv")}
    args = (pixels, state, jax.ShapeDtypeStruct((), jnp.int32), params,
            {"content": content, "style": grams}, weights)
    return objective, spec, args


def compiled_chunk(settings, height, width, convention="caffe", batch_size=1, batched=None):
    """The chunk the engine would run for these settings and sizes, compiled (nothing run)."""
    if batched is None:
        batched = batch_size > 1
    objective, spec, args = abstract_chunk_args(settings, height, width, convention, batch_size, batched)
    return chunk_program(objective, spec, batched).lower(*args).compile()


def estimate_memory(settings, height, width, convention="caffe", batch_size=1, batched=None):
    """Estimate the memory of `settings` at an output of height × width for `batch_size` members."""
    analysis = compiled_chunk(settings, height, width, convention, batch_size, batched).memory_analysis()
    return MemoryEstimate(analysis.argument_size_in_bytes, analysis.temp_size_in_bytes,
                          max(0, analysis.output_size_in_bytes - analysis.alias_size_in_bytes))


def adjoint_shape(kernel_shape):
    """HWIO shape of a kernel's adjoint: input and output channels swapped."""
    height, width, inputs, outputs = kernel_shape
    return (height, width, outputs, inputs)
