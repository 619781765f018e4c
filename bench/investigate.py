"""python -m bench.investigate: where the CPU step's time goes, one experiment per process.

XLA reads XLA_FLAGS once per process (and aborts on a flag it does not know), and JAX reads its
configuration at import, so every experiment runs in a fresh Python process and reports one JSON
line. The parent prints a Markdown table (the source of BENCHMARKS.md's "What we tried") and
writes the JSON to bench/results/investigate-<size>.json. With --paired, experiments that differ
only in how the chunk is traced or compiled run side by side in one process instead, called in
turn for --rounds rounds: that resolves differences of a few percent that separate processes on
a shared machine cannot.

    python -m bench.investigate [--size 256] [--steps 5] [--rounds 3] [--only baseline,stock-conv]
    python -m bench.investigate --paired --rounds 20 --only baseline,adjoint-in-loop
"""

import argparse
import collections
import dataclasses
import functools
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    # jax-chunk | jax-no-loop | jax-forward | torch | torch-forward | profile | layout | conv-layers
    kind: str = "jax-chunk"
    xla_flags: str = ""
    env: tuple = ()  # extra (NAME, value) pairs
    stock_conv: bool = False  # JAX's own differentiation of flax's convolution (before the fix)
    # The input gradient's rotated kernels: made once per run ("prepared", the shipped way), in
    # every step ("in-loop", as before), or in every step behind an optimization barrier.
    adjoint: str = "prepared"
    compute_dtype: str = "float32"
    chunk_steps: int = 1
    one_core: bool = False
    channels_last: bool = False
    few_channel_gradient: bool = True  # conv1_1's input gradient as a matrix product (shipped)
    # The chunk's YNNPACK setting: "shipped" (nst_jax.engine.optimize's compiler option: convolutions on
    # Eigen), "xla-default" (no option), or a value of xla_cpu_experimental_ynn_fusion_type.
    # (A per-jit compiler option overrides XLA_FLAGS, so the flag alone would change nothing.)
    ynn: str = "shipped"


EXPERIMENTS = (
    Experiment("stock-conv", "before: flax nn.Conv, input gradient by JAX's autodiff, in the "
               "optimizer's fori_loop", stock_conv=True),
    Experiment("stock-conv-no-loop", "before, but one jitted value_and_grad outside any loop",
               kind="jax-no-loop", stock_conv=True),
    Experiment("baseline", "now: conv3x3_same's canonical input-gradient convolution, in the loop"),
    Experiment("no-loop", "now, one jitted value_and_grad outside any loop", kind="jax-no-loop"),
    Experiment("forward-only", "now, the loss alone (no gradient), jitted", kind="jax-forward"),
    Experiment("chunk-10", "now, 10 steps per chunk call instead of 1", chunk_steps=10),
    Experiment("ynn-default", "now, but XLA's default CPU libraries (YNNPACK convolutions), without "
               "the chunk's compiler option that keeps convolutions on Eigen", ynn="xla-default"),
    Experiment("ynn-convolutions-only", "now, YNNPACK for convolutions only (no fused "
               "elementwise ops, so no materialized constant broadcasts)",
               ynn="LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"),
    Experiment("ynn-dots", "now, YNNPACK for dot products only (the Gram matrices; convolutions "
               "on Eigen)", ynn="LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),
    Experiment("adjoint-in-loop", "now, but the input gradient's kernels rotated in every step "
               "(before they were prepared once per run)", adjoint="in-loop"),
    Experiment("conv1_1-convolution", "now, but conv1_1's input gradient as a convolution with "
               "3 output channels (before)", few_channel_gradient=False),
    Experiment("hoisted-kernels", "kernels rotated in the step behind lax.optimization_barrier, "
               "so XLA hoists them out of the loop", adjoint="in-loop-barrier"),
    Experiment("onednn", "now + oneDNN", xla_flags="--xla_cpu_use_onednn=true"),
    Experiment("stock-conv-onednn", "before + oneDNN", xla_flags="--xla_cpu_use_onednn=true",
               stock_conv=True),
    Experiment("xnnpack", "now + XNNPACK", xla_flags="--xla_cpu_use_xnnpack=true"),
    Experiment("fast-math", "now + fast math", xla_flags="--xla_cpu_enable_fast_math=true"),
    Experiment("no-eigen-threads", "now, Eigen single-threaded",
               xla_flags="--xla_cpu_multi_thread_eigen=false"),
    Experiment("thunk-runtime-off", "now, legacy (non-thunk) runtime",
               xla_flags="--xla_cpu_use_thunk_runtime=false"),
    Experiment("precision-highest", "now, jax_default_matmul_precision=highest",
               env=(("JAX_DEFAULT_MATMUL_PRECISION", "highest"),)),
    Experiment("precision-bfloat16", "now, jax_default_matmul_precision=bfloat16",
               env=(("JAX_DEFAULT_MATMUL_PRECISION", "bfloat16"),)),
    Experiment("bfloat16", "now, settings.network.compute_dtype='bfloat16'", compute_dtype="bfloat16"),
    Experiment("one-core", "now, pinned to one core (taskset -c 0)", one_core=True),
    Experiment("torch", "PyTorch, NCHW, all cores", kind="torch"),
    Experiment("torch-no-grad", "PyTorch, the loss alone under no_grad", kind="torch-forward"),
    Experiment("torch-channels-last", "PyTorch, channels_last tensors", kind="torch",
               channels_last=True),
    Experiment("torch-one-core", "PyTorch, one thread pinned to one core", kind="torch",
               one_core=True),
    Experiment("profile", "now: jax.profiler trace of the chunk, time by kind of operation",
               kind="profile", xla_flags="--xla_cpu_enable_xprof_traceme=true"),
    Experiment("profile-stock-conv", "before: the same profile", kind="profile", stock_conv=True,
               xla_flags="--xla_cpu_enable_xprof_traceme=true"),
    Experiment("conv-layers", "single forward convolutions, one per block width (jitted, no "
               "loop), against torch.nn.functional.conv2d NCHW and channels_last", kind="conv-layers"),
    Experiment("conv-layers-eigen", "the same with YNNPACK off (XLA's Eigen convolutions)",
               kind="conv-layers", xla_flags="--xla_cpu_experimental_ynn_fusion_type="),
    Experiment("winograd-layers", "one forward 3×3 convolution per block width: XLA's direct "
               "convolution against Winograd F(2×2, 3×3) written in jnp (16 batched products, 2.25× "
               "fewer multiplications), and that batched product alone", kind="winograd"),
    Experiment("layout", "one 3×3 conv layer (128 ch at size/2) in a fori_loop: NHWC vs NCHW, "
               "autodiff vs canonical input gradient", kind="layout"),
)


# --- the child: one experiment, one JSON line -----------------------------------------------


def _stock_convolution(x, kernel, adjoint):
    """JAX's own differentiation of lax.conv_general_dilated (the network before the fix)."""
    import jax

    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rotate_behind_barrier(kernel):
    """The adjoint kernel behind lax.optimization_barrier.

    XLA's loop-invariant code motion does not hoist a lone transpose or reverse ("not worth
    hoisting individually") but does hoist a barrier and what feeds it, so the rotated kernels
    are made once per chunk call (Adam only: L-BFGS evaluates the loss inside conditionals,
    which the pass does not look into).
    """
    import jax

    from nst_jax.model.ops import adjoint_kernel

    return jax.lax.optimization_barrier(adjoint_kernel(kernel))


def _conv_impl(experiment):
    """How `experiment` has the network convolve (nst_jax.model.ops.ConvImpl)."""
    from nst_jax.model.ops import SHIPPED, ConvImpl, conv3x3_same

    convolve = SHIPPED.convolve
    if experiment.stock_conv:
        convolve = _stock_convolution
    elif not experiment.few_channel_gradient:
        convolve = functools.partial(conv3x3_same, few_channels=0)  # every input gradient a convolution
    rotate = _rotate_behind_barrier if experiment.adjoint == "in-loop-barrier" else SHIPPED.rotate
    return ConvImpl(convolve=convolve, rotate=rotate)


def _compiler_options(experiment):
    """The chunk's XLA compiler options for `experiment`; None: the shipped ones."""
    import jax

    if experiment.ynn == "shipped" or jax.default_backend() != "cpu":
        return None
    return {} if experiment.ynn == "xla-default" else {"xla_cpu_experimental_ynn_fusion_type": experiment.ynn}


def _jit_chunk(experiment, chunk):
    from nst_jax.engine.optimize import jit_chunk

    return jit_chunk(chunk, _compiler_options(experiment))


def _variant(problem, experiment):
    """`problem` (bench.jax_step.Problem) with `experiment`'s network, chunk and params."""
    from nst_jax.engine.optimize import OptimizerSpec, make_chunk

    objective = dataclasses.replace(problem.objective, conv=_conv_impl(experiment))
    return dataclasses.replace(
        problem, objective=objective, params=_variant_params(experiment, problem.params),
        chunk=make_chunk(objective, OptimizerSpec.from_settings(problem.settings)))


def _without_adjoint_kernels(params):
    from nst_jax.model.ops import ADJOINT

    return {name: {k: v for k, v in layer.items() if k != ADJOINT} for name, layer in params.items()}


def _summary_ms(seconds):
    from bench.timing import summarize

    return {key: (value * 1e3 if key != "n" else value) for key, value in summarize(seconds).items()}


def _time(call, warmup, repeats):
    from bench.timing import stopwatch

    for _ in range(warmup):
        call()
    return [stopwatch(call)[1] for _ in range(repeats)]


def _variant_params(experiment, params):
    return params if experiment.adjoint == "prepared" else _without_adjoint_kernels(params)


def _child(experiment, size, steps):
    import jax
    import jax.numpy as jnp

    from bench import hlo, jax_step, machine

    if experiment.kind == "layout":
        return _layout(size, steps)
    if experiment.kind == "conv-layers":
        return _conv_layers(size, steps)
    if experiment.kind == "winograd":
        return _winograd_layers(size, steps)
    problem = _variant(jax_step.build_problem(size, "adam", compute_dtype=experiment.compute_dtype),
                       experiment)
    threads = 1 if experiment.one_core else machine.usable_cores()
    if experiment.kind in ("torch", "torch-forward"):
        return _torch(problem, experiment, steps, threads)
    from nst_jax.loss.objective import total_loss

    def loss_of(x):
        return total_loss(problem.objective, problem.params, x, problem.targets, problem.weights)

    if experiment.kind == "jax-no-loop":
        step = jax.jit(jax.value_and_grad(loss_of))
        seconds = _time(lambda: jax.block_until_ready(step(problem.pixels)), 2, steps)
        return {"step_ms": _summary_ms(seconds)}
    if experiment.kind == "jax-forward":
        value = jax.jit(loss_of)
        seconds = _time(lambda: jax.block_until_ready(value(problem.pixels)), 2, steps)
        return {"step_ms": _summary_ms(seconds)}
    if experiment.kind == "profile":
        return _profile(problem, experiment, steps)
    from nst_jax.engine.optimize import init_state

    args = (problem.params, problem.targets, problem.weights)
    timed = jax_step.time_chunks(_jit_chunk(experiment, problem.chunk), problem.pixels,
                                 init_state(problem.optimizer, problem.pixels), args,
                                 chunk_steps=experiment.chunk_steps, warmup_chunks=2,
                                 timed_chunks=max(1, steps // experiment.chunk_steps))
    opt_state = init_state(problem.optimizer, problem.pixels)
    text = _jit_chunk(experiment, problem.chunk).lower(problem.pixels, opt_state, jnp.int32(1),
                                                       *args).compile().as_text()
    return {"step_ms": {k: (v * 1e3 if k != "n" else v) for k, v in timed["step_s"].items()},
            "compile_s": timed["compile"]["compile_s"], "convolutions": hlo.convolution_backends(text)}


def _torch(problem, experiment, steps, threads):
    import torch

    from bench import torch_step

    twin = torch_step.build_problem(problem, channels_last=experiment.channels_last)
    if experiment.kind == "torch":
        timed = torch_step.time_step(twin, problem.settings, warmup_steps=2, timed_steps=steps,
                                     threads=threads)
        return {"step_ms": {k: (v * 1e3 if k != "n" else v) for k, v in timed["step_s"].items()}}
    torch.set_num_threads(threads)

    def forward():
        with torch.no_grad():
            return torch_step.loss(torch, twin, twin.pixels).item()

    return {"step_ms": _summary_ms(_time(forward, 2, steps))}


def _profile(problem, experiment, steps):
    """Trace `steps` chunk calls; sum the traced time of each HLO instruction by category."""
    import jax
    import jax.numpy as jnp

    from bench import hlo
    from nst_jax.engine.optimize import init_state

    opt_state = init_state(problem.optimizer, problem.pixels)
    args = (problem.params, problem.targets, problem.weights)
    compiled = _jit_chunk(experiment, problem.chunk).lower(problem.pixels, opt_state, jnp.int32(1), *args).compile()
    listing = hlo.instructions(compiled.as_text())
    categories = {i["name"]: hlo.category(i) for i in listing}
    layers = {i["name"]: hlo.layer(i) for i in listing}
    pixels = problem.pixels
    for _ in range(2):
        pixels, opt_state, loss = compiled(pixels, opt_state, jnp.int32(1), *args)
        jax.block_until_ready(loss)
    folder = tempfile.mkdtemp(prefix="bench-trace-")
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    for _ in range(steps):
        pixels, opt_state, loss = compiled(pixels, opt_state, jnp.int32(1), *args)
        jax.block_until_ready(loss)
    jax.profiler.stop_trace()
    (trace,) = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace) as stream:
        events = json.load(stream)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals, by_layer = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name")
        if event.get("ph") != "X" or not categories.get(name):
            continue
        milliseconds = event.get("dur", 0) / 1e3 / steps  # µs -> ms per step
        totals[categories[name]] += milliseconds
        if categories[name].startswith("convolution"):
            direction = "input gradient" if categories[name].endswith("gradient") else "forward"
            by_layer[f"{layers[name]} {direction}"] += milliseconds
    shutil.rmtree(folder, ignore_errors=True)
    return {"ms_per_step_by_category": dict(totals.most_common()),
            "convolution_ms_per_step_by_layer": dict(sorted(by_layer.items()))}


def _layout(size, steps):
    """One conv2_x-like layer (128 -> 128 channels at size/2) in a 1-step fori_loop, four ways."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.model.ops import adjoint_kernel, conv3x3_same

    side, channels = size // 2, 128
    rng = np.random.default_rng(0)
    kernel_hwio = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32) * 0.03)
    image_nhwc = jnp.asarray(rng.standard_normal((1, side, side, channels), np.float32))
    variants = {
        "NHWC autodiff": (lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), image_nhwc, kernel_hwio),
        "NHWC canonical input gradient": (lambda x, k: conv3x3_same(x, k, adjoint_kernel(k)),
                                          image_nhwc, kernel_hwio),
        "NCHW autodiff": (lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")),
            jnp.transpose(image_nhwc, (0, 3, 1, 2)), jnp.transpose(kernel_hwio, (3, 2, 0, 1))),
    }
    results = {}
    for name, (conv, image, kernel) in variants.items():
        gradient = jax.grad(lambda x, k, conv=conv: jnp.sum(jnp.square(conv(x, k))))
        loop = jax.jit(lambda x, k, gradient=gradient: jax.lax.fori_loop(
            0, 1, lambda _, y: y - 1e-6 * gradient(y, k), x))
        seconds = _time(lambda: jax.block_until_ready(loop(image, kernel)), 2, steps)
        results[name] = _summary_ms(seconds)
    return {"by_variant_ms": results}


def _conv_layers(size, steps):
    """GFLOP/s of one forward 3×3 convolution per VGG block width at this image size: JAX
    (whatever library XLA picks) and PyTorch (oneDNN), both on all cores."""
    import jax
    import numpy as np

    from bench import machine

    rates = {}
    rng = np.random.default_rng(0)
    for block, channels in enumerate((64, 128, 256, 512)):
        side = size >> block
        image = rng.standard_normal((1, side, side, channels), np.float32)
        kernel = rng.standard_normal((3, 3, channels, channels), np.float32) * 0.05
        flops = 2 * side * side * channels * channels * 9
        conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        image_jax, kernel_jax = jax.numpy.asarray(image), jax.numpy.asarray(kernel)
        seconds = _time(lambda: conv(image_jax, kernel_jax).block_until_ready(), 2, steps)
        label = f"{side}x{side}x{channels}"
        rates[f"jax {label}"] = flops / sorted(seconds)[len(seconds) // 2] / 1e9
        try:
            import torch
        except ImportError:
            continue
        torch.set_num_threads(machine.usable_cores())
        nchw = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
        oihw = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        for layout, memory_format in (("NCHW", torch.contiguous_format),
                                      ("channels_last", torch.channels_last)):
            x = nchw.contiguous(memory_format=memory_format)
            k = oihw.contiguous(memory_format=memory_format)
            seconds = _time(lambda: torch.nn.functional.conv2d(x, k, padding=1), 2, steps)
            rates[f"torch {layout} {label}"] = flops / sorted(seconds)[len(seconds) // 2] / 1e9
    return {"gflops_by_layer": rates}


# Winograd F(2×2, 3×3) (Lavin & Gray 2016): a 4×4 input tile d gives a 2×2 output tile
# Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, 16 multiplications per tile and channel pair instead of 36.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_bt(rows):
    """Bᵀ applied to four arrays (one per tile row or column)."""
    return [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]


def _winograd_kernel(kernel):
    """HWIO 3×3 kernel -> (16, I, O): G g Gᵀ for every channel pair."""
    import jax.numpy as jnp

    g = jnp.asarray(_WINOGRAD_G, kernel.dtype)
    return jnp.einsum("ah,hwio,bw->abio", g, kernel, g).reshape(16, *kernel.shape[2:])


def _winograd_conv(x, transformed):
    """3×3 "same" correlation of NHWC `x` by Winograd F(2×2, 3×3), kernel from _winograd_kernel."""
    import jax.numpy as jnp

    n, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    padded = jnp.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - w + 1), (0, 0)))
    tiles = [[padded[:, a:a + 2 * th:2, b:b + 2 * tw:2, :] for b in range(4)] for a in range(4)]
    columns = [_winograd_bt([tiles[a][b] for a in range(4)]) for b in range(4)]
    v = [_winograd_bt([columns[b][a] for b in range(4)]) for a in range(4)]
    v = jnp.stack([v[a][b] for a in range(4) for b in range(4)]).reshape(16, n * th * tw, c)
    m = jnp.einsum("ktc,kco->kto", v, transformed).reshape(4, 4, n, th, tw, -1)
    rows = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # Aᵀ along the tile's rows, then columns
    out = [[r[0] + r[1] + r[2], r[1] - r[2] - r[3]] for r in rows]
    out = jnp.stack([jnp.stack(row, 3) for row in out], 2)  # (n, th, 2, tw, 2, o)
    return out.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w, :]


def _winograd_layers(size, steps):
    """Per block width: direct convolution vs Winograd F(2×2, 3×3), with the chunk's options."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.engine.optimize import compiler_options

    rates, errors, rng = {}, {}, np.random.default_rng(0)
    for block, channels in enumerate((64, 128, 256, 512)):
        side = size >> block
        x = jnp.asarray(rng.standard_normal((1, side, side, channels), np.float32))
        kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32) * 0.05)
        transformed = _winograd_kernel(kernel)
        direct = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
            compiler_options=compiler_options())
        winograd = jax.jit(_winograd_conv, compiler_options=compiler_options())
        reference, ours = direct(x, kernel), winograd(x, transformed)
        error = float(jnp.abs(ours - reference).max() / jnp.abs(reference).max())
        v = jnp.asarray(rng.standard_normal((16, ((side + 1) // 2) ** 2, channels), np.float32))
        product = jax.jit(lambda v, u: jnp.einsum("ktc,kco->kto", v, u), compiler_options=compiler_options())
        flops = 2 * side * side * channels * channels * 9
        label = f"{side}x{side}x{channels}"
        for name, call in (("direct", lambda: direct(x, kernel)), ("winograd", lambda: winograd(x, transformed)),
                           ("winograd's product alone", lambda: product(v, transformed))):
            seconds = _time(lambda: call().block_until_ready(), 2, steps)
            rates[f"{name} {label}"] = flops / sorted(seconds)[len(seconds) // 2] / 1e9
        errors[label] = error
    # GFLOP/s count the direct convolution's FLOPs for all three (Winograd's are "effective").
    return {"gflops_by_layer": rates, "winograd_max_relative_error": errors}


# --- paired: chunk variants side by side in one process ------------------------------------


def _paired(chosen, size, rounds):
    """Compile every chosen chunk experiment in this process, then time them in turn.

    Each round calls every variant twice from a fresh optimizer state and times the second
    call, so a burst of load elsewhere hits all variants alike: differences of a few percent
    that separate processes cannot resolve show here. Experiments that need their own process
    (XLA_FLAGS, environment, one core, other kinds) are refused.
    """
    import jax
    import jax.numpy as jnp

    from bench import jax_step
    from nst_jax.engine.optimize import init_state

    for experiment in chosen:
        if (experiment.kind != "jax-chunk" or experiment.xla_flags or experiment.env
                or experiment.one_core or experiment.chunk_steps != 1):
            raise SystemExit(f"--paired: {experiment.name} needs a process of its own")
    base = jax_step.build_problem(size, "adam")
    compiled = {}
    for experiment in chosen:
        problem = _variant(base if experiment.compute_dtype == "float32" else
                           jax_step.build_problem(size, "adam", compute_dtype=experiment.compute_dtype),
                           experiment)
        state = init_state(problem.optimizer, problem.pixels)
        executable = _jit_chunk(experiment, problem.chunk).lower(
            problem.pixels, state, jnp.int32(1), problem.params, problem.targets, problem.weights).compile()
        compiled[experiment.name] = (executable, problem)
    seconds = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, (executable, problem) in compiled.items():
            pixels, state = problem.pixels, init_state(problem.optimizer, problem.pixels)
            for call in range(2):
                started = time.perf_counter()
                pixels, state, loss = executable(pixels, state, jnp.int32(1), problem.params,
                                                 problem.targets, problem.weights)
                jax.block_until_ready(loss)
                if call:
                    seconds[name].append(time.perf_counter() - started)
    return {name: {"step_ms": _summary_ms(values)} for name, values in seconds.items()}


# --- the parent: run every experiment in its own process ---------------------------------------


def _run_child(experiment, size, steps, timeout):
    environment = dict(os.environ)
    if experiment.xla_flags:
        environment["XLA_FLAGS"] = (environment.get("XLA_FLAGS", "") + " " + experiment.xla_flags).strip()
    environment.update(dict(experiment.env))
    command = [sys.executable, "-m", "bench.investigate", "--child", experiment.name,
               "--size", str(size), "--steps", str(steps)]
    if experiment.one_core:
        if not shutil.which("taskset"):
            return {"error": "taskset not found"}
        command = ["taskset", "-c", "0"] + command
    try:
        finished = subprocess.run(command, env=environment, capture_output=True, text=True,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        last = (finished.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {finished.returncode}: {last[:200]}"}
    return json.loads(lines[-1])


def _combine(rounds):
    """One result from several rounds: the median round (by median step time), with the spread
    of the rounds' medians; other kinds of result: the last round."""
    timed = [r for r in rounds if "step_ms" in r]
    if not timed:
        return rounds[-1]
    timed.sort(key=lambda r: r["step_ms"]["median"])
    combined = dict(timed[len(timed) // 2])
    combined["round_medians_ms"] = [r["step_ms"]["median"] for r in timed]
    return combined


def _row(experiment, result, baseline_ms):
    if "error" in result:
        return f"| {experiment.name} | {experiment.description} | failed: {result['error']} | | |"
    if "step_ms" in result:
        step = result["step_ms"]
        ratio = f"{step['median'] / baseline_ms:.2f}" if baseline_ms else "–"
        detail = ""
        if "convolutions" in result:
            detail = "convolutions: " + ", ".join(
                f"{count} {backend.strip('_')}" for backend, count in sorted(result["convolutions"].items()))
        rounds = result.get("round_medians_ms", [])
        if len(rounds) > 1:
            detail = f"round medians {', '.join(f'{m:.0f}' for m in rounds)}; " + detail
        return (f"| {experiment.name} | {experiment.description} | {step['median']:.0f} "
                f"({step['min']:.0f}–{step['max']:.0f}) | {ratio} | {detail} |")
    if "ms_per_step_by_category" in result:
        parts = "; ".join(f"{name} {ms:.0f}" for name, ms in result["ms_per_step_by_category"].items())
        return f"| {experiment.name} | {experiment.description} | | | ms/step: {parts} |"
    if "gflops_by_layer" in result:
        parts = "; ".join(f"{name} {rate:.0f}" for name, rate in result["gflops_by_layer"].items())
        return f"| {experiment.name} | {experiment.description} | | | GFLOP/s: {parts} |"
    parts = "; ".join(f"{name} {ms['median']:.1f}" for name, ms in result["by_variant_ms"].items())
    return f"| {experiment.name} | {experiment.description} | | | ms: {parts} |"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.investigate", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image size in px (default 256)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per experiment")
    parser.add_argument("--only", help="comma-separated experiment names")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every experiment this many times, interleaved; report the median")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per experiment")
    parser.add_argument("--paired", action="store_true",
                        help="compile the chosen chunk experiments in one process and time them in "
                             "turn, --rounds times (resolves smaller differences)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {experiment.name: experiment for experiment in EXPERIMENTS}
    if args.child:
        print(json.dumps(_child(by_name[args.child], args.size, args.steps)))
        return 0
    chosen = [by_name[name] for name in args.only.split(",")] if args.only else list(EXPERIMENTS)
    from bench import machine

    results = {"size": args.size, "steps": args.steps, "rounds": args.rounds,
               "load_average_start": machine.load_average(),
               "machine": machine.describe_machine(), "experiments": {}}
    if args.paired:
        for name, result in _paired(chosen, args.size, args.rounds).items():
            results["experiments"][name] = {**dataclasses.asdict(by_name[name]), "rounds": [result]}
    for round_number in range(0 if args.paired else args.rounds):
        # Rounds interleave the experiments, so a burst of load elsewhere hits all of them.
        for experiment in chosen:
            print(f"[investigate] {experiment.name} (round {round_number + 1})", file=sys.stderr,
                  flush=True)
            result = _run_child(experiment, args.size, args.steps, args.timeout)
            entry = results["experiments"].setdefault(
                experiment.name, {**dataclasses.asdict(experiment), "rounds": []})
            entry["rounds"].append(result)
    for entry in results["experiments"].values():
        entry["result"] = _combine(entry["rounds"])
    baseline = results["experiments"].get("baseline", {}).get("result", {})
    baseline_ms: Optional[float] = baseline["step_ms"]["median"] if "step_ms" in baseline else None
    rows = ["| experiment | what | median ms (min–max) | ÷ baseline | notes |", "|---|---|---|---|---|"]
    rows += [_row(experiment, results["experiments"][experiment.name]["result"], baseline_ms)
             for experiment in chosen]
    results["load_average_end"] = machine.load_average()
    RESULTS.mkdir(parents=True, exist_ok=True)
    from bench.report import write_json

    suffix = f"-{'-'.join(e.name for e in chosen)}" if args.only and len(chosen) <= 3 else ""
    suffix += "-paired" if args.paired else ""
    write_json(results, RESULTS / f"investigate-{args.size}{suffix}.json")
    print("\n".join(rows))
    print(f"\nload average at start {results['load_average_start']}, at end {results['load_average_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
