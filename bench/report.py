"""Results -> JSON file, Markdown tables, and the generated section of BENCHMARKS.md."""

import json
import os

from nst_jax.atomic import write_text

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"


def write_atomically(path, text):
    """Write text to path, creating its folder: never a half-written file (nst_jax.atomic)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, text)


def write_json(results, path):
    write_atomically(path, json.dumps(results, indent=2, sort_keys=False) + "\n")


def _ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def _mb(count):
    return f"{count / 2 ** 20:.0f}" if count is not None else "–"


def _peak_memory(entry):
    """Device peak on an accelerator, else host peak RSS, in MB (with which one it is)."""
    memory = entry.get("memory") or {}
    device = memory.get("device") or {}
    if device.get("peak_bytes_in_use") is not None:
        return f"{_mb(device['peak_bytes_in_use'])} (device)"
    return _mb(memory.get("host_peak_rss_bytes"))


def _machine_lines(results):
    machine, versions = results["machine"], results["versions"]
    xla = versions["xla"]
    accelerator = machine["accelerator"] or "no accelerator (CPU only)"
    load = results["load_average"]
    lines = [
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores of "
        f"{machine['logical_cores']} ({', '.join(machine['cpu_flags']) or 'no AVX'}); {accelerator}.",
        f"- Software: JAX {versions['jax']}, jaxlib {versions['jaxlib']} (XLA at jaxlib commit "
        f"{(xla['jaxlib_git_hash'] or '?')[:10]}, extension version {xla['extension_version']}, "
        f"platform {xla['platform_version']}), Flax {versions['flax']}, optax {versions['optax']}, "
        f"PyTorch {versions['torch'] or 'not installed'}, Python {versions['python']}. "
        f"XLA_FLAGS: `{versions['xla_flags'] or '(none)'}`; the chunk's compiler options: "
        f"`{versions.get('chunk_compiler_options') or '(none)'}`.",
        f"- Run: `python -m bench{' --quick' if results['plan']['quick'] else ''}` started "
        f"{results['started']}, took {results['seconds']:.0f} s. Load average (1/5/15 min) at start "
        f"{_load(load['start'])}, at end {_load(load['end'])}"
        f"{_BUSY_NOTE if _busy(results) else ''}.",
    ]
    if results.get("torch_skipped"):
        lines.append(f"- PyTorch reference skipped: {results['torch_skipped']}.")
    return lines


_BUSY_NOTE = " (other work was competing for the cores: treat times as upper bounds)"


def _load(values):
    return "/".join(f"{v:.2f}" for v in values) if values else "unknown"


def _busy(results):
    """True when the 1-minute load was at or above 1.5 at either end of a run."""
    loads = [results["load_average"][k] for k in ("start", "end") if results["load_average"][k]]
    return any(load[0] >= 1.5 for load in loads)


def _matmul_lines(results):
    matmul = results["matmul"]
    parts = [f"JAX `jnp.dot` {_best_size(matmul['jax'])} {matmul['jax']['gflops']:.0f} GFLOP/s"]
    if matmul.get("torch"):
        torch_peak = matmul["torch"]
        parts.append(f"PyTorch `torch.mm` {_best_size(torch_peak)} {torch_peak['gflops']:.0f} GFLOP/s")
    return [f"- Matrix-multiply peak (float32 square products, median of "
            f"{results['plan']['matmul_repeats']}): {'; '.join(parts)}. "
            f"'% of peak' below divides by the better one, {matmul['peak_gflops']:.0f} GFLOP/s."]


def _best_size(measured):
    best = max(measured["by_size"], key=lambda run: run["gflops"])
    return f"{best['n']}²"


def step_table(results):
    """Markdown rows for the single-image steps."""
    header = ("| framework | optimizer | dtype | size | compile s | first call s | median ms | min ms "
              "| max ms | ms/step in a long chunk | evals/step | GFLOP/eval | GFLOP/s | % of peak "
              "| JAX ÷ PyTorch | peak MB |")
    rows = [header, _separator(header)]
    for entry in results["steps"]:
        step, compile_info = entry["step_s"], entry["compile"]
        compile_s = compile_info.get("lower_s", 0.0) + compile_info.get("compile_s", 0.0)
        compiled = f"{compile_s:.1f}" if "compile_s" in compile_info else "–"
        evaluations = entry.get("evals_per_step")
        framework = entry["framework"] + (f" ({entry['variant']})" if entry.get("variant") else "")
        cells = [framework, entry["optimizer"], entry["compute_dtype"], str(entry["size"]), compiled,
                 f"{compile_info['first_call_s']:.2f}", _ms(step["median"]), _ms(step["min"]),
                 _ms(step["max"]), _long_chunk(entry.get("long_chunk")),
                 f"{evaluations['mean']:.2f}" if evaluations else "1",
                 f"{entry['flops']['conv_total'] / 1e9:.2f}", f"{entry['gflops_per_s']:.0f}",
                 _percent(entry["fraction_of_peak"]), _ratio(entry.get("jax_over_torch")),
                 _peak_memory(entry)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _long_chunk(long_chunk):
    if not long_chunk:
        return "–"
    return f"{_ms(long_chunk['seconds_per_step'])} ({long_chunk['steps']} steps)"


def _separator(header):
    return "|" + "---|" * (header.count("|") - 1)


def _percent(fraction):
    return f"{fraction * 100:.0f}%" if fraction is not None else "–"


def _ratio(value):
    return f"{value:.2f}" if value is not None else "–"


def batch_table(results):
    header = ("| batch | size | optimizer | compile s | median ms per batched step | member-steps/s "
              "| × batch 1 | GFLOP/s | % of peak | peak MB |")
    rows = [header, _separator(header)]
    for entry in results["batch"]:
        compile_s = entry["compile"]["lower_s"] + entry["compile"]["compile_s"]
        rows.append(f"| {entry['batch']} | {entry['size']} | {entry['optimizer']} | {compile_s:.1f} "
                    f"| {_ms(entry['step_s']['median'])} | {entry['member_steps_per_s']:.2f} "
                    f"| {entry['speedup_over_batch_1']:.2f} | {entry['gflops_per_s']:.0f} "
                    f"| {_percent(entry['fraction_of_peak'])} | {_peak_memory(entry)} |")
    return rows


def long_run_table(results):
    header = ("| optimizer | dtype | size | steps | seconds (compile excluded) | final loss "
              "| final image's float32 loss | vs float32 run |")
    rows = [header, _separator(header)]
    for run in results["long_runs"]:
        relative = run.get("loss_relative_to_float32")
        rows.append(f"| {run['optimizer']} | {run['compute_dtype']} | {run['size']} | {run['steps']} "
                    f"| {run['seconds']:.1f} | {run['final_loss']:.4g} | {run['final_loss_float32']:.4g} "
                    f"| {f'{relative:+.2%}' if relative is not None else '–'} |")
    return rows


def markdown(results):
    """The generated section: machine, peak, and the three tables."""
    plan = results["plan"]
    lines = ["## Latest run (generated by `python -m bench`)", ""]
    lines += _machine_lines(results) + _matmul_lines(results)
    lines += ["", "### One image: step time",
              "",
              f"Per step: each of {plan['timed_chunks']} timed samples is one call of the CLI's "
              f"jitted chunk (`lax.fori_loop`) of {plan['chunk_steps']} step(s) ÷ "
              f"{plan['chunk_steps']}, after {plan['warmup_chunks']} warm-up call(s), with "
              f"`block_until_ready`. JAX ÷ PyTorch divides by the faster PyTorch layout at that "
              f"size. Compile = lowering + XLA compilation (ahead of time); "
              f"first call = the first execution after it. 'Long chunk': one more call of "
              f"{plan['long_chunk_steps']} steps, the CLI's cadence (it visits the host every 10 "
              f"steps), ÷ its steps. PyTorch: forward + backward + Adam "
              f"update + clamp, one step per sample. GFLOP/eval counts the convolutions of the "
              f"truncated network (forward + input gradient); GFLOP/s = that × evals/step ÷ "
              f"median (L-BFGS: ÷ mean, as its evaluations per step vary). "
              f"Peak MB is the process's peak RSS during the timed calls (device memory on an "
              f"accelerator).", ""]
    lines += step_table(results)
    if results["batch"]:
        lines += ["", "### Batched runs: throughput against batch size", "",
                  "One `jax.vmap` of the chunk over N members (different start noise), as "
                  "`nst_jax.engine.stylize` runs several styles or weights at once.", ""]
        lines += batch_table(results)
    if results["long_runs"]:
        lines += ["", "### Whole runs", "",
                  "A full L-BFGS run through `nst_jax.engine.optimize.run_loop` (host visit every 10 "
                  "steps), compile excluded; bfloat16 runs are scored again with the float32 loss.",
                  ""]
        lines += long_run_table(results)
    return "\n".join(lines) + "\n"


def update_markdown(path, section, markers=None):
    """Replace the text between the bench markers (or `markers`: (begin, end)) in `path`,
    creating the file or the markers."""
    begin, end = markers or (BEGIN_MARKER, END_MARKER)
    block = f"{begin}\n{section}{end}"
    if os.path.exists(path):
        with open(path) as stream:
            text = stream.read()
    else:
        text = "# Benchmarks\n\n"
    if begin in text and end in text:
        before = text[: text.index(begin)]
        after = text[text.index(end) + len(end):]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomically(path, text)
