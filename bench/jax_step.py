"""The project's own jitted step, timed as the CLI runs it: a chunk of steps per host visit.

Everything is built from nst_jax (preset, Objective, prepare_params, the targets' passes, the run's
one builder of the chunk's inputs, make_chunk / jit_chunk) so the benchmark measures the shipped
code, not a copy. Weights are random
(weights_tools.synthetic) and images synthetic: timing depends on shapes, not on values,
except that L-BFGS's line search may evaluate the loss a different number of times.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import machine
from bench.timing import scaled, stopwatch, summarize
from nst_jax.imaging import images
from nst_jax.engine.chunk_inputs import MemberInputs, build_chunk_inputs
from nst_jax.engine.stylize import prepare_params
from nst_jax.loss.objective import Objective, loss_weights, total_loss
from nst_jax.engine.optimize import (BATCH_AXES, OptimizerSpec, init_state, jit_chunk, make_chunk, make_optimizer,
                                     run_loop)
from nst_jax.config.presets import preset
from nst_jax.engine.stages import initial_pixels, prepare_images, run_targets
from nst_jax.cli.files import PROGRESS_INTERVAL
from weights_tools.synthetic import synthetic_params

# The synthetic params stand for the Keras (Caffe-derived) release: BGR, 0..255, mean-subtracted.
CONVENTION = "caffe"


def synthetic_images(height, width, seed=0):
    """A content and a style image, (H, W, 3) RGB in [0, 1]: smooth random shapes plus grain."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(2):
        coarse = rng.random((max(2, height // 16), max(2, width // 16), 3), dtype=np.float32)
        smooth = images.resize_to(coarse, height, width)
        grain = rng.normal(0.0, 0.05, (height, width, 3)).astype(np.float32)
        pictures.append(np.clip(smooth + grain, 0.0, 1.0))
    return pictures


@dataclasses.dataclass
class Problem:
    """One configuration's inputs: settings, the unjitted chunk, and its arguments."""

    settings: Any
    objective: Objective
    optimizer: optax.GradientTransformation
    chunk: Any
    params: dict
    targets: dict
    weights: dict
    content_pixels: np.ndarray  # (H, W, 3) in [0, pixel_range]
    style_pixels: np.ndarray
    pixels: jax.Array  # the start image


def build_problem(size, optimizer, *, compute_dtype="float32", preset_name="gatys", seed=0,
                  params=None, remat="none"):
    """The `preset_name` preset at `size` px (square) with `optimizer`, ready to time.

    Args:
      params: {"conv1_1": {"kernel", "bias"}, ...}; default synthetic_params(seed).
      remat: --remat for the targets and the chunk ("tiles" for print sizes).
    """
    settings = preset(preset_name).replace(image_size=size, optimizer=optimizer,
                                           compute_dtype=compute_dtype, remat=remat)
    objective = Objective.from_settings(settings, CONVENTION)
    params = prepare_params(params if params is not None else synthetic_params(seed), objective)
    content, style = synthetic_images(size, size, seed)
    _, content_pixels, style_pixels = prepare_images(content, [style], settings)
    spec = OptimizerSpec.from_settings(settings)
    inputs = _chunk_inputs(settings, objective, spec, params, content_pixels, style_pixels, seeds=[seed])
    return Problem(settings, objective, make_optimizer(spec), make_chunk(objective, spec), inputs.params,
                   inputs.targets, inputs.weights, content_pixels, style_pixels[0], inputs.pixels)


def _chunk_inputs(settings, objective, spec, params, content_pixels, style_pixels, seeds, batched=False):
    """The chunk's inputs as a run builds them (nst_jax.engine.chunk_inputs): one member per seed
    (its noise start), every member with the same targets and loss weights."""
    content_targets, grams, blended = run_targets(
        objective, params, jax.device_put(content_pixels), jax.device_put(style_pixels),
        jax.device_put(np.ones(len(style_pixels), np.float32) / len(style_pixels)))
    weights = loss_weights(settings.loss.content_weight, settings.loss.style_weight, settings.loss.tv_weight)
    members = [MemberInputs(initial_pixels(settings, CONVENTION, content_pixels, seed=seed), blended, weights)
               for seed in seeds]
    return build_chunk_inputs(objective, spec, params, content_targets, members, batched=batched)


def _linesearch_evaluations(opt_state):
    """optax's zoom line search: loss-and-gradient evaluations in the last step (None: no L-BFGS).

    With optax.value_and_grad_from_state the step reuses the value and gradient the previous
    line search ended on, so after the first step every evaluation is a line-search one.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if any(getattr(key, "name", None) == "num_linesearch_steps" for key in path):
            return int(np.max(np.asarray(leaf)))  # under vmap: the slowest member sets the pace
    return None


def _cost_flops(compiled):
    """XLA's own FLOP estimate of the compiled chunk (its loop bodies counted once), or None."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _memory_analysis(compiled):
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return {key: int(getattr(stats, key)) for key in
            ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
            if hasattr(stats, key)}


def time_chunks(chunk_fn, pixels, opt_state, args, *, chunk_steps, warmup_chunks, timed_chunks,
                long_chunk_steps=0):
    """Compile `chunk_fn` ahead of time, warm it up, then time `timed_chunks` calls.

    Returns a dict: compile (lower_s, compile_s, first_call_s), step_s (per step: each chunk's
    time ÷ chunk_steps), evals_per_step (L-BFGS), long_chunk (one more call of
    `long_chunk_steps` steps, the CLI's cadence: per-call costs spread over its steps), loss,
    memory, xla_cost_flops.
    """
    lowered, lower_s = stopwatch(
        lambda: chunk_fn.lower(pixels, opt_state, jnp.int32(chunk_steps), *args))
    compiled, compile_s = stopwatch(lowered.compile)
    machine.reset_host_peak()

    def run(num_steps):
        # The step count is an argument of the compiled chunk: any count, no new compilation.
        nonlocal pixels, opt_state
        pixels, opt_state, terms = compiled(pixels, opt_state, jnp.int32(num_steps), *args)
        return jax.block_until_ready(terms["total"])

    _, first_call_s = stopwatch(lambda: run(chunk_steps))
    for _ in range(max(0, warmup_chunks - 1)):
        run(chunk_steps)
    seconds, evaluations = [], []
    for _ in range(timed_chunks):
        loss, elapsed = stopwatch(lambda: run(chunk_steps))
        seconds.append(elapsed)
        evaluations.append(_linesearch_evaluations(opt_state))
    per_step = scaled(summarize(seconds), 1.0 / chunk_steps)
    has_linesearch = evaluations[0] is not None
    long_chunk = None
    if long_chunk_steps:
        loss, elapsed = stopwatch(lambda: run(long_chunk_steps))
        long_chunk = {"steps": long_chunk_steps, "seconds_per_step": elapsed / long_chunk_steps}
    return {
        "compile": {"lower_s": lower_s, "compile_s": compile_s, "first_call_s": first_call_s},
        "chunk_steps": chunk_steps,
        "step_s": per_step,
        "evals_per_step": summarize(evaluations) if has_linesearch else None,
        "long_chunk": long_chunk,
        "loss": np.asarray(loss).tolist(),
        "memory": {"host_peak_rss_bytes": machine.host_peak_rss(),
                   "device": machine.device_memory(),
                   "xla": _memory_analysis(compiled)},
        "xla_cost_flops": _cost_flops(compiled),
    }


def time_step(problem, *, chunk_steps, warmup_chunks, timed_chunks, long_chunk_steps=0):
    """Per-step time of one image's step, jitted exactly as the CLI does (jit_chunk)."""
    opt_state = init_state(problem.optimizer, problem.pixels)
    return time_chunks(jit_chunk(problem.chunk), problem.pixels, opt_state,
                       (problem.params, problem.targets, problem.weights), chunk_steps=chunk_steps,
                       warmup_chunks=warmup_chunks, timed_chunks=timed_chunks,
                       long_chunk_steps=long_chunk_steps)


def time_batch(problem, batch, *, chunk_steps, warmup_chunks, timed_chunks):
    """Per-step time of `batch` stylizations as one vmapped chunk, as nst_jax.engine.stylize runs them.

    Members differ in their start noise (seed); all share the content and style targets, which
    changes nothing in the cost.
    """
    inputs = _chunk_inputs(problem.settings, problem.objective, OptimizerSpec.from_settings(problem.settings),
                           problem.params, problem.content_pixels, [problem.style_pixels], seeds=range(batch),
                           batched=True)
    batched = jax.vmap(problem.chunk, in_axes=BATCH_AXES)
    return time_chunks(jit_chunk(batched), inputs.pixels, inputs.opt_state, inputs.loss_args,
                       chunk_steps=chunk_steps, warmup_chunks=warmup_chunks, timed_chunks=timed_chunks)


def full_run(problem, num_steps):
    """A whole run as the CLI does it (host visit every PROGRESS_INTERVAL steps), compile excluded.

    Returns {"steps", "seconds", "final_loss" (as the run computed it), "final_loss_float32"
    (the final image scored by the float32 objective, so bfloat16 runs compare fairly)}.
    """
    opt_state = init_state(problem.optimizer, problem.pixels)
    args = (problem.params, problem.targets, problem.weights)
    compiled = jit_chunk(problem.chunk).lower(problem.pixels, opt_state, jnp.int32(1), *args).compile()
    result = run_loop(compiled, problem.pixels, opt_state, num_steps, args, (PROGRESS_INTERVAL,))
    float32_objective = dataclasses.replace(problem.objective, compute_dtype="float32")
    score = jax.jit(lambda x: total_loss(float32_objective, problem.params, x, problem.targets,
                                         problem.weights))
    return {"steps": result.steps_done, "seconds": result.seconds,
            "final_loss": float(result.loss), "final_loss_float32": float(score(result.pixels))}
