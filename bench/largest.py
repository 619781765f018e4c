"""python -m bench largest: the largest square image one device runs, and its step time.

Issue 12's accelerator figure. For each size in turn (smallest first): the neural-style layers,
Adam, `--remat tiles` (or the remat asked), synthetic weights and images; targets, compile, a
warm-up chunk, then one timed chunk of `--steps` steps of the chunk the CLI runs. Records the
step time, the allocator's peak (GPU) and XLA's analysis; stops at the first size that fails
(out of memory; any other error is raised). Prints a Markdown table, a row per size as it is
done, and writes JSON to --out after each size.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax

from bench import machine
from nst_jax.errors import bad_input_exits_2
from bench.flags import at_least, int_list
from bench.jax_step import build_problem, time_step
from bench.report import write_json
from nst_jax.errors import memory_refusal


def probe(size: int, steps: int, remat: str, compute_dtype: str) -> Dict[str, Any]:
    """One size's figures; {"size", "error"} when it runs out of memory (other errors propagate:
    a bug must not read as a memory limit)."""
    started = time.perf_counter()
    try:
        problem = build_problem(size, "adam", preset_name="neural-style", remat=remat,
                                compute_dtype=compute_dtype)
        timed = time_step(problem, chunk_steps=steps, warmup_chunks=1, timed_chunks=1)
    except Exception as error:
        if memory_refusal(error) is None:
            raise
        return {"size": size, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}",
                "seconds": time.perf_counter() - started}
    return {"size": size, "megapixels": size * size / 1e6, "step_s": timed["step_s"]["median"],
            "compile_s": timed["compile"]["compile_s"], "device_memory": timed["memory"]["device"],
            "xla": timed["memory"]["xla"], "loss": timed["loss"], "seconds": time.perf_counter() - started}


HEADER = "| size | MP | step | compile | device peak | XLA arguments + temporaries |\n|---|---|---|---|---|---|"


def table_row(row: Dict[str, Any]) -> str:
    """One size's Markdown row (printed as soon as the size is done: a time limit may cut the next)."""
    if "error" in row:
        return f"| {row['size']} | | does not run: {row['error'][:120]} | | | |"
    gib = lambda size: f"{size / 2**30:.1f} GiB"  # noqa: E731
    peak = (row["device_memory"] or {}).get("peak_bytes_in_use")
    xla = row["xla"] or {}
    return (f"| {row['size']} | {row['megapixels']:.1f} | {row['step_s']:.3f} s | {row['compile_s']:.1f} s "
            f"| {gib(peak) if peak else '-'} "
            f"| {gib(xla.get('argument_size_in_bytes', 0) + xla.get('temp_size_in_bytes', 0))} |")


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench largest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4096,8192,12288,16384", help="square sizes in px, tried in order")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size (default 3)")
    parser.add_argument("--remat", default="tiles", choices=("none", "blocks", "tiles"))
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=None, help="folder for largest.json (default: print only)")
    args = parser.parse_args(argv)
    sizes = sorted(int_list("--sizes", args.sizes, 16))
    at_least("--steps", args.steps)
    rows: List[Dict[str, Any]] = []
    report = {"machine": machine.describe_machine(), "backend": jax.default_backend(), "remat": args.remat,
              "compute_dtype": args.compute_dtype, "rows": rows}
    print(HEADER, flush=True)
    for size in sizes:
        print(f"[bench largest] {size} px, remat {args.remat}, {args.compute_dtype}", file=sys.stderr, flush=True)
        rows.append(probe(size, args.steps, args.remat, args.compute_dtype))
        print(table_row(rows[-1]), flush=True)
        if args.out:  # after each size: a time limit that cuts the next one keeps this one's
            write_json(report, os.path.join(args.out, "largest.json"))
        if "error" in rows[-1]:
            break
        jax.clear_caches()  # the next size's buffers and programs, not this one's
    return 0


if __name__ == "__main__":
    sys.exit(main())
