"""python -m bench lbfgs: what one fixed-step L-BFGS update costs in each form (diagnosis).

The optimizer alone, without the network: a chunk of 10 updates (lax.fori_loop, as the CLI's
chunk runs them) of an image-sized array against a cheap smooth gradient, from a state whose
history is full (`--memory` pairs held), for each of nst_jax.engine.lbfgs's forms. The
whole step is `python -m bench`'s; this separates what the two-loop recursion and the compact
form cost on this backend (on a GPU the two-loop's iterations are launches and host round trips).
"""

import argparse
import functools
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench import machine
from nst_jax.errors import bad_input_exits_2
from bench.flags import at_least, int_list
from bench.report import write_json
from bench.timing import stopwatch, summarize
from nst_jax.engine.lbfgs import _history_products, fixed_step_lbfgs, to_storage

CHUNK = 10  # updates per timed call: the CLI's progress interval


def _gradient(x):
    return x + 0.1 * x ** 3  # a cheap stand-in for the network's


def full_state(state, x, memory):
    """`state` (just initialized at x) with every slot holding a pair: s random, y = 1.1·s (so
    every curvature is positive), and the compact form's products to match (made on the device:
    at 1024 px they are 30 GFLOP)."""
    steps = jax.random.normal(jax.random.PRNGKey(1), (memory,) + x.shape, jnp.float32) * 0.01
    changes = 1.1 * steps
    flat_s, flat_y = steps.reshape(memory, -1), changes.reshape(memory, -1)
    products = state.pair_products
    if products.shape[1]:  # SᵀY and YᵀY by slot, as the compact form keeps them
        products = jnp.stack([_history_products(steps, changes), _history_products(changes, changes)])
    return state._replace(
        iteration=jnp.asarray(memory + 1, jnp.int32), previous_gradient=_gradient(x),
        previous_step=steps[-1], steps=to_storage(steps, state.steps.dtype),
        gradient_changes=to_storage(changes, state.steps.dtype),
        curvatures=jnp.sum(flat_s * flat_y, axis=1), pair_products=products,
        newest=jnp.asarray(memory - 1, jnp.int32), kept=jnp.asarray(memory, jnp.int32),
        initial_scale=jnp.asarray(1 / 1.1, jnp.float32))


def time_form(size: int, memory: int, form: str, timed: int = 5, storage: str = "float32") -> Dict[str, Any]:
    """ms per update of `form` at a size×size×3 image with `memory` pairs held in `storage`."""
    optimizer = fixed_step_lbfgs(memory_size=memory, form=form,
                                 storage_dtype=jnp.bfloat16 if storage == "bfloat16" else None)

    @functools.partial(jax.jit, donate_argnums=1)  # the state donated, as the CLI's chunk does
    def chunk(x, state):
        def body(_, carry):
            x, state = carry
            update, state = optimizer.update(_gradient(x), state, x)
            return x + update, state
        return jax.lax.fori_loop(0, CHUNK, body, (x, state))

    x = jnp.asarray(np.random.default_rng(0).standard_normal((size, size, 3)), jnp.float32)
    state = full_state(optimizer.init(x), x, memory)
    compiled, compile_s = stopwatch(lambda: chunk.lower(x, state).compile())
    analysis = compiled.memory_analysis()
    history_bytes = 2 * state.steps.size * state.steps.dtype.itemsize
    x, state = jax.block_until_ready(chunk(x, state))  # warm up
    seconds = []
    for _ in range(timed):
        (x, state), elapsed = stopwatch(lambda: jax.block_until_ready(chunk(x, state)))
        seconds.append(elapsed / CHUNK)
    summary = summarize(seconds)
    # XLA's temporaries against the history's bytes: what a form costs in memory beyond its state.
    temporaries = analysis.temp_size_in_bytes / history_bytes if analysis is not None else None
    return {"size": size, "memory": memory, "form": form, "storage": storage, "kept": int(state.kept),
            "compile_s": compile_s,
            "update_ms": summary["median"] * 1000, "min_ms": summary["min"] * 1000,
            "temporaries_per_history": temporaries}


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lbfgs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256,512", help="square sizes in px")
    parser.add_argument("--memory", type=int, default=100, help="pairs held (default 100, neural-style's)")
    parser.add_argument("--storage-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the history, as --storage-dtype of the CLI (default float32)")
    parser.add_argument("--out", default=None, help="file for the JSON (default: print only)")
    args = parser.parse_args(argv)
    sizes = int_list("--sizes", args.sizes, 8)
    at_least("--memory", args.memory)
    rows: List[Dict[str, Any]] = []
    report = {"machine": machine.describe_machine(), "backend": jax.default_backend(), "rows": rows}
    print(f"{jax.default_backend()}: ms per update, {args.memory} pairs held in {args.storage_dtype}\n")
    print("| size | two-loop ms | compact ms | compact ÷ two-loop | temporaries ÷ history (two-loop, compact) |\n"
          "|---|---|---|---|---|", flush=True)
    for size in sizes:
        pair = [time_form(size, args.memory, form, storage=args.storage_dtype) for form in ("two-loop", "compact")]
        rows.extend(pair)
        print(f"| {size} | {pair[0]['update_ms']:.3f} | {pair[1]['update_ms']:.3f} "
              f"| {pair[1]['update_ms'] / pair[0]['update_ms']:.2f} "
              f"| {_ratio(pair[0]['temporaries_per_history'])}, {_ratio(pair[1]['temporaries_per_history'])} |",
              flush=True)
        if args.out:  # after each size: a time limit that cuts the next one keeps this one's
            write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
