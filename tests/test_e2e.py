"""The whole-command benchmark and what it relies on: the persistent compile cache, --report,
the PyTorch reference program computing our objective, and the prepared accelerator check.

References: the PyTorch program (bench/torch_reference.py, written with torch.nn only) must give
the same objective as nst-jax on the same start image; JAX's own cache-hit events show a repeat
run compiling nothing.
"""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import e2e
from datafiles import IMAGES, ROOT

CHEAP_FLAGS = ("--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return e2e.resized_pair(IMAGES, 48, tmp_path_factory.mktemp("pictures"))


def _cli(args, cache, report, stderr=None):
    """The --report of a CLI run in its own process (its stderr appended to the list `stderr`)."""
    env = {**os.environ, "NST_JAX_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run([sys.executable, "-m", "nst_jax.run", *map(str, args), "--report", str(report)],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    if stderr is not None:
        stderr.append(completed.stderr)
    return json.loads(Path(report).read_text())


def test_a_repeat_run_loads_every_program_from_the_compile_cache(pictures, synthetic_params_path, tmp_path):
    content, style = pictures
    args = (content, style, "--weights", synthetic_params_path, "-o", tmp_path / "out.png",
            "--image-size", 32, "--num-steps", 3, *CHEAP_FLAGS)
    first = _cli(args, tmp_path / "cache", tmp_path / "first.json")
    second = _cli(args, tmp_path / "cache", tmp_path / "second.json")
    assert "jit(chunk)" in first["compiled_programs"] and first["compile_cache_hits"] == 0
    assert second["compiled_programs"] == first["compiled_programs"]
    assert second["compile_cache_hits"] == len(second["compiled_programs"])  # nothing compiled anew
    assert (tmp_path / "cache" / "xla").is_dir()
    # The report says where the time went and what the loss was at each visit.
    assert set(second["phases"]) == {"images", "weights", "run", "write"}
    assert 0 < second["compile_seconds"] < second["phases"]["run"]
    assert [v["step"] for v in second["visits"]] == [3] and second["peak_rss_bytes"] > 0
    # The benchmark's tests fake reports (_report): only with fields a real one has.
    fake = _report([(1.0, 3, 5.0)])
    assert set(fake) <= set(second) and set(fake["phases"]) == set(second["phases"])
    assert set(fake["visits"][0]) <= set(second["visits"][0])
    # Opting out: nothing read or written.
    third = _cli((*args, "--no-compile-cache"), tmp_path / "other", tmp_path / "third.json")
    assert third["compile_cache_hits"] == 0 and not (tmp_path / "other" / "xla").exists()
    # Damaged entries (a disk error, a copy cut short): one short line, compiled again and replaced,
    # so the run after that loads every program again.
    for entry in (tmp_path / "cache" / "xla").glob("*-cache"):
        entry.write_bytes(b"not a compiled program")
    said = []
    damaged = _cli(args, tmp_path / "cache", tmp_path / "damaged.json", said)
    lines = [line for line in said[0].splitlines() if "compile cache" in line or "Warning" in line]
    assert lines == [f"warning: compile cache {tmp_path / 'cache' / 'xla'}: damaged entries are compiled again "
                     f"and replaced"], said[0]
    assert damaged["compile_cache_hits"] == 0
    repaired = _cli(args, tmp_path / "cache", tmp_path / "repaired.json")
    assert repaired["compile_cache_hits"] == len(repaired["compiled_programs"])


def test_the_pytorch_reference_computes_our_objective(pictures, tmp_path):
    """One evaluation each (the start image is the content): neural-style's loss, both ways."""
    from nst_jax.weights.convert import convert
    from weights_tools.synthetic import write_synthetic

    content, style = pictures
    pth, npz = tmp_path / "vgg19.pth", tmp_path / "vgg19.npz"
    write_synthetic("caffe-pth", pth, seed=3)
    convert(pth, npz, preprocessing="caffe")
    ours = _cli((content, style, "--weights", npz, "-o", tmp_path / "ours.png", "--image-size", 48,
                 "--num-steps", 1, *e2e.COMMON_FLAGS), tmp_path / "cache", tmp_path / "ours.json")
    completed = subprocess.run([sys.executable, "-m", "bench.torch_reference", str(content), str(style),
                                "--weights", str(pth), "-o", str(tmp_path / "theirs.png"),
                                "--num-iterations", "1", "--report", str(tmp_path / "theirs.json")],
                               capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    theirs = json.loads((tmp_path / "theirs.json").read_text())
    np.testing.assert_allclose(ours["visits"][0]["losses"], theirs["visits"][0]["losses"], rtol=1e-4)
    assert ours["visits"][0]["losses"][0] > 0
    # One iteration from the content: both images barely moved, and both were written.
    assert Image.open(tmp_path / "theirs.png").size == Image.open(tmp_path / "ours.png").size


def _report(visits, started_at=100.0):
    """A --report as the CLI writes it (test_a_repeat_run_... holds its fields to a real one's):
    visits are (seconds after main started, step, loss)."""
    return {"started_at": started_at, "main_seconds": 10.0, "compile_seconds": 2.0, "startup_seconds": 0.8,
            "phases": {"images": 0.1, "weights": 0.2, "run": 9.0, "write": 0.1},
            "visits": [{"seconds": t, "step": s, "losses": [loss]} for t, s, loss in visits]}


def _run(visits, started_at=100.0, launched_at=99.0):
    return e2e.ProcessRun(launched_at, 12.0, 100.0, 0, _report(visits, started_at), "")


def test_time_to_an_objective_is_interpolated_between_visits_from_launch():
    run = _run([(3.0, 10, 1000.0), (4.0, 20, 100.0), (5.0, 30, 10.0)])
    assert run.time_to_reach(1000.0) == pytest.approx(4.0)  # 3 s after main started + 1 s before it
    assert run.time_to_reach(100.0) == pytest.approx(5.0)
    assert run.time_to_reach(np.sqrt(1000.0 * 100.0)) == pytest.approx(4.5)  # halfway in log(loss)
    assert run.time_to_reach(1.0) is None
    assert run.seconds_per_step() == pytest.approx(0.1)
    assert run.first_step_at(10) == pytest.approx(3.0)
    breakdown = run.breakdown()
    assert breakdown["compile"] == 2.0 and breakdown["steps"] == pytest.approx(7.0)
    assert breakdown["exit_other"] == pytest.approx(12.0 - 0.8 - 10.0)


def test_plans_give_the_batch_comparison_two_visits():
    """Per-step times come from the progress visits (every PROGRESS_STEPS steps): a batch run
    with one visit had none, and `bench e2e --quick` failed at its end."""
    assert e2e.quick_plan().batch_iterations >= 2 * e2e.PROGRESS_STEPS
    with pytest.raises(ValueError, match="batch_iterations"):
        e2e.Plan(batch_iterations=e2e.PROGRESS_STEPS)
    run = _run([(3.0, 10, 5.0)])
    assert run.seconds_per_step() is None  # why: one visit gives no per-step time


def test_a_run_cut_during_an_extra_dtype_keeps_the_comparisons_done(tmp_path, monkeypatch):
    """e2e records each comparison before its extra-dtype run, so a time limit that cuts that
    run (here: it raises) leaves e2e.json and the named markdown file with the comparison; the
    repo's BENCHMARKS.md is only rewritten by a finished run. The processes are faked: each
    returns a --report whose one visit is its last step, so e2e's own code builds the comparison."""
    images = {64: e2e.resized_pair(IMAGES, 64, tmp_path) + e2e.resized_pair(IMAGES, 64, tmp_path, (e2e.NEW_PHOTO,))}

    def fake_run_process(command, env, report_path):
        flag = "--num-steps" if "--num-steps" in command else "--num-iterations"
        steps = int(command[command.index(flag) + 1])
        return e2e.ProcessRun(99.0, 2.0, 1.0, 0, _report([(1.0, steps, 5.0)]), "")

    def cut(*args):
        raise KeyboardInterrupt("the time limit")

    monkeypatch.setattr(e2e, "_prepare", lambda folder, sizes, source: (None, None, images))
    monkeypatch.setattr(e2e, "run_process", fake_run_process)
    monkeypatch.setattr(e2e, "extra_dtype_run", cut)
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.read_text()
    markdown = tmp_path / "device.md"
    with pytest.raises(KeyboardInterrupt):
        e2e.main(["--sizes", "64:20", "--adam-sizes", "none", "--no-batch", "--no-second-call",
                  "--extra-dtypes", "bfloat16", "--out", str(tmp_path), "--markdown", str(markdown)])
    (comparison,) = json.loads((tmp_path / "e2e.json").read_text())["comparisons"]
    assert comparison["size"] == 64 and comparison["dtypes"] == {}
    assert "| 64 | lbfgs | 20 |" in markdown.read_text()
    with pytest.raises(KeyboardInterrupt):  # no --markdown: BENCHMARKS.md is the default target
        e2e.main(["--sizes", "64:20", "--adam-sizes", "none", "--no-batch", "--extra-dtypes", "bfloat16",
                  "--out", str(tmp_path / "default")])
    assert json.loads((tmp_path / "default" / "e2e.json").read_text())["comparisons"]
    assert benchmarks.read_text() == before


def test_the_device_check_runs_dry_on_the_cpu(tmp_path):
    files = tmp_path / "files"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE_CHECK_FILES": str(files), "PYTHON": sys.executable,
           "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--dry-run"],
                               capture_output=True, text=True, env=env, timeout=900)
    log = (files / "device_check.log").read_text()
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "tests: exit 0" in log and "end to end 64: exit 0" in log and "step: exit 0" in log, log
    assert "XLA_FLAGS=--xla_cpu_enable_fast_math=false" in log and "ms/step, objective" in log, log
    # What the device tool brings back: at most 8 files, the archive holding the rest.
    brought = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert "device_check.tgz" in brought and "e2e-device-64.md" in brought and len(brought) <= 8, brought
    with tarfile.open(tmp_path / "out" / "device_check.tgz") as archive:
        assert {"./e2e-64/e2e.json", "./largest.json", "./full.json", "./tests.log", "./lbfgs.json"} <= set(archive.getnames())
    assert "lbfgs: exit 0" in log and "| 32 |" in (files / "lbfgs.md").read_text()
    results = json.loads((files / "e2e-64" / "e2e.json").read_text())
    assert (files / "e2e-64" / "nst_jax_cold_64_lbfgs.json").is_file()  # each run's --report kept
    (comparison,) = results["comparisons"]
    assert comparison["size"] == 64 and "bfloat16" in comparison["dtypes"]
    assert set(comparison["runs"]) == {"nst_jax_cold", "pytorch_1", "nst_jax_warm", "pytorch_2",
                                       "nst_jax_new_photo", "pytorch_new_photo", "nst_jax_warm_bfloat16"}
    assert comparison["new_photo"]["over_warm"] > 0 and "A new photo after the warm run" in (
        files / "e2e-device-64.md").read_text()
    assert "| 64 | lbfgs | 20 |" in (files / "e2e-device-64.md").read_text()
    assert "largest: exit 0" in log, log
    largest = json.loads((files / "largest.json").read_text())
    assert [row["size"] for row in largest["rows"]] == [32] and largest["remat"] == "tiles"
    assert all(row["step_s"] > 0 and row["xla"]["temp_size_in_bytes"] > 0 for row in largest["rows"])
