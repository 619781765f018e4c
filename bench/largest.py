"""python -m bench largest: the largest square image one device runs, and its step time.

Issue 12's accelerator figure. For each size in turn (smallest first): the neural-style layers,
Adam, `--remat tiles` (or the remat asked), synthetic weights and images; targets, compile, a
warm-up chunk, then one timed chunk of `--steps` steps of the chunk the CLI runs. Records the
step time, the allocator's peak (GPU) and XLA's analysis; stops at the first size that fails
(out of memory). Prints a Markdown table and writes JSON to --out.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax

from bench import machine
from bench.flags import int_list
from bench.jax_step import build_problem, time_step
from nst_jax.errors import UserInputError


def probe(size: int, steps: int, remat: str, compute_dtype: str) -> Dict[str, Any]:
    """One size's figures; {"size", "error"} when it does not run."""
    started = time.perf_counter()
    try:
        problem = build_problem(size, "adam", preset_name="neural-style", remat=remat,
                                compute_dtype=compute_dtype)
        timed = time_step(problem, chunk_steps=steps, warmup_chunks=1, timed_chunks=1)
    except Exception as error:  # out of memory is an XlaRuntimeError (RESOURCE_EXHAUSTED) or a MemoryError
        return {"size": size, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}",
                "seconds": time.perf_counter() - started}
    return {"size": size, "megapixels": size * size / 1e6, "step_s": timed["step_s"]["median"],
            "compile_s": timed["compile"]["compile_s"], "device_memory": machine.device_memory(),
            "xla": timed["memory"]["xla"], "loss": timed["loss"], "seconds": time.perf_counter() - started}


def table(rows: List[Dict[str, Any]]) -> str:
    gib = lambda size: f"{size / 2**30:.1f} GiB"  # noqa: E731
    lines = ["| size | MP | step | compile | device peak | XLA arguments + temporaries |", "|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['size']} | | does not run: {row['error'][:120]} | | | |")
            continue
        peak = (row["device_memory"] or {}).get("peak_bytes_in_use")
        xla = row["xla"] or {}
        lines.append(f"| {row['size']} | {row['megapixels']:.1f} | {row['step_s']:.3f} s | {row['compile_s']:.1f} s "
                     f"| {gib(peak) if peak else '-'} "
                     f"| {gib(xla.get('argument_size_in_bytes', 0) + xla.get('temp_size_in_bytes', 0))} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench largest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4096,8192,12288,16384", help="square sizes in px, tried in order")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size (default 3)")
    parser.add_argument("--remat", default="tiles", choices=("none", "blocks", "tiles"))
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=None, help="folder for largest.json (default: print only)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted(int_list("--sizes", args.sizes, 16))
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows: List[Dict[str, Any]] = []
    for size in sizes:
        print(f"[bench largest] {size} px, remat {args.remat}, {args.compute_dtype}", file=sys.stderr, flush=True)
        rows.append(probe(size, args.steps, args.remat, args.compute_dtype))
        if args.out:  # after each size: a time limit that cuts the next one keeps this one's
            write_json(args.out, {"machine": machine.describe_machine(), "backend": jax.default_backend(),
                                  "remat": args.remat, "compute_dtype": args.compute_dtype, "rows": rows})
        if "error" in rows[-1]:
            break
        jax.clear_caches()  # the next size's buffers and programs, not this one's
    print(table(rows))
    return 0


def write_json(folder: str, report: Dict[str, Any]) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "largest.json"), "w") as file:
        json.dump(report, file, indent=1)


if __name__ == "__main__":
    sys.exit(main())
