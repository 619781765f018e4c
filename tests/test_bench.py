"""The benchmark's code path on tiny sizes: it runs, and what it writes is complete and sane.

No timed assertions: times are only checked to be positive and ordered (min ≤ median ≤ max).
FLOP counts are recomputed here from VGG-19's layer table (docs/WEIGHTS.md), independently of
bench/flops.py, and the PyTorch step is checked to compute the same loss and image gradient as
ours, so the side-by-side comparison compares like with like.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

from bench import report
from bench.__main__ import main

SIZE = 32
TIMED_STEPS = 2
BATCH_SIZES = (1, 2)
LONG_RUN_STEPS = 3
LONG_CHUNK_STEPS = 2
HAND_WRITTEN = "## What we tried\n\nThis paragraph is written by hand and must survive.\n"

# VGG-19 up to conv5_1 (docs/WEIGHTS.md): (convolutions, in channels of the first, out channels) per
# block; each block runs at 1/2 the previous block's height and width.
VGG19_TO_CONV5_1 = ((2, 3, 64), (2, 64, 128), (4, 128, 256), (4, 256, 512), (1, 512, 512))


def conv_flops_forward_plus_input_gradient(height, width):
    """Σ over convolutions of 2·h·w·C_in·C_out·9, doubled for the backward-data convolution."""
    total = 0
    for block, (convolutions, first_in, out) in enumerate(VGG19_TO_CONV5_1):
        h, w = height // 2 ** block, width // 2 ** block
        for index in range(convolutions):
            channels_in = first_in if index == 0 else out
            total += 2 * h * w * channels_in * out * 9
    return 2 * total


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny --quick run into a temporary folder, with a Markdown file that has a hand-written part."""
    folder = tmp_path_factory.mktemp("bench")
    markdown = folder / "BENCHMARKS.md"
    markdown.write_text(f"# Benchmarks\n\n{report.BEGIN_MARKER}\nstale table\n{report.END_MARKER}\n\n"
                        + HAND_WRITTEN)
    argv = ["--quick", "--sizes", str(SIZE), "--steps", str(TIMED_STEPS), "--warmup", "1",
            "--long-chunk-steps", str(LONG_CHUNK_STEPS),
            "--batch-sizes", ",".join(map(str, BATCH_SIZES)), "--batch-image-size", str(SIZE),
            "--long-run", f"{SIZE}:{LONG_RUN_STEPS}", "--matmul-sizes", "128",
            "--out", str(folder / "results"), "--markdown", str(markdown)]
    assert main(argv) == 0
    results = json.loads((folder / "results" / "quick.json").read_text())
    return {"results": results, "folder": folder, "markdown": markdown}


def check_summary(summary, count):
    assert summary["n"] == count
    assert 0 < summary["min"] <= summary["median"] <= summary["max"]
    assert summary["min"] <= summary["mean"] <= summary["max"]


def test_machine_and_versions_are_recorded(bench_run):
    results = bench_run["results"]
    machine, versions = results["machine"], results["versions"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert machine["usable_cores"] >= 1 and machine["logical_cores"] >= machine["usable_cores"]
    assert machine["backend"] == jax.default_backend()
    assert (machine["accelerator"] is None) == (jax.default_backend() == "cpu")
    assert versions["jax"] == jax.__version__
    assert versions["jaxlib"] and versions["xla"]["extension_version"] is not None
    assert versions["xla"]["platform_version"]
    assert len(results["load_average"]["start"]) == 3


def test_matmul_peak_is_measured(bench_run):
    matmul = bench_run["results"]["matmul"]
    assert matmul["jax"]["by_size"][0]["n"] == 128
    check_summary(matmul["jax"]["by_size"][0]["seconds"], 3)
    assert matmul["peak_gflops"] >= matmul["jax"]["gflops"] > 0
    if matmul["torch"] is not None:
        assert matmul["peak_gflops"] >= matmul["torch"]["gflops"] > 0


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_jax_step_entries_are_complete(bench_run, optimizer):
    results = bench_run["results"]
    (entry,) = [e for e in results["steps"] if e["framework"] == "jax" and e["optimizer"] == optimizer]
    assert entry["size"] == SIZE and entry["compute_dtype"] == "float32"
    assert entry["compile"]["lower_s"] > 0 and entry["compile"]["compile_s"] > 0
    assert entry["compile"]["first_call_s"] > 0
    check_summary(entry["step_s"], TIMED_STEPS)
    assert entry["long_chunk"]["steps"] == LONG_CHUNK_STEPS
    assert entry["long_chunk"]["seconds_per_step"] > 0
    assert entry["flops"]["conv_total"] == conv_flops_forward_plus_input_gradient(SIZE, SIZE)
    assert entry["flops"]["last_conv"] == "conv5_1"
    evaluations = entry["evals_per_step"]["mean"] if optimizer == "lbfgs" else 1.0
    if optimizer == "lbfgs":
        check_summary(entry["evals_per_step"], TIMED_STEPS)
    else:
        assert entry["evals_per_step"] is None
    expected_rate = entry["flops"]["conv_total"] * evaluations / entry["step_s"]["median"] / 1e9
    np.testing.assert_allclose(entry["gflops_per_s"], expected_rate, rtol=1e-9)
    np.testing.assert_allclose(entry["fraction_of_peak"],
                               expected_rate / results["matmul"]["peak_gflops"], rtol=1e-9)
    assert entry["memory"]["host_peak_rss_bytes"] > 0
    assert np.isfinite(entry["loss"])


def test_torch_step_is_timed_beside_ours(bench_run):
    pytest.importorskip("torch")
    results = bench_run["results"]
    (torch_entry,) = [e for e in results["steps"] if e["framework"] == "torch"]
    check_summary(torch_entry["step_s"], TIMED_STEPS)
    assert torch_entry["threads"] == results["machine"]["usable_cores"]
    assert torch_entry["flops"]["conv_total"] == conv_flops_forward_plus_input_gradient(SIZE, SIZE)
    (adam,) = [e for e in results["steps"] if e["framework"] == "jax" and e["optimizer"] == "adam"]
    np.testing.assert_allclose(adam["jax_over_torch"],
                               adam["step_s"]["median"] / torch_entry["step_s"]["median"], rtol=1e-9)
    assert adam["torch_reference"] == "NCHW"


def test_batch_throughput_entries(bench_run):
    batch = bench_run["results"]["batch"]
    assert [entry["batch"] for entry in batch] == list(BATCH_SIZES)
    for entry in batch:
        check_summary(entry["step_s"], TIMED_STEPS)
        np.testing.assert_allclose(entry["member_steps_per_s"],
                                   entry["batch"] / entry["step_s"]["median"])
        expected = entry["batch"] * conv_flops_forward_plus_input_gradient(SIZE, SIZE)
        assert entry["flops"]["conv_total"] == expected
    assert batch[0]["speedup_over_batch_1"] == 1.0


def test_long_run_entry(bench_run):
    (run,) = bench_run["results"]["long_runs"]
    assert run["steps"] == LONG_RUN_STEPS and run["seconds"] > 0
    assert np.isfinite(run["final_loss"]) and np.isfinite(run["final_loss_float32"])
    assert run["loss_relative_to_float32"] == 0.0  # the float32 run is its own reference


def test_png_is_written(bench_run):
    with Image.open(bench_run["folder"] / "results" / "quick.png") as image:
        assert image.format == "PNG" and image.size == (1200, 520)
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 < pixels.max()  # something was drawn on the white background


def test_markdown_has_the_tables_and_keeps_the_hand_written_part(bench_run):
    text = bench_run["markdown"].read_text()
    assert "stale table" not in text
    assert text.count(report.BEGIN_MARKER) == 1 and text.count(report.END_MARKER) == 1
    assert text.endswith(HAND_WRITTEN)
    generated = text[text.index(report.BEGIN_MARKER): text.index(report.END_MARKER)]
    assert "| framework | optimizer |" in generated
    assert f"| jax | adam | float32 | {SIZE} |" in generated
    assert f"({LONG_CHUNK_STEPS} steps)" in generated
    assert f"| jax | lbfgs | float32 | {SIZE} |" in generated
    assert "| batch | size |" in generated and "| 2 | 32 | adam |" in generated


def test_markdown_section_is_added_to_a_file_without_markers(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nkept\n")
    report.update_markdown(path, "table one\n")
    report.update_markdown(path, "table two\n")
    text = path.read_text()
    assert text.startswith("# Notes\n\nkept\n")
    assert "table two" in text and "table one" not in text


@pytest.mark.parametrize("argv, flag", [(["--sizes", "8"], "--sizes"),
                                        (["--sizes", "a,b"], "--sizes"),
                                        (["--optimizers", "rmsprop"], "--optimizers"),
                                        (["--long-run", "512"], "--long-run"),
                                        (["--steps", "0"], "--steps")])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, flag):
    out = tmp_path / "results"
    assert main(argv + ["--out", str(out), "--no-markdown"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {flag}") and error.count("\n") == 1
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("argv, flag", [(["e2e", "--adam-sizes", "x"], "--adam-sizes"),
                                        (["e2e", "--torch-threads", "0"], "--torch-threads"),
                                        (["e2e", "--extra-dtypes", "float16"], "--extra-dtypes"),
                                        (["remat", "--rounds", "0"], "--rounds"),
                                        (["largest", "--sizes", "8"], "--sizes"),
                                        (["largest", "--steps", "0"], "--steps"),
                                        (["lbfgs", "--memory", "0"], "--memory")])
def test_subcommands_refuse_bad_flags_in_one_line(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {flag}") and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA's CPU convolution paths")
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_no_convolution_in_the_compiled_loop_runs_as_naive_loops(optimizer):
    """Inside lax.fori_loop XLA's CPU backend used to compile every input-gradient convolution
    into loop nests (4-5x slower steps, BENCHMARKS.md); nst_jax.model.ops's conv3x3_same prevents it."""
    from bench import hlo, jax_step
    from nst_jax.engine.optimize import OptimizerSpec, init_state, jit_chunk, make_chunk
    from nst_jax.model.ops import ConvImpl

    def backends(conv=ConvImpl()):
        problem = jax_step.build_problem(48, optimizer)
        objective = dataclasses.replace(problem.objective, conv=conv)
        chunk = make_chunk(objective, OptimizerSpec.from_settings(problem.settings))
        opt_state = init_state(problem.optimizer, problem.pixels)
        text = jit_chunk(chunk).lower(problem.pixels, opt_state, jax.numpy.int32(1),
                                      problem.params, problem.targets,
                                      problem.weights).compile().as_text()
        return hlo.convolution_backends(text)

    ours = backends()
    # 13 forward convolutions and 12 input gradients (conv1_1's is a matrix product).
    assert ours.get("loops", 0) == 0 and sum(ours.values()) >= 25, ours

    # The check can fail: flax's own convolution, differentiated by JAX, gives the old program.
    def stock(x, kernel, adjoint):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert backends(ConvImpl(convolve=stock)).get("loops", 0) >= 13



def test_the_target_passes_run_the_loops_convolutions():
    """The targets (content features and Grams, before the loop) are compiled with the loop's
    compiler options: on a CPU, Eigen's convolutions, 11 % faster than XLA's default YNNPACK
    fusions for the forward passes at 512 px (BENCHMARKS.md)."""
    from bench import hlo, jax_step
    from nst_jax.engine import stages
    from nst_jax.engine.optimize import compiler_options

    problem = jax_step.build_problem(48, "adam")
    arguments = (problem.objective, problem.params, problem.pixels, [problem.pixels])
    ours = hlo.convolution_backends(stages.targets.lower(*arguments).compile().as_text())
    assert sum(ours.values()) >= 13, ours
    if compiler_options():  # this jaxlib has the option: nothing left in XLA's default library
        assert set(ours) == {"eigen"}, ours
        # The check can fail: plain jax.jit gives XLA's default.
        default = jax.jit(stages.targets.__wrapped__, static_argnums=0).lower(*arguments).compile()
        assert set(hlo.convolution_backends(default.as_text())) != {"eigen"}

def test_torch_reference_computes_our_loss_and_gradient():
    """The PyTorch step (plain torch.nn.functional, torch 2.x) against nst_jax's loss at 32 px."""
    pytest.importorskip("torch")
    from bench import jax_step, torch_step
    from nst_jax.loss.objective import total_loss

    problem = jax_step.build_problem(SIZE, "adam")
    reference_loss, reference_gradient = torch_step.loss_and_gradient(torch_step.build_problem(problem))
    # Compiled, the params as arguments: run eagerly, every VGG op dispatches one by one (10 s).
    ours, gradient = jax.jit(jax.value_and_grad(
        lambda x, params, targets, weights: total_loss(problem.objective, params, x, targets, weights)))(
        problem.pixels, problem.params, problem.targets, problem.weights)
    np.testing.assert_allclose(float(ours), reference_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gradient), reference_gradient, rtol=1e-3,
                               atol=1e-4 * np.abs(reference_gradient).max())


def test_investigate_passes_each_experiments_choices_as_arguments():
    """Experiments vary the network and the compiler options through arguments, not by patching."""
    import bench.investigate as investigate
    from nst_jax.model.ops import SHIPPED

    by_name = {experiment.name: experiment for experiment in investigate.EXPERIMENTS}
    assert investigate._conv_impl(by_name["baseline"]) == SHIPPED
    assert investigate._conv_impl(by_name["stock-conv"]).convolve is investigate._stock_convolution
    assert investigate._conv_impl(by_name["conv1_1-convolution"]).convolve.keywords == {"few_channels": 0}
    assert investigate._conv_impl(by_name["hoisted-kernels"]).rotate is investigate._rotate_behind_barrier
    assert investigate._compiler_options(by_name["baseline"]) is None
    if jax.default_backend() == "cpu":
        assert investigate._compiler_options(by_name["ynn-default"]) == {}


def test_investigate_paired_times_variants_in_one_process(tmp_path, monkeypatch, capsys):
    """`python -m bench.investigate --paired` at 32 px: one row per variant."""
    import bench.investigate as investigate

    monkeypatch.setattr(investigate, "RESULTS", tmp_path)
    assert investigate.main(["--paired", "--size", "32", "--rounds", "2",
                             "--only", "baseline,adjoint-in-loop,conv1_1-convolution"]) == 0
    table = capsys.readouterr().out
    for name in ("baseline", "adjoint-in-loop", "conv1_1-convolution"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert float(row.split("|")[3].split()[0]) > 0  # a median in ms
    written = json.loads((tmp_path / "investigate-32-baseline-adjoint-in-loop-conv1_1-convolution-paired.json").read_text())
    assert len(written["experiments"]["baseline"]["rounds"][0]["step_ms"]) > 0
    # Experiments that need a process of their own (XLA_FLAGS here) are refused, not run wrongly.
    with pytest.raises(SystemExit, match="onednn needs a process of its own"):
        investigate.main(["--paired", "--size", "32", "--only", "baseline,onednn"])


def test_remat_bench_measures_every_choice(capsys):
    from bench import remat
    assert remat.main(["--sizes", "32", "--rounds", "1", "--chunk-steps", "1", "--chunks", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 32 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["none", "blocks", "tiles"]
    for row in rows[1:]:
        ratio = float(row.split("|")[6])  # temporaries ÷ none's
        assert 0 < ratio < 1, row


def test_largest_bench_stops_at_the_first_size_that_does_not_run(tmp_path, capsys, monkeypatch):
    from bench import largest
    real_build = largest.build_problem

    def build_problem(size, *args, **kwargs):
        if size > 40:  # what an allocator says when a size does not fit
            raise MemoryError(f"RESOURCE_EXHAUSTED: out of memory allocating {size}")
        return real_build(size, *args, **kwargs)

    monkeypatch.setattr(largest, "build_problem", build_problem)
    assert largest.main(["--sizes", "48,32,64", "--steps", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "largest.json").read_text())["rows"]
    assert [row["size"] for row in rows] == [32, 48]  # smallest first; 64 never tried
    assert rows[0]["step_s"] > 0 and "RESOURCE_EXHAUSTED" in rows[1]["error"]
    printed = capsys.readouterr().out
    assert "| 32 |" in printed and "| 48 | | does not run: MemoryError" in printed

    def broken(size, *args, **kwargs):
        raise ValueError("a bug, not a memory limit")

    monkeypatch.setattr(largest, "build_problem", broken)
    with pytest.raises(ValueError, match="a bug"):
        largest.main(["--sizes", "32", "--steps", "1"])


def test_lbfgs_bench_times_both_forms_with_a_full_history(tmp_path, capsys):
    out = tmp_path / "lbfgs.json"
    assert main(["lbfgs", "--sizes", "16,24", "--memory", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["form"], row["size"]) for row in rows] == [("two-loop", 16), ("compact", 16),
                                                            ("two-loop", 24), ("compact", 24)]
    printed = capsys.readouterr().out
    for size in (16, 24):
        two_loop, compact = (row["update_ms"] for row in rows if row["size"] == size)
        ratios = [row["temporaries_per_history"] for row in rows if row["size"] == size]
        assert (f"| {size} | {two_loop:.3f} | {compact:.3f} | {compact / two_loop:.2f} "
                f"| {ratios[0]:.2f}, {ratios[1]:.2f} |") in printed  # XLA's temporaries per form
    assert main(["lbfgs", "--sizes", "16", "--memory", "4", "--storage-dtype", "bfloat16", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["form"], row["storage"]) for row in rows] == [("two-loop", "bfloat16"), ("compact", "bfloat16")]


def test_lbfgs_bench_full_state_is_one_the_forms_agree_on():
    """The bench's full history is a consistent state: from it both forms keep the next pair
    (the incremental SᵀY and YᵀY update runs) and give the same update to float32 rounding, so
    the timed work is the real work."""
    from bench.lbfgs import _gradient, full_state
    from nst_jax.engine.lbfgs import fixed_step_lbfgs

    x = jax.random.normal(jax.random.PRNGKey(3), (8, 8, 3))
    updates = []
    for form in ("two-loop", "compact"):
        optimizer = fixed_step_lbfgs(memory_size=5, form=form)
        state = full_state(optimizer.init(x), x, 5)
        # The gradient one stored step further on: y·s > 0, so the pair is kept.
        update, after = optimizer.update(_gradient(x + state.previous_step), state, x)
        assert int(after.newest) == 0 and int(after.kept) == 5  # slot 0, the oldest, replaced
        updates.append(np.asarray(update))
    np.testing.assert_allclose(updates[1], updates[0], rtol=1e-4, atol=1e-6)


def test_preview_bench_reports_its_rounds_cpu_and_latency():
    """bench/preview.py's table from a run's results, and the CPU it reads from /proc."""
    from bench import preview

    results = {"size": 256, "steps": 50, "rounds": 2, "ratio": 1.006,
               "steps_seconds": {"off": [20.0, 22.0], "on": [20.5, 21.8]},
               "cpu_mean": {"off": {"chromium": 0.02, "python": 0.65, "xla": 45.0},
                            "on": {"chromium": 0.40, "python": 0.68, "xla": 45.2}}, "cpu_share": 0.009,
               "latency_s": {"median": 0.2, "max": 0.216, "visits": 10},
               "commands": {"plain": {"wall_s": 29.6, "programs": 7, "compile_s": 4.5}}}
    table = preview.markdown(results, "a CPU")
    assert "| with the page open | 21.15 | 20.50, 21.80 | 1.006 |" in table
    assert "Chromium 0.02 → 0.40" in table and "0.9 % of the CPU" in table and "at most 216 ms" in table
    before = preview.cpu_seconds()
    sum(i * i for i in range(300_000))  # some CPU in this process's main thread
    after = preview.cpu_seconds()
    assert set(before) == {"chromium", "python", "xla"} and after["python"] >= before["python"]
