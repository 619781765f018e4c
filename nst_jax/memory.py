"""How much device memory a run will take, from XLA's analysis of the compiled step (no compute).

The chunk is lowered and compiled for the run's exact shapes with abstract inputs
(jax.ShapeDtypeStruct), so nothing is allocated; XLA reports its arguments, outputs and
temporaries. Compiling takes seconds; running the estimate costs no optimization step.
"""

import dataclasses

import jax
import jax.numpy as jnp

from nst_jax.batch import batched_chunk
from nst_jax.layers import BLOCK_CHANNELS, CONV_LAYERS, conv_shape, deepest_conv
from nst_jax.objective import Objective, content_targets
from nst_jax.optimize import jit_chunk, make_optimizer


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the compiled loop needs on its device (per device when sharded)."""

    arguments: int  # params, targets, image and optimizer state
    temporaries: int  # activations kept for the backward pass, line search, etc.
    outputs_not_aliased: int  # outputs that do not reuse a donated input buffer

    @property
    def total(self):
        return self.arguments + self.temporaries + self.outputs_not_aliased


def estimate_memory(settings, height, width, convention="caffe", batch_size=1):
    """Estimate the memory of `settings` at an output of height × width for `batch_size` members."""
    channels = 1 if settings.original_colors == "luminance" else 3
    objective = Objective.from_settings(settings, convention)
    optimizer = make_optimizer(settings)
    used = CONV_LAYERS[: CONV_LAYERS.index(deepest_conv(objective.layers)) + 1]
    params = {layer: {"kernel": jax.ShapeDtypeStruct(conv_shape(layer), jnp.float32),
                      "bias": jax.ShapeDtypeStruct(conv_shape(layer)[-1:], jnp.float32)}
              for layer in used}
    pixels = jax.ShapeDtypeStruct((batch_size, height, width, channels), jnp.float32)
    state = jax.eval_shape(jax.vmap(optimizer.init), pixels)
    content = jax.eval_shape(lambda p, x: content_targets(objective, p, x), params,
                             jax.ShapeDtypeStruct((height, width, channels), jnp.float32))
    grams = {layer: jax.ShapeDtypeStruct((batch_size,) + (BLOCK_CHANNELS[int(layer[4])],) * 2, jnp.float32)
             for layer in objective.style_layers}
    weights = {key: jax.ShapeDtypeStruct((batch_size,), jnp.float32) for key in ("content", "style", "tv")}
    batched = batched_chunk(objective, optimizer, settings.optimizer == "lbfgs")
    compiled = jit_chunk(batched).lower(
        pixels, state, jnp.int32(1), params, {"content": content, "style": grams}, weights).compile()
    analysis = compiled.memory_analysis()
    return MemoryEstimate(analysis.argument_size_in_bytes, analysis.temp_size_in_bytes,
                          max(0, analysis.output_size_in_bytes - analysis.alias_size_in_bytes))

