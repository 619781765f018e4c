"""python -m bench: time the style-transfer step and write JSON, a PNG plot and Markdown tables.

`python -m bench e2e` times whole commands instead, against PyTorch (bench/e2e.py): the headline.
`python -m bench remat` measures what `--remat blocks` and `tiles` save and cost (bench/remat.py);
`python -m bench largest` finds the largest image one device runs (bench/largest.py);
`python -m bench lbfgs` times one L-BFGS update in each form (bench/lbfgs.py).

Parses flags into a bench.suite.Plan, runs it, writes the outputs. Progress goes to stderr.
"""

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from nst_jax.errors import bad_input_exits_2
from bench.flags import at_least, int_list, name_list
from nst_jax.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
DEFAULT_MARKDOWN = REPO_ROOT / "BENCHMARKS.md"

# `python -m bench NAME ...` runs bench/NAME.py: e2e (the whole command against the PyTorch
# way), remat (what --remat blocks / tiles save and cost), largest (the largest image one device
# runs), lbfgs (one L-BFGS update in each form), checkpoint (what --checkpoint-every costs),
# buckets (what shape buckets cost per step and save in compiles), regions (what spatial control
# costs per step, in memory and in a whole command), preview (what --preview costs a run, how soon
# its page shows a visit, and the README's screenshots).
SUBCOMMANDS = ("e2e", "remat", "largest", "lbfgs", "checkpoint", "buckets", "regions", "preview")
OPTIMIZERS = ("adam", "lbfgs")
DTYPES = ("float32", "bfloat16")
MIN_SIZE = 16  # VGG's four 2×2 pools must leave at least one pixel for conv5_1


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the jitted style-transfer step (Gatys preset, VGG-19 up to conv5_1, "
                    "random weights): compile time, per-step time (median/min/max), batched "
                    "throughput, GFLOP/s against the measured matrix-multiply peak, peak memory, and "
                    "the same step in plain PyTorch when torch is installed.",
        epilog="A full run on CPU measures 128, 256 and 512 px (plus 1024 on an accelerator) in about "
               "10 minutes and rewrites the generated section of BENCHMARKS.md; --quick takes under "
               "2 minutes and leaves BENCHMARKS.md alone unless --markdown names it.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (64, 128 px), 3 timed steps, batches of 1 and 2")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="folder for the JSON and PNG (default: bench/results/)")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="Markdown file whose generated section is rewritten (default: "
                             "BENCHMARKS.md for a full run, DIR/quick.md with --quick)")
    parser.add_argument("--no-markdown", action="store_true", help="write no Markdown")
    parser.add_argument("--sizes", metavar="PX,PX", help="image sizes (square), e.g. 128,256")
    parser.add_argument("--optimizers", metavar="NAMES", help="adam and/or lbfgs (default: both)")
    parser.add_argument("--dtypes", metavar="NAMES",
                        help="compute dtypes: float32 and/or bfloat16 (default: float32; both on an "
                             "accelerator)")
    parser.add_argument("--steps", type=int, metavar="N", help="timed chunks per configuration")
    parser.add_argument("--chunk-steps", type=int, metavar="K",
                        help="steps per timed chunk call; per-step time = chunk time / K (default 1)")
    parser.add_argument("--warmup", type=int, metavar="N", help="untimed chunk calls after compiling")
    parser.add_argument("--long-chunk-steps", type=int, metavar="K",
                        help="steps of one more, longer chunk call (the CLI's cadence; 0 skips it)")
    parser.add_argument("--batch-sizes", metavar="N,N",
                        help="batch sizes for the batched-throughput table, or 'none'")
    parser.add_argument("--batch-image-size", type=int, metavar="PX", help="image size of the batches")
    parser.add_argument("--long-run", metavar="PX:STEPS",
                        help="a whole L-BFGS run per dtype, e.g. 512:500, or 'none'")
    parser.add_argument("--matmul-sizes", metavar="N,N", help="matrix sizes for the peak (e.g. 2048,4096)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="also time PyTorch with channels_last tensors")
    parser.add_argument("--seed", type=int, help="seed of the weights, images and start noise")
    return parser


def plan_from_args(args, on_accelerator):
    """The quick or full Plan with every flag the user gave applied."""
    from bench.suite import full_plan, quick_plan

    plan = quick_plan() if args.quick else full_plan(on_accelerator)
    changes = {}
    if args.sizes:
        changes["sizes"] = int_list("--sizes", args.sizes, MIN_SIZE)
    if args.optimizers:
        changes["optimizers"] = name_list("--optimizers", args.optimizers, OPTIMIZERS)
    if args.dtypes:
        changes["dtypes"] = name_list("--dtypes", args.dtypes, DTYPES)
    if args.steps is not None:
        changes["timed_chunks"] = at_least("--steps", args.steps)
    if args.chunk_steps is not None:
        changes["chunk_steps"] = at_least("--chunk-steps", args.chunk_steps)
    if args.warmup is not None:
        changes["warmup_chunks"] = at_least("--warmup", args.warmup)
    if args.long_chunk_steps is not None:
        changes["long_chunk_steps"] = at_least("--long-chunk-steps", args.long_chunk_steps, 0)
    if args.batch_sizes:
        changes["batch_sizes"] = (() if args.batch_sizes == "none"
                                  else int_list("--batch-sizes", args.batch_sizes))
    if args.batch_image_size is not None:
        changes["batch_image_size"] = at_least("--batch-image-size", args.batch_image_size, MIN_SIZE)
    if args.long_run:
        changes.update(_long_run(args.long_run))
    if args.matmul_sizes:
        changes["matmul_sizes"] = int_list("--matmul-sizes", args.matmul_sizes)
    if args.no_torch:
        changes["torch"] = False
    if args.torch_channels_last:
        changes["torch_channels_last"] = True
    if args.seed is not None:
        changes["seed"] = args.seed
    return dataclasses.replace(plan, **changes)


def _long_run(text):
    if text == "none":
        return {"long_run_size": None, "long_run_steps": 0}
    size, _, steps = text.partition(":")
    if not (size.isdigit() and steps.isdigit()):
        raise UserInputError(f"--long-run: expected PX:STEPS such as 512:500, or none; got {text!r}")
    return {"long_run_size": at_least("--long-run", int(size), MIN_SIZE),
            "long_run_steps": at_least("--long-run", int(steps))}


def _output_paths(args):
    """(json, png, markdown or None); the folder is made now so a bad --out fails before the run."""
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"--out {args.out}: cannot create the folder ({error.strerror or error})") from None
    stem = "quick" if args.quick else "full"
    markdown = None
    if not args.no_markdown:
        markdown = args.markdown or (args.out / "quick.md" if args.quick else DEFAULT_MARKDOWN)
        if not markdown.parent.is_dir():
            raise UserInputError(f"--markdown {markdown}: folder {markdown.parent} does not exist")
    return args.out / f"{stem}.json", args.out / f"{stem}.png", markdown


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:  # bench/<name>.py, with its own flags
        return importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
    return _run_suite(argv)


@bad_input_exits_2
def _run_suite(argv):
    args = build_parser().parse_args(argv)
    from bench.machine import accelerator

    plan = plan_from_args(args, accelerator() is not None)
    json_path, png_path, markdown_path = _output_paths(args)
    from bench import plot, report, suite

    results = suite.run(plan)
    report.write_json(results, json_path)
    plot.draw(results, png_path)
    written = [json_path, png_path]
    if markdown_path is not None:
        report.update_markdown(markdown_path, report.markdown(results))
        written.append(markdown_path)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
