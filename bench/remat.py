"""python -m bench remat: what `--remat blocks` and `--remat tiles` cost and save, per size (issue 12's figures).

For each size: XLA's memory analysis of the compiled chunk the CLI runs (temporaries and
arguments, per device), and the step time of that chunk with remat none, blocks and tiles,
interleaved (none, blocks, tiles, none, ...) so that a slower moment of the machine hits all. Adam, the
neural-style preset's layers (relu1_1 … relu5_1, content relu4_2), synthetic weights and images.
Prints a Markdown table; nothing is written.
"""

import argparse
import sys
from typing import Dict, List, Optional, Sequence

from nst_jax.errors import bad_input_exits_2
from bench.flags import at_least, int_list
from bench.jax_step import build_problem, time_step
from bench.timing import summarize
from weights_tools.synthetic import synthetic_params

REMATS = ("none", "blocks", "tiles")


def measure(size: int, rounds: int, chunk_steps: int, timed_chunks: int) -> Dict[str, Dict[str, float]]:
    """{remat: {"temp_mib", "args_mib", "gib_per_mp", "step_ms"}} at size × size px."""
    params = synthetic_params(0)
    problems = {remat: build_problem(size, "adam", preset_name="neural-style", params=params, remat=remat)
                for remat in REMATS}
    steps: Dict[str, List[float]] = {remat: [] for remat in REMATS}
    analyses = {}  # XLA's memory analysis of each chunk, from the compile time_step does
    for _ in range(rounds):
        for remat, problem in problems.items():
            timed = time_step(problem, chunk_steps=chunk_steps, warmup_chunks=1, timed_chunks=timed_chunks)
            steps[remat].append(timed["step_s"]["median"])
            analyses[remat] = timed["memory"]["xla"]
    figures = {}
    for remat in REMATS:
        temp, args = analyses[remat]["temp_size_in_bytes"], analyses[remat]["argument_size_in_bytes"]
        figures[remat] = {"temp_mib": temp / 2**20, "args_mib": args / 2**20,
                          "gib_per_mp": temp / 2**30 / (size * size / 1e6),
                          "step_ms": summarize(steps[remat])["median"] * 1000}
    return figures


def table(results: Dict[int, Dict[str, Dict[str, float]]]) -> str:
    lines = ["| size | remat | temporaries MiB (GiB per MP) | arguments MiB | step ms | temporaries ÷ none | step ÷ none |",
             "|---|---|---|---|---|---|---|"]
    for size, figures in results.items():
        none = figures["none"]
        for remat, row in figures.items():
            lines.append(f"| {size} | {remat} | {row['temp_mib']:.1f} ({row['gib_per_mp']:.2f}) | {row['args_mib']:.1f} "
                         f"| {row['step_ms']:.0f} | {row['temp_mib'] / none['temp_mib']:.2f} "
                         f"| {row['step_ms'] / none['step_ms']:.2f} |")
    return "\n".join(lines)


@bad_input_exits_2
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench remat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512", help="square sizes in px (default: 256,512)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--chunk-steps", type=int, default=4, help="steps per timed chunk (default 4)")
    parser.add_argument("--chunks", type=int, default=3, help="timed chunks per round (default 3)")
    args = parser.parse_args(argv)
    sizes = int_list("--sizes", args.sizes, 16)
    for flag, value in (("--rounds", args.rounds), ("--chunk-steps", args.chunk_steps), ("--chunks", args.chunks)):
        at_least(flag, value)
    results = {}
    for size in sizes:
        print(f"[bench remat] {size} px", file=sys.stderr, flush=True)
        results[size] = measure(size, args.rounds, args.chunk_steps, args.chunks)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
