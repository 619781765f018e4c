"""python -m bench buckets: what shape buckets cost per step, and what they save in compiles.

Whole commands (`python -m nst_jax.run`, the default preset from the content image), as processes
with --report, at one size: for a photo that fills its bucket, one at the worst position in its
bucket (the most padding the rule allows near that size) and one in between, a run with
--shape-buckets off and one with on. From the reports: seconds per step (progress visits,
compiling excluded), compile seconds and programs. Then the "new photo" each way: a photo of
another aspect ratio after one run, in one compile cache: off compiles its programs afresh, on
loads them. These figures set the CPU's rule (engine/buckets.py: MASK_SHARE,
STEP_SECONDS_PER_MEGAPIXEL, COMPILE_SECONDS).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.e2e import DEFAULT_IMAGES, PICTURES, _prepare, run_process
from bench.flags import at_least
from bench.machine import describe_machine
from nst_jax.engine.buckets import bucket_side, padding_share
from nst_jax.errors import bad_input_exits_2


def _photo(source, folder, size, short):
    """tubingen (4:3) cropped so that at `size` px its short side is `short`, as a PNG."""
    image = Image.open(Path(source) / PICTURES[0]).convert("RGB").resize((size, size * 3 // 4), Image.LANCZOS)
    path = Path(folder) / f"photo_{size}x{short}.png"
    image.crop((0, 0, size, short)).save(path)
    return path


def _positions(size):
    """Short sides at `size`: one filling its bucket (4:3), the worst one below it, one between."""
    filled = size * 3 // 4
    below = [short for short in range(size // 2, filled) if bucket_side(short, size) == filled]
    worst = min(below)
    return {"filled": filled, "worst": worst, "between": (worst + filled) // 2}


def _summary(run):
    report = run.report
    programs = report.get("compiled_programs", [])
    return {"wall_s": round(run.wall_s, 2), "seconds_per_step": run.seconds_per_step(),
            "compile_s": round(report.get("compile_seconds", 0.0), 2), "programs": len(programs),
            "compiled_afresh": len(programs) - report.get("compile_cache_hits", 0)}


def measure(size, steps, source=DEFAULT_IMAGES):
    with tempfile.TemporaryDirectory(prefix="bench-buckets-") as scratch:
        folder = Path(scratch)
        _, npz, pairs = _prepare(folder, [size], source)
        style = pairs[size][1]

        def run(photo, buckets, cache, label):
            report = folder / f"{label}.json"
            command = [sys.executable, "-m", "nst_jax.run", str(photo), str(style), "--weights", str(npz),
                       "-o", str(folder / f"{label}.png"), "--image-size", str(size), "--num-steps", str(steps),
                       "--init", "content", "--shape-buckets", buckets, "--print-every", "0", "--report", str(report)]
            env = {"NST_JAX_CACHE": str(folder / cache), "JAX_PLATFORMS": "cpu" if cpu_only else ""}
            result = _summary(run_process(command, {**base_env, **{k: v for k, v in env.items() if v}}, report))
            print(f"[bench buckets] {label}: {result}", file=sys.stderr, flush=True)
            return result

        base_env, cpu_only = dict(os.environ), os.environ.get("JAX_PLATFORMS") == "cpu"
        results = {"size": size, "steps": steps, "positions": {}}
        for name, short in _positions(size).items():
            photo = _photo(source, folder, size, short)
            results["positions"][name] = {
                "shape": [short, size], "padding_share": round(padding_share(short, size), 4),
                "off": run(photo, "off", f"cache_{name}_off", f"{name}_off"),
                "on": run(photo, "on", f"cache_{name}_on", f"{name}_on")}
            off, on = results["positions"][name]["off"], results["positions"][name]["on"]
            results["positions"][name]["step_ratio"] = on["seconds_per_step"] / off["seconds_per_step"]
        # A new photo after one run, one cache each way: the filled photo first, then the worst one.
        filled, worst = (_photo(source, folder, size, _positions(size)[key]) for key in ("filled", "worst"))
        results["new_photo"] = {}
        for buckets in ("off", "on"):
            run(filled, buckets, f"cache_new_{buckets}", f"first_{buckets}")
            results["new_photo"][buckets] = run(worst, buckets, f"cache_new_{buckets}", f"new_photo_{buckets}")
        return results


def markdown(results, machine):
    lines = [f"`python -m bench buckets --size {results['size']} --steps {results['steps']}` on {machine}: "
             "seconds per step with --shape-buckets off and on (compiling excluded), by where the photo lies "
             "in its bucket:\n",
             "| photo (H×W) | padding | off s/step | on s/step | on ÷ off |", "|---|---|---|---|---|"]
    for name, entry in results["positions"].items():
        height, width = entry["shape"]
        lines.append(f"| {name} {height}×{width} | {entry['padding_share']:.1%} | "
                     f"{entry['off']['seconds_per_step']:.3f} | {entry['on']['seconds_per_step']:.3f} | "
                     f"{entry['step_ratio']:.3f} |")
    lines.append("\nA new photo (the worst position) after a run of the filled one, in one compile cache:\n")
    lines.append("| buckets | wall s | compile s | programs compiled afresh |")
    lines.append("|---|---|---|---|")
    for buckets, entry in results["new_photo"].items():
        lines.append(f"| {buckets} | {entry['wall_s']:.1f} | {entry['compile_s']:.2f} | "
                     f"{entry['compiled_afresh']} of {entry['programs']} |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench buckets", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="--image-size of the runs (default 256)")
    parser.add_argument("--steps", type=int, default=60, help="steps per run (default 60; at least 20)")
    parser.add_argument("--out", type=Path, help="write the JSON there too")
    return parser


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    results = measure(at_least("--size", args.size, 64), at_least("--steps", args.steps, 20))
    machine = describe_machine()
    results["machine"] = machine
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results, machine.get("cpu_model", "this machine")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
