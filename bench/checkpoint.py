"""python -m bench checkpoint: what `--checkpoint-every` costs a whole command, and what resuming costs.

The command users run (`python -m nst_jax.run`, the default neural-style preset: L-BFGS, whose
history is most of the state) at one size, as processes, in turn: without checkpoints; with a
checkpoint after every step (the worst case, which prices one checkpoint: the difference in the
steps' time, compilation excluded, over the number saved); and a resume of the kept checkpoint
for one more step (what reading it back costs). The share at an interval of T seconds is one
checkpoint's cost over T. With --lbfgs-memory 5 the history is full after 5 steps, as in a long
run; with 100 (the default) a few steps fill 6 of its slots and the zeros compress, so the
write of a full 100-pair history of random values is timed on its own too.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.e2e import DEFAULT_IMAGES, _prepare, run_process
from bench.flags import at_least
from bench.machine import describe_machine
from nst_jax.errors import bad_input_exits_2

INTERVAL_S = 300  # the issue's --checkpoint-every 5m


def _command(content, style, npz, size, steps, out, report, extra=()):
    return [sys.executable, "-m", "nst_jax.run", str(content), str(style), "--weights", str(npz), "-o", str(out),
            "--image-size", str(size), "--num-steps", str(steps), "--print-every", "0", "--report", str(report),
            *extra]


def _folder_bytes(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _summary(run):
    report = run.report
    return {"wall_s": round(run.wall_s, 2), "run_phase_s": round(report["phases"]["run"], 2),
            "compile_s": round(report["compile_seconds"], 2), "peak_rss_mb": round(run.peak_rss_mb)}


def _stepping(run):
    """The run phase less compilation: the steps (and checkpoints)."""
    return run.report["phases"]["run"] - run.report["compile_seconds"]


def measure_memory(memory, size, steps, npz, content, style, folder):
    """Plain, every step, and (kept) resumed runs at one L-BFGS memory."""
    out, report = folder / f"out_m{memory}.png", folder / "report.json"
    flags = ("--lbfgs-memory", str(memory))
    plain = run_process(_command(content, style, npz, size, steps, out, report, flags), None, report)
    every = run_process(_command(content, style, npz, size, steps, out, report,
                                 (*flags, "--checkpoint-every", "1", "--keep-checkpoint")), None, report)
    size_bytes = _folder_bytes(f"{out}.checkpoint")
    resumed = run_process(_command(content, style, npz, size, steps + 1, out, report,
                                   (*flags, "--checkpoint-every", "1h")), None, report)
    per_checkpoint = (_stepping(every) - _stepping(plain)) / steps
    return {"lbfgs_memory": memory, "plain": _summary(plain), "checkpoint_every_step": _summary(every),
            "resume_one_step": _summary(resumed), "checkpoint_bytes": size_bytes,
            "step_s": round(_stepping(plain) / steps, 2), "per_checkpoint_s": round(per_checkpoint, 3),
            "share_at_5_min": round(per_checkpoint / INTERVAL_S, 5)}


def full_state_write_seconds(size, memory, folder):
    """Saving (and waiting for) a full L-BFGS state of random values at `size` (4:3): the write a
    long run's checkpoint makes once its history is full, which a few-step run's zeros hide."""
    import time

    import jax
    import numpy as np

    from nst_jax.engine.checkpoint import Checkpoints, Every, Position
    height, width = size * 3 // 4, size
    rng = np.random.default_rng(0)
    pixels = jax.device_put(rng.random((height, width, 3), np.float32))
    history = jax.device_put(rng.random((2, memory, height, width, 3), np.float32))
    checkpoints = Checkpoints(folder / "full.checkpoint", {}, Every(steps=1))
    began = time.perf_counter()
    checkpoints.save(Position(0, 1, {}), pixels, (history,))
    returned = time.perf_counter() - began
    checkpoints.wait()
    return {"bytes": int(history.nbytes + pixels.nbytes), "save_returns_s": round(returned, 3),
            "written_s": round(time.perf_counter() - began, 2)}


def measure_long(size, steps, every, folder, images=DEFAULT_IMAGES, window=3):
    """One long run whose L-BFGS history (100 pairs) fills up, checkpointing every `every` steps,
    with a progress visit at every step: a checkpoint's cost is the time the steps around it
    took beyond the run's median step (the blocking copy, then the background write's
    contention for the CPU and the disk), over `window` steps from the save."""
    import statistics

    _, npz, pairs = _prepare(folder, [size], images)
    content, style, _ = pairs[size]
    out, report = folder / "long.png", folder / "report.json"
    run = run_process(_command(content, style, npz, size, steps, out, report,
                               ("--checkpoint-every", str(every), "--print-every", "1")), None, report)
    times = {visit["step"]: visit["seconds"] for visit in run.report["visits"]}
    durations = {step: times[step] - times[step - 1] for step in times if step - 1 in times}
    near = {save + offset for save in range(every, steps, every) for offset in range(window)}
    median = statistics.median(seconds for step, seconds in durations.items() if step not in near)
    costs = [round(sum(durations[save + offset] - median for offset in range(window)), 2)
             for save in range(every, steps, every)]
    return {"machine": describe_machine(), "size": size, "steps": steps, "every": every, "lbfgs_memory": 100,
            "run": _summary(run),
            "median_step_s": round(median, 3), "cost_per_checkpoint_s": costs,
            "share_at_5_min": [round(cost / INTERVAL_S, 4) for cost in costs]}


def measure(size, steps, folder, images=DEFAULT_IMAGES):
    _, npz, pairs = _prepare(folder, [size], images)
    content, style, _ = pairs[size]
    runs = [measure_memory(memory, size, steps, npz, content, style, folder) for memory in (5, 100)]
    return {"machine": describe_machine(), "size": size, "steps": steps,
            "preset": "neural-style (L-BFGS without line search)", "runs": runs,
            "full_history_100": full_state_write_seconds(size, 100, folder)}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="long side in px (default 1024)")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (default 6)")
    parser.add_argument("--long", type=int, metavar="EVERY",
                        help="instead: one run of 4 × EVERY + 10 steps (history full after 100), checkpointing "
                             "every EVERY steps, each checkpoint priced by the steps around it")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for checkpoint.json")
    return parser


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    at_least("--size", args.size, 64)
    at_least("--steps", args.steps, 2)
    folder = Path(tempfile.mkdtemp(prefix="nst-bench-checkpoint-"))
    try:
        result = (measure_long(args.size, 4 * args.long + 10, args.long, folder) if args.long
                  else measure(args.size, args.steps, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("checkpoint-long.json" if args.long else "checkpoint.json")).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
