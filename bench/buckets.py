"""python -m bench buckets: what shape buckets cost per step, and what they save in compiles.

Per step (a diagnosis): the engine's own chunk, in turns, for a photo that fills its bucket, one
at the worst position in its bucket (the most padding the rule allows near that size) and one in
between, each with --shape-buckets off and on. Then whole commands (`python -m nst_jax.run`, as
processes with --report): the "new photo" each way, a photo of another aspect ratio after one
run in one compile cache: off compiles its programs afresh, on loads them. These figures set the CPU's rule (engine/buckets.py: MASK_SHARE,
STEP_SECONDS_PER_MEGAPIXEL, COMPILE_SECONDS).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.e2e import DEFAULT_IMAGES, PICTURES, _prepare, run_process
from bench.flags import at_least
from bench.machine import publish
from bench.timing import chunk_steps_in_turns
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


def step_times(size, rounds, chunk=5, seed=0):
    """Seconds per step of the engine's own chunk (neural-style's loss, L-BFGS, from the content)
    for each position × buckets off and on, timed in turns (one chunk each per round, so that
    the machine's drift touches all alike): {position: {"off": median, "on": median}}."""
    import jax
    import numpy as np

    from nst_jax.config.presets import preset
    from nst_jax.engine.buckets import bucket_shape, pad_images
    from nst_jax.engine.chunk_inputs import MemberInputs, build_chunk_inputs
    from nst_jax.engine.optimize import OptimizerSpec
    from nst_jax.engine.stages import initial_pixels, run_targets
    from nst_jax.engine.stylize import prepare_params
    from nst_jax.loss.objective import Objective, loss_weights
    from weights_tools.synthetic import synthetic_params

    settings = preset("neural-style").replace(image_size=size, init="content", tv_weight=0.0, lbfgs_memory=100)
    objective = Objective.from_settings(settings, "caffe")
    params = prepare_params(synthetic_params(seed), objective)
    rng = np.random.default_rng(seed)
    style = rng.uniform(0, 255, (size * 3 // 4, size, 3)).astype(np.float32)
    cases = {}
    for name, short in _positions(size).items():
        content = rng.uniform(0, 255, (short, size, 3)).astype(np.float32)
        for buckets in ("off", "on"):
            pixels, styles, extents = ((content, [style], None) if buckets == "off" else pad_images(content, [style]))
            targets, _, blended = run_targets(objective, params, jax.device_put(pixels), jax.device_put(styles),
                                              jax.device_put(np.ones(1, np.float32)), extents=extents)
            start = initial_pixels(settings, "caffe", content, bucket=None if extents is None else bucket_shape(short, size))
            cases[name, buckets] = build_chunk_inputs(
                objective, OptimizerSpec.from_settings(settings), params, targets,
                [MemberInputs(start, blended, loss_weights(5.0, 100.0, 0.0))], batched=False,
                extent=None if extents is None else extents[0])
    medians = {}
    for (name, buckets), seconds in chunk_steps_in_turns(cases, rounds, chunk).items():
        medians.setdefault(name, {})[buckets] = seconds
    return medians


def measure(size, steps, rounds, source=DEFAULT_IMAGES):
    results = {"size": size, "steps": steps, "rounds": rounds, "positions": {}}
    for name, per_step in step_times(size, rounds).items():
        short = _positions(size)[name]
        results["positions"][name] = {"shape": [short, size], "padding_share": round(padding_share(short, size), 4),
                                      **per_step, "step_ratio": per_step["on"] / per_step["off"]}
        print(f"[bench buckets] {name}: {results['positions'][name]}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-buckets-") as scratch:
        folder = Path(scratch)
        _, npz, pairs = _prepare(folder, [size], source)
        style = pairs[size][1]
        base_env = {key: value for key, value in os.environ.items()}

        def run(photo, buckets, cache, label):
            report = folder / f"{label}.json"
            command = [sys.executable, "-m", "nst_jax.run", str(photo), str(style), "--weights", str(npz),
                       "-o", str(folder / f"{label}.png"), "--image-size", str(size), "--num-steps", str(steps),
                       "--init", "content", "--shape-buckets", buckets, "--print-every", "0", "--report", str(report)]
            result = _summary(run_process(command, {**base_env, "NST_JAX_CACHE": str(folder / cache)}, report))
            print(f"[bench buckets] {label}: {result}", file=sys.stderr, flush=True)
            return result

        # A new photo after one run, one cache each way: the filled photo first, then the worst one.
        filled, worst = (_photo(source, folder, size, _positions(size)[key]) for key in ("filled", "worst"))
        results["new_photo"] = {}
        for buckets in ("off", "on"):
            first = run(filled, buckets, f"cache_new_{buckets}", f"first_{buckets}")
            results["new_photo"][buckets] = {**run(worst, buckets, f"cache_new_{buckets}", f"new_photo_{buckets}"),
                                             "first_wall_s": first["wall_s"]}
    return results


def markdown(results, machine):
    lines = [f"`python -m bench buckets --size {results['size']}` on {machine}. Seconds per step of the engine's "
             f"chunk with --shape-buckets off and on (L-BFGS, neural-style's loss; medians of {results['rounds']} "
             "turns of 5 steps, each case in turn), by where the photo lies in its bucket:\n",
             "| photo (H×W) | padding | off s/step | on s/step | on ÷ off |", "|---|---|---|---|---|"]
    for name, entry in results["positions"].items():
        height, width = entry["shape"]
        lines.append(f"| {name} {height}×{width} | {entry['padding_share']:.1%} | {entry['off']:.3f} | "
                     f"{entry['on']:.3f} | {entry['step_ratio']:.3f} |")
    lines.append(f"\nWhole commands ({results['steps']} steps): a new photo (the worst position) after a run of the "
                 "filled one, in one compile cache:\n")
    lines.append("| buckets | first photo s | new photo s | new ÷ first | compile s | programs compiled afresh |")
    lines.append("|---|---|---|---|---|---|")
    for buckets, entry in results["new_photo"].items():
        lines.append(f"| {buckets} | {entry['first_wall_s']:.1f} | {entry['wall_s']:.1f} | "
                     f"{entry['wall_s'] / entry['first_wall_s']:.2f} | {entry['compile_s']:.2f} | "
                     f"{entry['compiled_afresh']} of {entry['programs']} |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench buckets", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="--image-size of the runs (default 256)")
    parser.add_argument("--steps", type=int, default=60, help="steps per whole command (default 60; at least 20)")
    parser.add_argument("--rounds", type=int, default=10, help="timed turns per case (default 10; at least 3)")
    parser.add_argument("--out", type=Path, help="write the JSON there too")
    return parser


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    results = measure(at_least("--size", args.size, 64), at_least("--steps", args.steps, 20),
                      at_least("--rounds", args.rounds, 3))
    publish(results, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
