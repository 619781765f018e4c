"""python -m bench regions: what spatial control (issue 25) costs per step, in memory, and in a
whole command.

Per step (a diagnosis): the engine's own chunk without regions and with two regions (the
photo's left and right halves, a painting each), timed in turns. Memory: XLA's analysis of both
compiled chunks and the run's analytic estimate (what --estimate-memory and the fit check say).
Whole commands (`python -m nst_jax.run`, processes with --report, one compile cache each):
without regions, then with --mask (the inside styled, the outside kept) at the same size.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.e2e import DEFAULT_IMAGES, _prepare, run_process
from bench.flags import at_least
from bench.machine import describe_machine
from bench.timing import chunk_steps_in_turns
from nst_jax.errors import bad_input_exits_2

REGION_COUNTS = (0, 2)


def _halves(height, width):
    guides = np.zeros((2, height, width), np.float32)
    guides[0, :, : width // 2], guides[1, :, width // 2:] = 1, 1
    return guides


def _settings(size):
    from nst_jax.config.presets import preset

    return preset("neural-style").replace(image_size=size, init="content", shape_buckets="off")


def chunk_inputs(size, regions, seed=0):
    """The engine's chunk inputs at `size` px (4:3, neural-style's loss, L-BFGS from the content)
    with `regions` regions (0: none), as stylize builds them."""
    import jax

    from nst_jax.engine.chunk_inputs import MemberInputs, build_chunk_inputs
    from nst_jax.engine.optimize import OptimizerSpec
    from nst_jax.engine.regions import Regions, mix_grams, scale_guides
    from nst_jax.engine.stages import initial_pixels, run_targets
    from nst_jax.engine.stylize import prepare_params
    from nst_jax.loss.objective import Objective, loss_weights
    from weights_tools.synthetic import synthetic_params

    settings = _settings(size)
    objective = Objective.from_settings(settings, "caffe")
    params = prepare_params(synthetic_params(seed), objective)
    rng = np.random.default_rng(seed)
    shape = (size * 3 // 4, size)
    content = rng.uniform(0, 255, shape + (3,)).astype(np.float32)
    styles = [rng.uniform(0, 255, shape + (3,)).astype(np.float32) for _ in range(2)]
    guides = None if not regions else scale_guides(
        Regions(_halves(*shape)).checked(2), objective.style_layers, objective.content_layers, "simple", 0, shape,
        [shape, shape])
    targets, grams, blended = run_targets(objective, params, jax.device_put(content), jax.device_put(styles),
                                          jax.device_put(np.full(2, 0.5, np.float32)),
                                          style_guides=None if guides is None else jax.device_put(guides.styles))
    style, member_guides = blended, None
    if guides is not None:
        mix = guides.member_mix(None, [0.5, 0.5])
        style, member_guides = mix_grams(grams, jax.device_put(mix)), guides.region_guides(mix)
    return build_chunk_inputs(
        objective, OptimizerSpec.from_settings(settings), params, targets,
        [MemberInputs(initial_pixels(settings, "caffe", content), style, loss_weights(5.0, 100.0, 1e-3),
                      guides=member_guides)], batched=False)


def step_times(size, rounds):
    """{regions: median seconds per step}, each case in turn."""
    return chunk_steps_in_turns({regions: chunk_inputs(size, regions) for regions in REGION_COUNTS}, rounds)


def memory(size):
    """{regions: {"xla": bytes of XLA's analysis of the compiled chunk, "estimate": the run's
    analytic bytes}}."""
    from nst_jax.engine.memory import estimate_memory, estimate_run
    from nst_jax.engine.stages import InputShapes

    found, settings = {}, _settings(size)
    for regions in REGION_COUNTS:
        shape = (size * 3 // 4, size)
        found[regions] = {"xla": estimate_memory(settings, *shape, regions=regions).total,
                          "estimate": estimate_run(settings, InputShapes(shape, (shape, shape), regions)).total}
    return found


def measure(size, steps, rounds, source=DEFAULT_IMAGES):
    results = {"size": size, "steps": steps, "rounds": rounds}
    results["seconds_per_step"] = step_times(size, rounds)
    print(f"[bench regions] seconds per step: {results['seconds_per_step']}", file=sys.stderr, flush=True)
    results["memory"] = memory(size)
    print(f"[bench regions] memory: {results['memory']}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-regions-") as scratch:
        folder = Path(scratch)
        _, npz, pairs = _prepare(folder, [size], source)
        photo, style = pairs[size][:2]
        with Image.open(photo) as opened:
            width, height = opened.size
        mask = np.zeros((height, width), np.uint8)
        mask[:, : width // 2] = 255
        Image.fromarray(mask).save(folder / "left_half.png")
        results["commands"] = {}
        for label, flags in (("plain", []), ("mask", ["--mask", str(folder / "left_half.png")])):
            report = folder / f"{label}.json"
            command = [sys.executable, "-m", "nst_jax.run", str(photo), str(style), "--weights", str(npz),
                       "-o", str(folder / f"{label}.png"), "--image-size", str(size), "--num-steps", str(steps),
                       "--print-every", "5", "--report", str(report), *flags]
            run = run_process(command, {**os.environ, "NST_JAX_CACHE": str(folder / f"cache_{label}")}, report)
            results["commands"][label] = {"wall_s": round(run.wall_s, 2), "seconds_per_step": run.seconds_per_step(),
                                          "peak_rss_mib": round(run.peak_rss_mb),
                                          "compile_s": round(run.report.get("compile_seconds", 0.0), 2),
                                          "programs": len(run.report.get("compiled_programs", []))}
            print(f"[bench regions] {label}: {results['commands'][label]}", file=sys.stderr, flush=True)
    return results


def markdown(results, machine):
    per_step, memory_ = results["seconds_per_step"], results["memory"]
    mib = 2 ** 20
    lines = [f"`python -m bench regions --size {results['size']}` on {machine}: neural-style's loss, L-BFGS, "
             f"{results['size'] * 3 // 4}×{results['size']} px, two paintings. Seconds per step of the engine's "
             f"chunk (medians of {results['rounds']} turns of 5 steps, each case in turn), XLA's memory "
             "analysis of the compiled chunk, and the run's analytic estimate:\n",
             "| regions | s/step | ÷ none | XLA MiB | ÷ none | estimate MiB |", "|---|---|---|---|---|---|"]
    for regions in REGION_COUNTS:
        lines.append(f"| {regions or 'none'} | {per_step[regions]:.3f} | {per_step[regions] / per_step[0]:.3f} | "
                     f"{memory_[regions]['xla'] / mib:.0f} | {memory_[regions]['xla'] / memory_[0]['xla']:.3f} | "
                     f"{memory_[regions]['estimate'] / mib:.0f} |")
    lines.append(f"\nWhole commands ({results['steps']} steps, one cold compile cache each):\n")
    lines.append("| command | wall s | s/step | compile s | programs | peak RSS MiB |")
    lines.append("|---|---|---|---|---|---|")
    for label, entry in results["commands"].items():
        lines.append(f"| {label} | {entry['wall_s']:.1f} | {entry['seconds_per_step']:.3f} | {entry['compile_s']:.1f} | "
                     f"{entry['programs']} | {entry['peak_rss_mib']} |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench regions", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="--image-size (default 512)")
    parser.add_argument("--steps", type=int, default=30, help="steps per whole command (default 30; at least 10)")
    parser.add_argument("--rounds", type=int, default=6, help="timed turns per case (default 6; at least 3)")
    parser.add_argument("--out", type=Path, help="write the JSON there too")
    return parser


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    results = measure(at_least("--size", args.size, 64), at_least("--steps", args.steps, 10),
                      at_least("--rounds", args.rounds, 3))
    machine = describe_machine()
    results["machine"] = machine
    if args.out is not None:
        args.out.write_text(json.dumps({**results, "seconds_per_step": {str(k): v for k, v in
                                                                        results["seconds_per_step"].items()},
                                        "memory": {str(k): v for k, v in results["memory"].items()}}, indent=1))
    print(markdown(results, machine.get("cpu_model", "this machine")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
