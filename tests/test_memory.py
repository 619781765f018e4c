"""The memory estimate: XLA's analysis of the compiled step, checked against sizes known by hand."""

import re

import pytest

from nst_jax.engine.devices import Layout
from nst_jax.engine.memory import LIMIT_ENV, estimate_memory, estimate_run, limit_from_env
from nst_jax.engine.stages import InputShapes
from nst_jax.config.presets import preset
from nst_jax.cli.run import main
from nst_jax.engine.timings import CompileCounter
from datafiles import IMAGES


CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))


def shapes(content, *styles):
    """InputShapes of a content and styles, each (height, width); one style like the content by default."""
    return InputShapes(content, tuple(styles) or (content,))


def test_estimate_covers_what_must_be_stored_and_grows_with_batch_and_area():
    settings = preset("neural-style").replace(optimizer="lbfgs", lbfgs_memory=7, **CHEAP)
    one = estimate_memory(settings, 32, 48)
    # L-BFGS keeps `memory` pairs (s, y) of image-sized float32 arrays: a lower bound by hand.
    assert one.arguments >= 2 * 7 * 32 * 48 * 3 * 4
    # relu1_1 alone, (32, 48, 64) float32, must be kept for the backward pass.
    assert one.temporaries >= 32 * 48 * 64 * 4
    four = estimate_memory(settings, 32, 48, batch_size=4)
    assert 3.0 < four.total / one.total < 4.5
    larger = estimate_memory(settings, 64, 96)
    assert 3.0 < larger.temporaries / one.temporaries < 4.5


def test_cli_estimate_prints_one_line_and_runs_nothing(tmp_path, capsys):
    images = IMAGES
    output = tmp_path / "out.png"
    status = main([str(images / "tubingen.jpg"), str(images / "starry_night.jpg"), "-o", str(output),
                   "--estimate-memory", "--image-size", "64", "--content-layers", "relu2_1",
                   "--style-layers", "relu1_1,relu2_1", "--sweep-seed", "0,1", "--devices", "1"])
    printed = capsys.readouterr().out.strip()
    assert status == 0
    assert printed.startswith("64x48 px, 2 image(s) on 1 device(s)") and "GiB" in printed
    assert not output.exists() and list(tmp_path.iterdir()) == []


# --- the fit check: an analytic estimate of the whole run, before anything compiles ------------

def test_analytic_estimate_covers_xlas_analysis_of_the_loop():
    for optimizer in ("adam", "lbfgs"):
        settings = preset("neural-style").replace(optimizer=optimizer, lbfgs_memory=7, **CHEAP)
        xla = estimate_memory(settings, 32, 48)
        ours = estimate_run(settings.replace(image_size=48), shapes((32, 48)))
        assert ours.params + ours.state + ours.loop >= xla.total, optimizer


def test_estimate_counts_the_style_passes_and_never_overflows():
    settings = preset("neural-style").replace(image_size=512)
    small, large = (estimate_run(settings.replace(style_scale=scale), shapes((600, 800), (900, 1200)))
                    for scale in (1.0, 4.0))
    assert large.targets > 5 * small.targets and large.total > small.total
    assert large.loop == small.loop
    huge = settings.replace(image_size=16384, style_scale=1.0)
    one, many = (estimate_run(huge, shapes((16384, 16384)), Layout(members))
                 for members in (1, 4096))
    assert isinstance(many.total, int) and many.total > 2**52  # Python ints: no wrap-around
    assert many.loop == 4096 * one.loop


def test_a_run_that_cannot_fit_is_refused_before_the_loop_compiles(tmp_path, capsys, monkeypatch,
                                                                   synthetic_params_path):
    settings = preset("neural-style").replace(optimizer="adam", image_size=32, **CHEAP)
    # Room for a 32 px run, not for the 64 px one asked for.
    fits = estimate_run(settings, shapes((480, 640), (1014, 1280))).total
    monkeypatch.setenv(LIMIT_ENV, str(fits + 1000))
    output = tmp_path / "out.png"
    with CompileCounter() as counter:
        status = main([str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg"), "-o", str(output),
                       "--weights", str(synthetic_params_path), "--image-size", "64", "--optimizer", "adam",
                       "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"])
    err = capsys.readouterr().err
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "needs about" in errors[0] and "GiB available" in errors[0], err
    suggested = int(re.search(r"--image-size (\d+)", errors[0]).group(1))
    assert 32 <= suggested < 64
    assert not any("chunk" in name for name in counter.programs), counter.programs
    assert list(tmp_path.iterdir()) == []


def test_cli_estimate_reports_the_whole_run(capsys, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, str(3 * 2**30))
    status = main([str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg"), "--estimate-memory",
                   "--image-size", "8000"])
    printed = capsys.readouterr().out.strip()
    assert status == 0 and "style passes" in printed and "3.00 GiB available" in printed
    total = float(re.search(r"about ([0-9.]+) GiB", printed).group(1))
    assert total > 100  # 8000 px of VGG-19 activations, no int32 overflow


@pytest.mark.parametrize("value, bytes_", [("8589934592", 2**33), ("8e9", 8 * 10**9), ("8G", 2**33),
                                            ("1.5GiB", 3 * 2**29), ("512m", 2**29), ("8e+9", 8 * 10**9),
                                            ("100B", 100)])
def test_the_memory_limit_variable_takes_bytes_exponents_and_binary_units(value, bytes_):
    assert limit_from_env(value) == bytes_


@pytest.mark.parametrize("value", ["abc", "-1", "0", "8X", "G", "1e", "8e400", "8b8", "8iB"])
def test_a_bad_memory_limit_variable_is_one_line_naming_it(value, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(LIMIT_ENV, value)
    status = main([str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg"), "--estimate-memory",
                   "--image-size", "64"])
    assert status == 2
    assert capsys.readouterr().err.strip() == (f"error: ${LIMIT_ENV}: expected a positive number of bytes "
                                               f"such as 8000000000, 8e9 or 8G, got {value!r}")


def test_print_size_targets_count_one_pass_at_a_time_split_like_the_loop():
    # Below SEPARATE_PASSES_FROM pixels the passes are one program (XLA overlaps them: every
    # image counts); from it on, one program per image, each split by rows like the loop.
    from nst_jax.engine.stages import SEPARATE_PASSES_FROM
    small = preset("neural-style").replace(image_size=1024)
    one, three = (estimate_run(small, shapes((1024, 1024), *[(1024, 1024)] * n)).targets for n in (1, 3))
    assert three > 1.9 * one
    side = int(SEPARATE_PASSES_FROM ** 0.5)
    large = preset("neural-style").replace(image_size=side)
    one, three = (estimate_run(large, shapes((side, side), *[(side, side)] * n)).targets for n in (1, 3))
    assert three == one
    split = estimate_run(large, shapes((side, side)), Layout(1, 4, "image")).targets
    assert split == one // 4


def test_a_cpu_run_keeps_a_margin_of_the_hosts_memory(monkeypatch):
    """XLA aborts the process when the host runs out, so the check compares with MemAvailable
    less 10 % (at least 1 GiB); $NST_JAX_MEMORY_LIMIT_BYTES is taken as it is."""
    import jax
    from nst_jax.engine import memory
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    cpu = jax.devices("cpu")[0]
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: 20 * 2**30)
    assert memory.available_bytes(cpu) == 18 * 2**30
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: 4 * 2**30)
    assert memory.available_bytes(cpu) == 3 * 2**30
    monkeypatch.setenv(LIMIT_ENV, str(5 * 2**30))
    assert memory.available_bytes(cpu) == 5 * 2**30


def test_near_the_limit_xlas_own_analysis_decides(monkeypatch):
    from nst_jax.engine.memory import measured_run
    from nst_jax.engine.plan import ANALYTIC_MARGIN, check_fits, plan_run
    from nst_jax.errors import UserInputError
    inputs = shapes((48, 64))
    # As the plan resolves it ("auto" choices: shape buckets, here on for a run this short).
    settings = plan_run(preset("neural-style").replace(optimizer="adam", image_size=64, **CHEAP), inputs).settings
    analytic, measured = estimate_run(settings, inputs).total, measured_run(settings, inputs).total
    assert measured < analytic <= ANALYTIC_MARGIN * measured
    # Between XLA's figure and the analytic count: the analytic one alone would refuse the run.
    monkeypatch.setenv(LIMIT_ENV, str((measured + analytic) // 2))
    assert check_fits(plan_run(settings, inputs)).total == measured
    monkeypatch.setenv(LIMIT_ENV, str(measured - 1))
    with pytest.raises(UserInputError, match="needs about [0-9.]+ GiB per device \\(XLA's analysis of the "
                                             "compiled loop: [0-9.]+ GiB\\)"):
        check_fits(plan_run(settings, inputs))
