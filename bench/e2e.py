"""python -m bench e2e: the whole command, launch to file written, against the PyTorch way.

What a user waits for: `python -m nst_jax.run` as a process, timed from launch to exit, beside
`python -m bench.torch_reference` (torch.optim.LBFGS with history 100, lr 1, no line search,
tolerance_change -1: neural-style-pt's recipe; and Adam), same pre-resized images, same VGG-19
weights (a synthetic Caffe-layout .pth for PyTorch, the same file converted for nst-jax), same
loss (neural-style's: content 5, style 100, TV 0, start from the content image).

Per size and optimizer, interleaved so that both see the same machine: nst-jax cold (an empty
compile cache), PyTorch, nst-jax warm (the cache the cold run filled), PyTorch again. From each
run's --report JSON: the objective reached, the time to reach the objective both reach (from
launch, interpolated between progress visits), and the start-up breakdown (process start and
imports, images, weights, compiling, steps, writing) and the process's peak RSS (VmHWM).
Also: a batch of 4 L-BFGS members against four single CLI runs, and a second `stylize()` call
in one process against the first.
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from nst_jax.errors import bad_input_exits_2
from bench.flags import at_least, int_list, name_list
from nst_jax.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repo's own copies (512 px long side; larger benchmark sizes upsample them, which changes
# nothing in the time): --images names another folder holding the same two files.
DEFAULT_IMAGES = REPO_ROOT / "tests" / "data"
PICTURES = ("tubingen.jpg", "starry_night.jpg")  # content, style
# The "new photo" after the warm run: another aspect ratio at the same size (960×662 against
# tubingen's 4:3; in the same shape bucket at 128, 256 and 512 px).
NEW_PHOTO = "shipwreck.jpg"
BEGIN_MARKER, END_MARKER = "<!-- e2e:begin -->", "<!-- e2e:end -->"
# The loss the issue times: neural-style's preset with TV off, starting from the content.
COMMON_FLAGS = ("--preset", "neural-style", "--tv-weight", "0", "--init", "content")
PROGRESS_STEPS = 10  # nst_jax.cli.files.PROGRESS_INTERVAL: the CLI visits the host every 10 steps


@dataclasses.dataclass(frozen=True)
class Plan:
    sizes: Tuple[int, ...] = (128, 256, 512)
    iterations: Tuple[int, ...] = (100, 100, 50)  # per size
    optimizers: Tuple[str, ...] = ("lbfgs",)
    adam_sizes: Tuple[int, ...] = (256,)  # Adam's comparison, at these sizes only
    batch_members: int = 4
    batch_size_px: int = 128
    batch_iterations: int = 50
    second_call_size: int = 96
    second_call_steps: int = 10  # 0: no second-call check
    torch_threads: Optional[int] = None
    # One more warm nst-jax run per size in each of these compute dtypes (bfloat16 on an
    # accelerator): its wall time and objective against the float32 run's.
    extra_dtypes: Tuple[str, ...] = ()

    def __post_init__(self):
        # The batch comparison reads per-step times off the progress visits: it needs two.
        if self.batch_members and self.batch_iterations < 2 * PROGRESS_STEPS:
            raise ValueError(f"batch_iterations must be at least {2 * PROGRESS_STEPS}, got {self.batch_iterations}")


def quick_plan():
    return Plan(sizes=(64,), iterations=(10,), adam_sizes=(64,), batch_members=2, batch_size_px=64,
                batch_iterations=2 * PROGRESS_STEPS, second_call_size=48, second_call_steps=4)


def _log(message):
    print(f"[bench e2e] {message}", file=sys.stderr, flush=True)


def _prepare(folder, sizes, source, seed=0):
    """Weights in both forms and the images pre-resized to each size: {size: (content, style)}."""
    from nst_jax.weights.convert import convert
    from weights_tools.synthetic import write_synthetic

    pth, npz = folder / "vgg19_caffe_synthetic.pth", folder / "vgg19_caffe_synthetic.npz"
    if not (pth.is_file() and npz.is_file()):  # a --keep folder shared by several runs has them
        write_synthetic("caffe-pth", pth, seed=seed)
        convert(pth, npz, preprocessing="caffe")
    return pth, npz, {size: resized_pair(source, size, folder) + resized_pair(source, size, folder, (NEW_PHOTO,))[:1]
                      for size in sizes}


def resized_pair(source, size, folder, names=PICTURES):
    """(content, style) from `source` at long side `size`, as PNGs in `folder`: both programs
    then read the same pixels and neither resizes. `names`: other pictures, as many."""
    paths = []
    for name in names:
        image = Image.open(Path(source) / name).convert("RGB")
        scale = size / max(image.size)
        path = Path(folder) / f"{Path(name).stem}_{size}.png"
        image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                     Image.LANCZOS).save(path)
        paths.append(path)
    return tuple(paths)


@dataclasses.dataclass
class ProcessRun:
    """One whole command: wall seconds from launch to exit, peak RSS, and its --report."""

    launched_at: float
    wall_s: float
    peak_rss_mb: float
    status: int
    report: dict
    stderr_tail: str

    def visit_times(self):
        """(seconds since launch, step, mean loss) at each progress visit."""
        start = self.report["started_at"] - self.launched_at
        return [(start + v["seconds"], v["step"], float(np.mean(v["losses"]))) for v in self.report["visits"]]

    @property
    def final_loss(self):
        return self.visit_times()[-1][2]

    def time_to_reach(self, target):
        """Seconds from launch until the loss first reached `target` (log-linear between visits)."""
        previous = None
        for seconds, _, loss in self.visit_times():
            if loss <= target:
                if previous is None or previous[1] <= loss:
                    return seconds
                fraction = (math.log(previous[1]) - math.log(target)) / (math.log(previous[1]) - math.log(loss))
                return previous[0] + fraction * (seconds - previous[0])
            previous = (seconds, loss)
        return None

    def breakdown(self):
        """Where the wall time went (seconds)."""
        phases, report = self.report["phases"], self.report
        compile_s = report.get("compile_seconds", 0.0)
        startup = report.get("startup_seconds")
        if startup is None:
            startup = report["started_at"] - self.launched_at
        return {"startup_imports": startup, "images": phases.get("images", 0.0),
                "weights": phases.get("weights", 0.0), "compile": compile_s,
                "steps": phases.get("run", 0.0) - compile_s, "write": phases.get("write", 0.0),
                "exit_other": self.wall_s - startup - report["main_seconds"]}

    def seconds_per_step(self):
        """Steady per-step time from the visits after the first (compile excluded)."""
        visits = self.visit_times()
        if len(visits) < 2:
            return None
        (t0, s0, _), (t1, s1, _) = visits[0], visits[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def first_step_at(self, steps_in_first_visit):
        """Seconds from launch to the moment the first step began (first visit minus its steps)."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        return self.visit_times()[0][0] - steps_in_first_visit * per_step


def run_process(command, env, report_path):
    """Run `command` to completion: wall time, its peak RSS and its --report."""
    report_path = Path(report_path)
    if report_path.exists():
        report_path.unlink()
    launched_at, began = time.time(), time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=REPO_ROOT)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if process.returncode != 0 or not report:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} ... failed ({process.returncode}): {stderr[-2000:]}")
    # The child's own VmHWM: wait4's ru_maxrss would include this (forking) process's memory.
    peak = report.get("peak_rss_bytes")
    peak_mb = peak / 2**20 if peak else usage.ru_maxrss / 1024
    return ProcessRun(launched_at, wall, peak_mb, process.returncode, report, stderr[-500:])


def _ours(content, style, npz, size, steps, optimizer, out, report, extra=()):
    return [sys.executable, "-m", "nst_jax.run", str(content), str(style), "--weights", str(npz),
            "-o", str(out), "--image-size", str(size), "--num-steps", str(steps),
            "--optimizer", optimizer, "--print-every", "0", "--report", str(report), *COMMON_FLAGS,
            *extra]


def _theirs(content, style, pth, steps, optimizer, out, report, threads):
    command = [sys.executable, "-m", "bench.torch_reference", str(content), str(style), "--weights",
               str(pth), "-o", str(out), "--num-iterations", str(steps), "--optimizer", optimizer,
               "--report", str(report)]
    return command + (["--threads", str(threads)] if threads else [])


def _conv_flops(height, width):
    """Convolution FLOPs of one loss-and-gradient evaluation of neural-style's loss (bench.flops):
    one per iteration for both programs (fixed-step L-BFGS and Adam)."""
    from bench.flops import step_flops
    from nst_jax.config.presets import preset

    loss = preset("neural-style").loss
    return step_flops(height, width, tuple(loss.content_layers) + tuple(loss.style_layers))["conv_total"]


def _pair_summary(ours, theirs):
    target = max(ours.final_loss, theirs.final_loss)  # an objective both reached
    ours_t, theirs_t = ours.time_to_reach(target), theirs.time_to_reach(target)
    return {"wall_ratio": ours.wall_s / theirs.wall_s, "objective_ratio": ours.final_loss / theirs.final_loss,
            "target_objective": target, "time_to_target_s": {"nst_jax": ours_t, "pytorch": theirs_t},
            "time_to_target_ratio": (ours_t / theirs_t) if ours_t and theirs_t else None}


def _run_entry(run):
    return {"wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb, "final_objective": run.final_loss,
            "breakdown": run.breakdown(), "seconds_per_step": run.seconds_per_step(),
            "first_step_at_s": run.first_step_at(PROGRESS_STEPS),
            "compiled_programs": run.report.get("compiled_programs", []),
            "compile_cache_hits": run.report.get("compile_cache_hits", 0),
            "visits": run.visit_times()}


def compare(plan, folder, pth, npz, images, size, steps, optimizer):
    """nst-jax cold, PyTorch, nst-jax warm, PyTorch: one dict (`extra_dtype_run` adds to it)."""
    content, style, new_photo = images[size]
    env = _compare_env(folder, size, optimizer)
    runs = {}
    # Last, a new photo of another aspect ratio: what a user stylizing their photos one after
    # another meets (the cache holds the first photo's programs).
    for label, kind, photo in (("nst_jax_cold", "ours", content), ("pytorch_1", "theirs", content),
                               ("nst_jax_warm", "ours", content), ("pytorch_2", "theirs", content),
                               ("nst_jax_new_photo", "ours", new_photo), ("pytorch_new_photo", "theirs", new_photo)):
        out, report = folder / f"{label}_{size}_{optimizer}.png", folder / f"{label}_{size}_{optimizer}.json"
        command = (_ours(photo, style, npz, size, steps, optimizer, out, report) if kind == "ours"
                   else _theirs(photo, style, pth, steps, optimizer, out, report, plan.torch_threads))
        _log(f"{size} px {optimizer} {steps} steps: {label}")
        runs[label] = run_process(command, env, report)
        _log(f"  {runs[label].wall_s:.1f} s, objective {runs[label].final_loss:.6g}, "
             f"peak {runs[label].peak_rss_mb:.0f} MB")
    with Image.open(content) as picture:
        width, height = picture.size
    return {"size": size, "optimizer": optimizer, "iterations": steps, "content_hw": [height, width],
            "conv_flops_per_step": _conv_flops(height, width),
            "runs": {label: _run_entry(run) for label, run in runs.items()}, "dtypes": {},
            "cold": _pair_summary(runs["nst_jax_cold"], runs["pytorch_1"]),
            "warm": _pair_summary(runs["nst_jax_warm"], runs["pytorch_2"]),
            "new_photo": {**_pair_summary(runs["nst_jax_new_photo"], runs["pytorch_new_photo"]),
                          "over_warm": runs["nst_jax_new_photo"].wall_s / runs["nst_jax_warm"].wall_s}}


def _compare_env(folder, size, optimizer):
    """The environment of one comparison's runs: its own compile cache (cold, then warm)."""
    env = {**os.environ, "NST_JAX_CACHE": str(folder / f"cache_{size}_{optimizer}"),
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
    return {k: v for k, v in env.items() if v != ""}


def extra_dtype_run(folder, npz, images, comparison, dtype):
    """One more nst-jax run of `comparison` in compute dtype `dtype`, added to it in place: its
    wall time and objective against the float32 warm run's. Its programs are new to the cache
    (another dtype), so it compiles: the wall ratio includes that."""
    size, steps, optimizer = comparison["size"], comparison["iterations"], comparison["optimizer"]
    content, style, _ = images[size]
    label = f"nst_jax_warm_{dtype}"
    out, report = folder / f"{label}_{size}_{optimizer}.png", folder / f"{label}_{size}_{optimizer}.json"
    _log(f"{size} px {optimizer} {steps} steps: {label}")
    run = run_process(_ours(content, style, npz, size, steps, optimizer, out, report,
                            ("--compute-dtype", dtype)), _compare_env(folder, size, optimizer), report)
    _log(f"  {run.wall_s:.1f} s, objective {run.final_loss:.6g}")
    float32 = comparison["runs"]["nst_jax_warm"]
    comparison["runs"][label] = _run_entry(run)
    comparison["dtypes"][dtype] = {"wall_ratio": run.wall_s / float32["wall_s"],
                                   "objective_ratio": run.final_loss / float32["final_objective"]}


def batch_against_singles(plan, folder, npz, images):
    """One CLI run of N members (a style-weight sweep) against N single CLI runs, each set from
    an empty compile cache (the singles reuse the first one's programs, as a user's would)."""
    size, steps, n = plan.batch_size_px, plan.batch_iterations, plan.batch_members
    content, style, _ = images[size]
    weights = [100.0 * 2 ** i for i in range(n)]
    singles_env = {**os.environ, "NST_JAX_CACHE": str(folder / "cache_singles")}
    batch_env = {**os.environ, "NST_JAX_CACHE": str(folder / "cache_batch")}
    singles = []
    for weight in weights:
        _log(f"batch comparison: single run, style weight {weight:g}")
        report = folder / f"single_{weight:g}.json"
        singles.append(run_process(_ours(content, style, npz, size, steps, "lbfgs", folder / "single.png",
                                         report, ("--style-weight", f"{weight:g}")), singles_env, report))
    _log(f"batch comparison: {n} members in one run")
    report = folder / "batch.json"
    batch = run_process(_ours(content, style, npz, size, steps, "lbfgs", folder / "batch.png", report,
                              ("--sweep-style-weight", ",".join(f"{w:g}" for w in weights))), batch_env, report)
    total = sum(run.wall_s for run in singles)
    single_step = float(np.median([run.seconds_per_step() for run in singles]))
    member_step = batch.seconds_per_step() / n
    return {"size": size, "iterations": steps, "members": n, "singles_wall_s": [r.wall_s for r in singles],
            "singles_total_s": total, "batch_wall_s": batch.wall_s, "ratio": batch.wall_s / total,
            "single_step_s": single_step, "member_step_s": member_step,
            "member_step_ratio": member_step / single_step,
            "batch_breakdown": batch.breakdown(), "single_breakdowns": [r.breakdown() for r in singles]}


SECOND_CALL_SCRIPT = """
import json, sys, time
import numpy as np
from nst_jax.imaging.images import load_image
from nst_jax.weights.params_file import load_params
from nst_jax.config.presets import preset
from nst_jax import Model, stylize
content, style, params_path, size, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
params, metadata = load_params(params_path)
settings = preset("neural-style").replace(image_size=size, num_steps=steps, init="content", tv_weight=0.0)
pictures = load_image(content), [load_image(style)]
seconds = []
for _ in range(2):
    began = time.perf_counter()
    stylize(pictures[0], pictures[1], settings, Model(params, metadata.preprocessing))
    seconds.append(time.perf_counter() - began)
print(json.dumps(seconds))
"""


def second_call(plan, npz, images, folder):
    """Two stylize() calls in one process (no persistent cache): seconds of each."""
    size = plan.second_call_size
    content, style, _ = images[size]
    env = {k: v for k, v in os.environ.items() if k != "NST_JAX_CACHE"}
    _log(f"second stylize() call: {size} px, {plan.second_call_steps} steps")
    completed = subprocess.run([sys.executable, "-c", SECOND_CALL_SCRIPT, str(content), str(style), str(npz),
                                str(size), str(plan.second_call_steps)], capture_output=True, text=True,
                               env=env, cwd=REPO_ROOT, check=True)
    first, second = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"size": size, "steps": plan.second_call_steps, "first_s": first, "second_s": second,
            "ratio": second / first}


def run(plan, keep=None, source=DEFAULT_IMAGES, on_progress=None):
    """The whole benchmark; returns the results dict. `on_progress(results so far)` is called
    after each comparison, so that a time limit that cuts the run keeps what was done."""
    from bench import machine

    began = time.time()
    results = {"plan": dataclasses.asdict(plan), "machine": machine.describe_machine(),
               "versions": machine.versions(), "comparisons": [], "batch": None, "second_call": None,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
               "load_average": {"start": os.getloadavg()}}

    def record(**changes):
        results.update(changes, seconds=time.time() - began)
        results["load_average"]["end"] = os.getloadavg()
        if on_progress:
            on_progress(results)

    with tempfile.TemporaryDirectory(prefix="nst-e2e-") as scratch:
        folder = Path(keep) if keep else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = sorted(set(plan.sizes) | set(plan.adam_sizes) | ({plan.batch_size_px} if plan.batch_members > 1 else set())
                       | ({plan.second_call_size} if plan.second_call_steps else set()))
        pth, npz, images = _prepare(folder, sizes, source)
        for size, steps in zip(plan.sizes, plan.iterations):
            optimizers = plan.optimizers + (("adam",) if "adam" not in plan.optimizers
                                            and size in plan.adam_sizes else ())
            for optimizer in optimizers:
                comparison = compare(plan, folder, pth, npz, images, size, steps, optimizer)
                results["comparisons"].append(comparison)
                record()  # before the extra dtypes: a time limit that cuts those keeps this
                for dtype in plan.extra_dtypes:
                    extra_dtype_run(folder, npz, images, comparison, dtype)
                    record()
        if plan.batch_members > 1:
            record(batch=batch_against_singles(plan, folder, npz, images))
        if plan.second_call_steps:
            record(second_call=second_call(plan, npz, images, folder))
    return results


def _fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results):
    """The generated section of BENCHMARKS.md for an e2e run."""
    m, lines = results["machine"], []
    lines.append("## End to end: the whole command against the PyTorch way (generated by `python -m bench e2e`)\n")
    lines.append(f"- Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, "
                 f"{'accelerator ' + m['accelerator'] if m['accelerator'] else 'no accelerator (CPU only)'}.")
    lines.append(f"- Run started {results['started']}, took {results['seconds']:.0f} s; load average at start "
                 f"{'/'.join(f'{x:.2f}' for x in results['load_average']['start'])}, at end "
                 f"{'/'.join(f'{x:.2f}' for x in results['load_average']['end'])}.")
    lines.append("- Each row: `python -m nst_jax.run` and `python -m bench.torch_reference` as whole processes, "
                 "launch to exit, same pre-resized images and VGG-19 weights, neural-style's loss (content 5, "
                 "style 100, TV 0, from the content image); cold = empty compile cache, warm = a repeat run; "
                 "PyTorch's two runs are its first and second. Time to target: from launch until the loss "
                 "first reached the worse of the two final objectives (so both reach it).\n")
    lines.append("| size | optimizer | iterations | nst-jax cold s | nst-jax warm s | PyTorch s (1st / 2nd) | "
                 "cold ÷ PyTorch | warm ÷ PyTorch | objective nst-jax ÷ PyTorch (cold / warm) | "
                 "time to target nst-jax / PyTorch s (warm) | first step at s (warm) | peak RSS MB nst-jax / PyTorch |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in results["comparisons"]:
        r = c["runs"]
        warm_t = c["warm"]["time_to_target_s"]
        lines.append(
            f"| {c['size']} | {c['optimizer']} | {c['iterations']} | {r['nst_jax_cold']['wall_s']:.1f} | "
            f"{r['nst_jax_warm']['wall_s']:.1f} | {r['pytorch_1']['wall_s']:.1f} / {r['pytorch_2']['wall_s']:.1f} | "
            f"{c['cold']['wall_ratio']:.2f} | {c['warm']['wall_ratio']:.2f} | "
            f"{c['cold']['objective_ratio']:.3f} / {c['warm']['objective_ratio']:.3f} | "
            f"{_fmt(warm_t['nst_jax'])} / {_fmt(warm_t['pytorch'])} | "
            f"{_fmt(r['nst_jax_warm']['first_step_at_s'])} | "
            f"{r['nst_jax_warm']['peak_rss_mb']:.0f} / {r['pytorch_2']['peak_rss_mb']:.0f} |")
    lines.append("\nA new photo after the warm run (another aspect ratio, same size and style: "
                 f"{NEW_PHOTO}), against PyTorch's run of it; programs compiled afresh (not loaded from the cache):\n")
    lines.append("| size | optimizer | nst-jax new photo s | PyTorch s | ÷ PyTorch | ÷ nst-jax warm | compiled afresh | compile s |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in results["comparisons"]:
        r, n = c["runs"], c.get("new_photo")
        if n is None:
            continue
        ours = r["nst_jax_new_photo"]
        fresh = len(ours["compiled_programs"]) - ours.get("compile_cache_hits", 0)
        lines.append(f"| {c['size']} | {c['optimizer']} | {ours['wall_s']:.1f} | {r['pytorch_new_photo']['wall_s']:.1f} | "
                     f"{n['wall_ratio']:.2f} | {n['over_warm']:.2f} | {fresh} of {len(ours['compiled_programs'])} | "
                     f"{ours['breakdown']['compile']:.2f} |")
    for c in results["comparisons"]:
        for dtype, d in c.get("dtypes", {}).items():
            r = c["runs"][f"nst_jax_warm_{dtype}"]
            lines.append(f"\n{c['size']} px {c['optimizer']} in {dtype}: {r['wall_s']:.1f} s warm "
                         f"({d['wall_ratio']:.2f}× the float32 run), objective {d['objective_ratio']:.4f}× float32's.")
    lines.append("\nWhere the time went (seconds; start-up = process start and imports, steps = the loop "
                 "without compiling; exit/other = after main returned):\n")
    lines.append("| size | optimizer | run | start-up | images | weights | compile | steps | write | exit/other "
                 "| ms/step | conv TFLOP/s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in results["comparisons"]:
        for label in [name for name in c["runs"] if name != "pytorch_2"]:
            b, per_step = c["runs"][label]["breakdown"], c["runs"][label]["seconds_per_step"]
            rate = per_step and c.get("conv_flops_per_step", 0) / per_step / 1e12
            lines.append(f"| {c['size']} | {c['optimizer']} | {label} | {b['startup_imports']:.2f} | "
                         f"{b['images']:.2f} | {b['weights']:.2f} | {b['compile']:.2f} | {b['steps']:.2f} | "
                         f"{b['write']:.2f} | {b['exit_other']:.2f} | {_fmt(per_step and per_step * 1000, 1)} "
                         f"| {_fmt(rate, 2)} |")
    if results.get("batch"):
        b = results["batch"]
        lines.append(f"\nA batch of {b['members']} L-BFGS members ({b['size']} px, {b['iterations']} iterations, "
                     f"a style-weight sweep) in one run: {b['batch_wall_s']:.1f} s, against {b['members']} single "
                     f"runs of the CLI: {b['singles_total_s']:.1f} s ({', '.join(f'{s:.1f}' for s in b['singles_wall_s'])}); "
                     f"ratio {b['ratio']:.2f}. Per member-step: {b['member_step_s'] * 1000:.0f} ms in the batch "
                     f"against {b['single_step_s'] * 1000:.0f} ms for one image ({b['member_step_ratio']:.2f}×).")
    s = results["second_call"]
    if s:
        lines.append(f"\nTwo `stylize()` calls in one process ({s['size']} px, {s['steps']} steps, no persistent "
                     f"cache): first {s['first_s']:.2f} s, second {s['second_s']:.2f} s; ratio {s['ratio']:.2f}.\n")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px, 10 iterations: a check, not a record")
    parser.add_argument("--sizes", metavar="PX:ITERATIONS,...", help="e.g. 128:100,256:100,512:50")
    parser.add_argument("--optimizers", metavar="NAMES", help="lbfgs and/or adam at every size")
    parser.add_argument("--adam-sizes", metavar="PX,...", help="sizes also compared with Adam ('none': none)")
    parser.add_argument("--torch-threads", type=int, metavar="N", help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch-against-singles comparison")
    parser.add_argument("--no-second-call", action="store_true", help="skip the second stylize() call check")
    parser.add_argument("--extra-dtypes", metavar="NAMES", help="one more warm nst-jax run per size in "
                        "these compute dtypes, e.g. bfloat16")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", metavar="DIR")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="file whose e2e section is rewritten (default: BENCHMARKS.md, or DIR/e2e-quick.md with --quick)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the runs' images and reports here")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, metavar="DIR",
                        help=f"folder with {' and '.join(PICTURES)} (default: the repo's tests/data)")
    return parser


def plan_from_args(args):
    plan = quick_plan() if args.quick else Plan()
    changes = {}
    if args.sizes:
        try:
            pairs = [part.split(":") for part in args.sizes.split(",")]
            changes["sizes"] = tuple(int(size) for size, _ in pairs)
            changes["iterations"] = tuple(int(steps) for _, steps in pairs)
        except ValueError:
            raise UserInputError(f"--sizes: expected PX:ITERATIONS,... such as 128:100, got {args.sizes!r}") from None
        if min(changes["sizes"]) < 32 or min(changes["iterations"]) < 2 * PROGRESS_STEPS:
            raise UserInputError("--sizes: sizes of at least 32 px and at least 20 iterations")
    if args.optimizers:
        changes["optimizers"] = name_list("--optimizers", args.optimizers, ("lbfgs", "adam"))
    if args.adam_sizes:
        changes["adam_sizes"] = () if args.adam_sizes == "none" else int_list("--adam-sizes", args.adam_sizes, 32)
    if args.torch_threads is not None:
        changes["torch_threads"] = at_least("--torch-threads", args.torch_threads)
    if args.no_second_call:
        changes["second_call_steps"] = 0
    if args.no_batch:
        changes["batch_members"] = 0
    if args.extra_dtypes:
        changes["extra_dtypes"] = name_list("--extra-dtypes", args.extra_dtypes, ("float32", "bfloat16"))
    return dataclasses.replace(plan, **changes)


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args)
    missing = [name for name in PICTURES if not (args.images / name).is_file()]
    if missing:
        raise UserInputError(f"--images {args.images}: no {', '.join(missing)} there")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"--out {args.out}: cannot create the folder ({error.strerror or error})") from None
    from bench.report import update_markdown, write_json

    stem = "e2e-quick" if args.quick else "e2e"
    markdown_path = args.markdown or (args.out / f"{stem}.md" if args.quick else REPO_ROOT / "BENCHMARKS.md")

    partial_markdown = bool(args.markdown or args.quick)

    def write(results):  # after each comparison: e2e.json, and a markdown file the caller named
        write_json(results, args.out / f"{stem}.json")
        if partial_markdown:
            update_markdown(markdown_path, markdown(results), (BEGIN_MARKER, END_MARKER))

    results = run(plan, keep=args.keep, source=args.images, on_progress=write)
    if not partial_markdown:  # BENCHMARKS.md gets only a finished run
        update_markdown(markdown_path, markdown(results), (BEGIN_MARKER, END_MARKER))
    print(f"wrote {args.out / f'{stem}.json'} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
