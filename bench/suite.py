"""What a benchmark run measures (a Plan) and the loop that measures it into one results dict."""

import dataclasses
import datetime
import sys
from typing import Optional, Tuple

import jax

from bench import jax_step, machine, peak, torch_step
from bench.flops import step_flops

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every choice of a run; `quick_plan` and `full_plan` are the two presets, flags edit them.

    Step times are per step: each timed sample is one chunk call of `chunk_steps` steps divided
    by `chunk_steps` (1 by default, so that min/median/max describe single steps); one more call
    of `long_chunk_steps` steps gives the per-step time at the CLI's cadence (it visits the host
    every 10 steps), where per-call costs are spread over the chunk.
    """

    sizes: Tuple[int, ...]
    optimizers: Tuple[str, ...] = ("adam", "lbfgs")
    dtypes: Tuple[str, ...] = ("float32",)
    timed_chunks: int = 10
    chunk_steps: int = 1
    warmup_chunks: int = 2
    long_chunk_steps: int = 10  # one more call of this many steps: the CLI's per-visit cadence
    batch_image_size: int = 128
    batch_sizes: Tuple[int, ...] = (1, 2, 4, 8)
    batch_optimizer: str = "adam"
    matmul_sizes: Tuple[int, ...] = (2048, 4096)
    matmul_repeats: int = 5
    torch: bool = True
    torch_channels_last: bool = False
    long_run_size: Optional[int] = None  # a whole L-BFGS run per dtype (the accelerator goal)
    long_run_steps: int = 0
    seed: int = 0
    quick: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)


def full_plan(on_accelerator):
    """The recorded benchmark: 128/256/512 px (and 1024 on an accelerator), ≥10 timed steps each.

    On an accelerator it adds bfloat16 and the 500-iteration L-BFGS run at 512 px; on a CPU the
    whole run must stay within about 10 minutes, so the long run is short and small.
    """
    if on_accelerator:
        return Plan(sizes=(128, 256, 512, 1024), dtypes=("float32", "bfloat16"), timed_chunks=20,
                    long_run_size=512, long_run_steps=500, batch_image_size=256)
    return Plan(sizes=(128, 256, 512), timed_chunks=10, long_run_size=128, long_run_steps=50,
                dtypes=("float32",), torch_channels_last=True)


def quick_plan():
    """Small sizes and few steps: under 2 minutes on a 2-core CPU; for checking, not for the record."""
    return Plan(sizes=(64, 128), timed_chunks=3, warmup_chunks=1, long_chunk_steps=3,
                batch_image_size=64, batch_sizes=(1, 2), matmul_sizes=(1024,), matmul_repeats=3,
                long_run_size=64, long_run_steps=10, quick=True)


def _log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _with_rates(entry, flops, peak_gflops, evaluations_per_step=None):
    """Add FLOP counts and GFLOP/s (convolutions, forward + input gradient) to a timing entry.

    With a varying number of evaluations per step (L-BFGS's line search) the rate is total work
    over total time, mean evaluations ÷ mean step time: the median step is a one-evaluation step.
    """
    seconds = entry["step_s"]["mean" if evaluations_per_step else "median"]
    evaluations_per_step = evaluations_per_step or 1.0
    work = flops["conv_total"] * evaluations_per_step
    entry["flops"] = flops
    entry["gflops_per_s"] = work / seconds / 1e9
    entry["fraction_of_peak"] = entry["gflops_per_s"] / peak_gflops if peak_gflops else None
    return entry


def _matmul_peaks(plan, threads, with_torch):
    _log(f"matrix-multiply peak, n = {', '.join(map(str, plan.matmul_sizes))}")
    peaks = {"jax": peak.best_of_sizes(peak.jax_matmul, plan.matmul_sizes, plan.matmul_repeats)}
    peaks["torch"] = (peak.best_of_sizes(peak.torch_matmul, plan.matmul_sizes, plan.matmul_repeats,
                                         threads=threads) if with_torch else None)
    peaks["peak_gflops"] = max(p["gflops"] for p in (peaks["jax"], peaks["torch"]) if p)
    return peaks


def _single_image_steps(plan, params, peak_gflops, torch_device, threads):
    entries = []
    for size in plan.sizes:
        for dtype in plan.dtypes:
            for optimizer in plan.optimizers:
                _log(f"JAX {optimizer} {dtype} at {size} px")
                problem = jax_step.build_problem(size, optimizer, compute_dtype=dtype,
                                                 seed=plan.seed, params=params)
                entry = jax_step.time_step(problem, chunk_steps=plan.chunk_steps,
                                           warmup_chunks=plan.warmup_chunks,
                                           timed_chunks=plan.timed_chunks,
                                           long_chunk_steps=plan.long_chunk_steps)
                evaluations = entry["evals_per_step"]["mean"] if entry["evals_per_step"] else None
                entry.update(framework="jax", optimizer=optimizer, size=size, compute_dtype=dtype)
                flops = step_flops(size, size, problem.objective.layers, problem.objective.style_layers)
                entries.append(_with_rates(entry, flops, peak_gflops, evaluations))
        if torch_device:
            entries += _torch_steps(plan, size, params, peak_gflops, torch_device, threads)
    return entries


def _torch_steps(plan, size, params, peak_gflops, device, threads):
    entries = []
    problem = jax_step.build_problem(size, "adam", seed=plan.seed, params=params)
    flops = step_flops(size, size, problem.objective.layers, problem.objective.style_layers)
    for channels_last in ((False, True) if plan.torch_channels_last else (False,)):
        variant = "channels_last" if channels_last else ""  # "": torch's default, NCHW
        _log(f"PyTorch adam at {size} px {variant}".rstrip())
        twin = torch_step.build_problem(problem, channels_last=channels_last, device=device)
        entry = torch_step.time_step(twin, problem.settings, warmup_steps=plan.warmup_chunks,
                                     timed_steps=plan.timed_chunks * plan.chunk_steps,
                                     threads=threads)
        entry.update(framework="torch", optimizer="adam", size=size, compute_dtype="float32",
                     variant=variant, device=device)
        entries.append(_with_rates(entry, flops, peak_gflops))
    return entries


def _add_ratios(entries):
    """Each float32 JAX Adam entry gets jax_over_torch: its median ÷ the fastest PyTorch variant's."""
    fastest = {}
    for entry in entries:
        if entry["framework"] == "torch":
            best = fastest.get(entry["size"])
            if best is None or entry["step_s"]["median"] < best["step_s"]["median"]:
                fastest[entry["size"]] = entry
    for entry in entries:
        if (entry["framework"] == "jax" and entry["optimizer"] == "adam"
                and entry["compute_dtype"] == "float32" and entry["size"] in fastest):
            reference = fastest[entry["size"]]
            entry["jax_over_torch"] = entry["step_s"]["median"] / reference["step_s"]["median"]
            entry["torch_reference"] = reference.get("variant") or "NCHW"


def _batch_throughput(plan, params, peak_gflops):
    entries = []
    problem = jax_step.build_problem(plan.batch_image_size, plan.batch_optimizer, seed=plan.seed,
                                     params=params)
    flops = step_flops(plan.batch_image_size, plan.batch_image_size, problem.objective.layers,
                       problem.objective.style_layers)
    for batch in plan.batch_sizes:
        _log(f"JAX {plan.batch_optimizer} batch of {batch} at {plan.batch_image_size} px")
        entry = jax_step.time_batch(problem, batch, chunk_steps=plan.chunk_steps,
                                    warmup_chunks=plan.warmup_chunks, timed_chunks=plan.timed_chunks)
        entry.update(size=plan.batch_image_size, batch=batch, optimizer=plan.batch_optimizer,
                     member_steps_per_s=batch / entry["step_s"]["median"])
        batch_flops = {key: value * batch if isinstance(value, int) else value
                       for key, value in flops.items()}
        entries.append(_with_rates(entry, batch_flops, peak_gflops))
    for entry in entries:
        entry["speedup_over_batch_1"] = entry["member_steps_per_s"] / entries[0]["member_steps_per_s"]
    return entries


def _long_runs(plan, params):
    runs = []
    for dtype in plan.dtypes:
        _log(f"JAX lbfgs {dtype}: {plan.long_run_steps} steps at {plan.long_run_size} px")
        problem = jax_step.build_problem(plan.long_run_size, "lbfgs", compute_dtype=dtype,
                                         seed=plan.seed, params=params)
        run = jax_step.full_run(problem, plan.long_run_steps)
        run.update(size=plan.long_run_size, optimizer="lbfgs", compute_dtype=dtype)
        runs.append(run)
    reference = next((r for r in runs if r["compute_dtype"] == "float32"), None)
    for run in runs:
        if reference is not None and reference["final_loss_float32"]:
            run["loss_relative_to_float32"] = (run["final_loss_float32"] / reference["final_loss_float32"]
                                               - 1.0)
    return runs


def run(plan):
    """Measure everything the plan asks for; returns the results dict (see BENCHMARKS.md)."""
    from weights_tools.synthetic import synthetic_params

    started = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = machine.load_average()
    description = machine.describe_machine()
    threads = description["usable_cores"]
    torch_device = None
    torch_note = None
    if plan.torch:
        if not torch_step.available():
            torch_note = "torch is not installed (pip install -e '.[torch]')"
        else:
            torch_device = torch_step.device_for(jax.default_backend())
            if torch_device is None:
                torch_note = f"this torch build cannot run on JAX's backend ({jax.default_backend()})"
    if torch_note:
        _log(f"PyTorch reference skipped: {torch_note}")
    params = synthetic_params(plan.seed)
    peaks = _matmul_peaks(plan, threads, torch_device == "cpu")
    steps = _single_image_steps(plan, params, peaks["peak_gflops"], torch_device, threads)
    _add_ratios(steps)
    batch = _batch_throughput(plan, params, peaks["peak_gflops"]) if plan.batch_sizes else []
    long_runs = _long_runs(plan, params) if plan.long_run_size and plan.long_run_steps else []
    return {
        "schema": SCHEMA_VERSION,
        "started": started.isoformat(timespec="seconds"),
        "seconds": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
        "plan": plan.to_dict(),
        "machine": description,
        "versions": machine.versions(),
        "load_average": {"start": load_at_start, "end": machine.load_average()},
        "torch_skipped": torch_note,
        "matmul": peaks,
        "steps": steps,
        "batch": batch,
        "long_runs": long_runs,
    }
