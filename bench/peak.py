"""The machine's measured matrix-multiply rate: the yardstick for the step's GFLOP/s.

A large float32 square product (2·n³ FLOPs) is about the best case for any BLAS, so its rate is
what a convolution-heavy step can at most hope for on the same cores.
"""

import jax
import jax.numpy as jnp

from bench.timing import stopwatch, summarize


def jax_matmul(n, repeats):
    """GFLOP/s of a jitted float32 n×n @ n×n in JAX (XLA's default precision for the device)."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    left = jax.random.normal(keys[0], (n, n), jnp.float32)
    right = jax.random.normal(keys[1], (n, n), jnp.float32)
    product = jax.jit(jnp.dot)
    product(left, right).block_until_ready()  # compile and warm up
    seconds = [stopwatch(lambda: product(left, right).block_until_ready())[1] for _ in range(repeats)]
    return _rate(n, seconds)


def torch_matmul(n, repeats, threads):
    """GFLOP/s of torch.mm on float32 n×n matrices with `threads` intra-op threads (CPU)."""
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(n, n, generator=generator)
    right = torch.randn(n, n, generator=generator)
    torch.mm(left, right)  # warm up (thread pool, MKL's buffers)
    seconds = [stopwatch(lambda: torch.mm(left, right))[1] for _ in range(repeats)]
    return _rate(n, seconds)


def _rate(n, seconds):
    summary = summarize(seconds)
    flops = 2 * n ** 3
    return {"n": n, "flops": flops, "seconds": summary, "gflops": flops / summary["median"] / 1e9,
            "best_gflops": flops / summary["min"] / 1e9}


def best_of_sizes(measure, sizes, repeats, **kwargs):
    """Measure at each size; returns {"by_size": [...], "gflops": the best median rate}."""
    runs = [measure(n, repeats, **kwargs) for n in sizes]
    return {"by_size": runs, "gflops": max(run["gflops"] for run in runs)}
