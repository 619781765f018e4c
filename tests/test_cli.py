"""`python -m nst_jax.run`: flags onto Settings, one-line errors, real runs on odd files, Ctrl-C.

References: the presets' own Settings (the flags must reproduce them exactly), Pillow 13 (makes
the unusual input files, reads what the CLI wrote, and rotates/resizes the EXIF reference), and
plain arithmetic for the expected output sizes. Real runs are few (six, two of them as
subprocesses) and tiny: 32 px, Adam, VGG truncated after block 2, synthetic weights.
"""

import contextlib
import dataclasses
import io
import math
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax.engine import stylize as engine
from nst_jax.imaging import images
from nst_jax.cli import files, interrupt, run
from nst_jax.weights import fetch
from nst_jax.cli.watch import LossWatch
from nst_jax.errors import UserInputError
from nst_jax.config.presets import DEFAULT_PRESET, PRESETS, preset
from nst_jax.config.settings import FIELDS, RANGES
from weights_tools.synthetic import write_synthetic
from datafiles import IMAGES

CONTENT = IMAGES / "tubingen.jpg"
STYLE = IMAGES / "starry_night.jpg"

IMAGE_SIZE = 32
# Cheap where the test is not about the network: block 2 is the deepest layer, Adam's step is
# one forward and backward pass (L-BFGS adds line-search evaluations).
CHEAP_FLAGS = ("--image-size", str(IMAGE_SIZE), "--content-layers", "relu2_1",
               "--style-layers", "relu1_1,relu2_1", "--optimizer", "adam")

# Bounded waits for the Ctrl-C subprocess (compiling on a busy 2-core machine takes a while).
FIRST_PROGRESS_TIMEOUT_S = 180
EXIT_AFTER_SIGINT_TIMEOUT_S = 60


def _settings(*flags):
    """The Settings the CLI would build for `flags` (no compute)."""
    return run.settings_from_args(run.build_parser().parse_args(["content.jpg", "style.jpg", *flags]))


def _main(argv):
    """(exit status, stderr) of nst_jax.cli.run.main(argv) in this process; argparse's exits included."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = run.main([str(arg) for arg in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, stderr.getvalue()


def _files_under(folder):
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*") if path.is_file())


def _crop(source, width, height):
    """A width×height RGB crop from the middle of a test image."""
    with Image.open(source) as image:
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return image.convert("RGB").crop((left, top, left + width, top + height))


def _expected_size(width, height):
    """(width, height) of the output: long side IMAGE_SIZE, aspect ratio kept (no .5 ties here)."""
    scale = IMAGE_SIZE / max(width, height)
    return round(width * scale), round(height * scale)


def _png_description(path):
    return images.read_png_metadata(path)


# Any conversion (and compiled program) a test makes goes to a fresh folder beside tmp_path,
# never to the user's cache, and never among the files a test counts.
pytestmark = pytest.mark.usefixtures("empty_cache")


# --- flags, presets, overrides (no compute) ---------------------------------------------------

@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_name_gives_that_presets_settings(name):
    assert _settings("--preset", name) == PRESETS[name]()


def test_no_preset_flag_gives_the_default_preset():
    assert _settings() == preset(DEFAULT_PRESET)


def test_flags_override_the_preset_and_keep_the_rest():
    settings = _settings("--preset", "gatys", "--num-steps", "7", "--pooling", "max",
                         "--content-weight", "2.5", "--tv-loss", "l1", "--seed", "3")
    assert settings == PRESETS["gatys"]().replace(num_steps=7, pooling="max", content_weight=2.5,
                                                  tv_loss="l1", seed=3)
    assert type(settings.optimizer.num_steps) is int and type(settings.loss.content_weight) is float


def test_list_flags_parse_into_tuples():
    settings = _settings("--style-layers", "relu1_1,relu2_1", "--content-layers", " relu3_1 , block4_conv2 ",
                         "--style-blend-weights", "0.25,0.75")
    assert settings.loss.style_layers == ("relu1_1", "relu2_1")
    assert settings.loss.content_layers == ("relu3_1", "block4_conv2")  # Keras names are accepted
    assert settings.image.style_blend_weights == (0.25, 0.75)


def test_new_layers_without_weights_drop_the_presets_layer_weights():
    assert PRESETS["gatys"]().loss.style_layer_weights == (0.2,) * 5  # what the reset must undo
    reset = _settings("--preset", "gatys", "--style-layers", "relu1_1,relu2_1")
    assert reset.loss.style_layers == ("relu1_1", "relu2_1")
    assert reset.loss.style_layer_weights is None
    given = _settings("--preset", "gatys", "--style-layers", "relu1_1,relu2_1",
                      "--style-layer-weights", "3,1")
    assert given.loss.style_layer_weights == (3.0, 1.0)
    content_given = _settings("--content-layers", "relu3_1,relu4_1", "--content-layer-weights", "1,2")
    assert content_given.loss.content_layer_weights == (1.0, 2.0)


def test_init_image_flag_implies_init_image():
    assert preset(DEFAULT_PRESET).image.init != "image"
    settings = _settings("--init-image", "start.png")
    assert (settings.image.init, settings.image.init_image) == ("image", "start.png")


def test_help_exits_0_and_names_every_preset_and_setting(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for name in PRESETS:
        assert name in help_text
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in help_text


# --- bad input: one line, status 2, nothing written, nothing compiled ---------------------------

def _truncated_jpeg(folder):
    data = CONTENT.read_bytes()
    path = folder / "cut.jpg"
    path.write_bytes(data[:len(data) // 2])
    return path


def _text_named_jpg(folder):
    path = folder / "notes.jpg"
    path.write_text("not a picture\n")
    return path


def _random_bytes_bmp(folder):
    path = folder / "noise.bmp"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, np.uint8).tobytes())
    return path


def _svg(folder):
    path = folder / "drawing.svg"
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                    '<rect width="64" height="64" fill="red"/></svg>\n')
    return path


def _one_pixel_png(folder):
    path = folder / "dot.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    return path


def _strip(folder):
    """800 × 20 px: a valid file that --image-size 32 makes 32 × 1, under relu2_1's 2 px a side."""
    path = folder / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 800, 3), np.uint8)).save(path)
    return path


def _copy_of_content(folder):
    path = folder / "photo.jpg"
    path.write_bytes(CONTENT.read_bytes())
    return path


def _inside_regular_file(folder):
    """An output path whose folder is a regular file (permissions can't block root, this can)."""
    (folder / "somefile.txt").write_text("not a folder\n")
    return folder / "somefile.txt" / "out.png"


def _text_as_weights(folder):
    path = folder / "vgg19.h5"  # named like Keras weights, so the converter really looks at it
    path.write_text("these are not weights\n")
    return path


def _foreign_npz(folder):
    path = folder / "other.npz"
    np.savez(path, kernel=np.ones((3, 3), np.float32))
    return path


# Each case: folder -> {"content", "style", "output", "flags" overrides; "named": what the error
# line must name; "loads_weights": whether the failure is in the weights (so they get loaded)}.
BAD_INPUTS = {
    "missing content": lambda d: {"content": d / "missing.jpg", "named": "missing.jpg"},
    "truncated jpeg style": lambda d: {"style": _truncated_jpeg(d), "named": "cut.jpg"},
    "text file named .jpg": lambda d: {"content": _text_named_jpg(d), "named": "notes.jpg"},
    "random bytes named .bmp": lambda d: {"style": _random_bytes_bmp(d), "named": "noise.bmp"},
    "svg": lambda d: {"content": _svg(d), "named": "drawing.svg"},
    "1x1 image": lambda d: {"content": _one_pixel_png(d), "named": "dot.png"},
    "content the network shrinks to nothing": lambda d: {"content": _strip(d), "named": "strip.png: 32x1 px"},
    "style the network shrinks to nothing": lambda d: {"flags": ["--style-layers", "relu5_1", "--style-scale", "0.5"],
                                                       "named": f"{STYLE.name}: 16x10 px as a style"},
    "output inside a regular file": lambda d: {"output": _inside_regular_file(d),
                                               "named": "somefile.txt"},
    "output folder missing": lambda d: {"output": d / "no-such-folder" / "out.png",
                                        "named": "no-such-folder"},
    "output is a folder": lambda d: {"output": d, "named": str(d)},
    "output over the content": lambda d: {"content": _copy_of_content(d), "output": d / "photo.jpg",
                                          "named": "-o " + str(d / "photo.jpg") + ": is an input"},
    "report over the output": lambda d: {"output": d / "same.png", "flags": ["--report", d / "same.png"],
                                         "named": "--report " + str(d / "same.png") + ": is also the -o output"},
    "empty weights path": lambda d: {"weights": "", "named": "--weights: an empty path"},
    "a folder as weights": lambda d: {"weights": d, "named": "is a directory, not a weights file",
                                      "loads_weights": True},
    "unsupported output extension": lambda d: {"output": d / "out" / "result.gif",
                                               "named": "result.gif"},
    "text file as weights": lambda d: {"weights": _text_as_weights(d), "named": "vgg19.h5",
                                       "loads_weights": True},
    "npz that is not ours": lambda d: {"weights": _foreign_npz(d), "named": "other.npz",
                                       "loads_weights": True},
    "missing init image": lambda d: {"flags": ["--init-image", d / "start.png"], "named": "start.png"},
    "negative num steps": lambda d: {"flags": ["--num-steps", "-3"], "named": "--num-steps"},
    "unknown content layer": lambda d: {"flags": ["--content-layers", "relu9_9"],
                                        "named": "--content-layers"},
    "blend weights count": lambda d: {"flags": ["--style-blend-weights", "1,2,3"],
                                      "named": "--style-blend-weights"},
    "layer weights count": lambda d: {"flags": ["--style-layers", "relu1_1", "--style-layer-weights", "1,2"],
                                      "named": "--style-layer-weights"},
    "non-numeric list": lambda d: {"flags": ["--style-blend-weights", "1,x"],
                                   "named": "--style-blend-weights"},
}


@pytest.fixture
def weight_loads(monkeypatch):
    """Records weight loads, and fails the test if a bad input got as far as stylizing."""
    loads = []
    real_load = run.load_weights

    def load_weights(*arguments):
        loads.append(arguments)
        return real_load(*arguments)

    def stylize_must_not_run(*args, **kwargs):
        raise AssertionError("bad input reached the optimization")

    monkeypatch.setattr(run, "load_weights", load_weights)
    monkeypatch.setattr(files, "run_plan", stylize_must_not_run)
    return loads


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_with_status_2_and_no_file(case, tmp_path, synthetic_params_path,
                                                               weight_loads):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (tmp_path / "out").mkdir()
    spec = {"content": CONTENT, "style": STYLE, "output": tmp_path / "out" / "result.png",
            "weights": synthetic_params_path, "flags": [], "loads_weights": False,
            **BAD_INPUTS[case](inputs)}
    before = _files_under(tmp_path)

    status, stderr = _main([spec["content"], spec["style"], "-o", spec["output"],
                            "--weights", spec["weights"], *CHEAP_FLAGS, "--num-steps", "2",
                            *spec["flags"]])

    assert status == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and spec["named"] in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert _files_under(tmp_path) == before  # no output, no temporary, no cache entry
    # Images, the output path and flags are all checked before any weights are read.
    assert bool(weight_loads) == spec["loads_weights"]


@pytest.mark.parametrize("flags, flag", [
    (["--optimizer", "foo"], "--optimizer"),
    (["--num-steps", "many"], "--num-steps"),
    (["--preset", "picasso"], "--preset"),
])
def test_argparse_rejects_bad_values_with_status_2(flags, flag, tmp_path, weight_loads):
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "out.png", *flags])
    assert status == 2
    assert flag in stderr and "Traceback" not in stderr
    assert weight_loads == [] and _files_under(tmp_path) == []


def test_error_from_the_command_line_has_no_traceback(tmp_path, synthetic_params_path):
    # Once as a real process: what a user sees, including anything printed while importing.
    broken = _truncated_jpeg(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "nst_jax.run", str(broken), str(STYLE), "-o", str(tmp_path / "out.png"),
         "--weights", str(synthetic_params_path), *CHEAP_FLAGS],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [completed.stderr.strip()], completed.stderr
    assert completed.stderr.startswith(f"error: {broken}")
    assert not (tmp_path / "out.png").exists()


def test_a_cluster_that_cannot_be_joined_is_one_line(tmp_path, synthetic_params_path):
    """--distributed with no cluster in the environment: jax.distributed's own error, as one line
    naming the flag (a process of its own: joining changes JAX's global state)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "nst_jax.run", str(CONTENT), str(STYLE), "-o", str(tmp_path / "out.png"),
         "--weights", str(synthetic_params_path), *CHEAP_FLAGS, "--distributed"],
        capture_output=True, text=True, timeout=120, env={**env, "JAX_PLATFORMS": "cpu"})
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.splitlines() == [completed.stderr.strip()], completed.stderr
    assert completed.stderr.startswith("error: --distributed: cannot join the cluster")
    assert not (tmp_path / "out.png").exists()


# --- flag values: one line naming the flag, decided before any file is read ---------------------

# (flags, the flag the line must name, what it must say). Each is refused by parse_and_validate.
FLAG_EDGES = [
    (["--style-blend-weights", "0,0"], "--style-blend-weights", "must have a positive sum"),
    (["--style-blend-weights", "-1,2"], "--style-blend-weights", "must be >= 0"),  # no '=' needed
    (["--learning-rate", "nan"], "--learning-rate", "must be a finite number"),
    (["--style-weight", "inf"], "--style-weight", "must be a finite number"),
    (["--content-weight", "-inf"], "--content-weight", "must be a finite number"),
    (["--tv-weight", "-1e-3"], "--tv-weight", "must be >= 0"),
    (["--learning-rate", "0"], "--learning-rate", "must be > 0"),
    (["--adam-b1", "1"], "--adam-b1", "must be in [0, 1)"),
    (["--adam-b2", "-0.5"], "--adam-b2", "must be in [0, 1)"),
    (["--adam-eps", "0"], "--adam-eps", "must be > 0"),
    (["--sgd-momentum", "1"], "--sgd-momentum", "must be in [0, 1)"),
    (["--lr-decay-rate", "0"], "--lr-decay-rate", "must be in (0, 1]"),
    (["--lr-decay-rate", "1.5"], "--lr-decay-rate", "must be in (0, 1]"),
    (["--content-weight", "0", "--style-weight", "0", "--tv-weight", "0"],
     "--content-weight, --style-weight, --tv-weight", "nothing to optimize"),
    (["--devices", "0"], "--devices", "must be in [1, "),
    (["--devices=-1"], "--devices", "must be in [1, "),
    (["--num-processes", "0"], "--num-processes", "must be in [1, "),
    (["--num-processes", "2", "--process-id", "2"], "--process-id", "must be below --num-processes 2"),
    (["--process-id", "-1"], "--process-id", "must be in [0, "),
    (["--coordinator", "foo"], "--coordinator", "expected HOST:PORT"),
    (["--style-layers", " "], "--style-layers", "at least one layer is needed"),
    (["--style-layers", ","], "--style-layers", "has an empty item"),
    (["--content-layers", "relu4_2,"], "--content-layers", "has an empty item"),
    (["--style-blend-weights", "1,,2"], "--style-blend-weights", "has an empty item"),
    (["--style-layers", "relu1_1, relu2_1,relu1_1"], "--style-layers", "relu1_1 is listed twice"),
    (["--batch", "--style-blend-weights", "1,3"], "--style-blend-weights", "does not apply with --batch"),
    (["--num-processes", "2"], "--num-processes", "only for a multi-host run"),
    (["--init-noise-std", "-0.1"], "--init-noise-std", "must be >= 0"),
    (["--image-size", "16385"], "--image-size", "must be in [16, 16384]"),
    (["--style-scale", "64"], "--style-scale", "must be in (0, 16]"),
    (["--image-size", "4096", "--style-scale", "8"], "--style-scale", "more than 16384 px"),
    (["--scales", "11"], "--scales", "must be in [1, 10]"),
    (["--num-steps", "0"], "--num-steps", "must be in [1, 100000000]"),
    (["--num-steps", str(2**31)], "--num-steps", "must be in [1, 100000000]"),
    (["--lbfgs-memory", "0"], "--lbfgs-memory", "must be in [1, 1000]"),
    (["--seed", "-1"], "--seed", "must be in [0, 4294967295]"),
    (["--style-layer-weights", "1,-2,1,1,1"], "--style-layer-weights", "must be >= 0"),
    (["--sweep-style-weight", "1,nan"], "--sweep-style-weight", "must be a finite number"),
    (["--sweep-content-weight", "-1"], "--sweep-content-weight", "must be >= 0"),
    (["--sweep-seed", "4294967296"], "--sweep-seed", "must be in [0, 4294967295]"),
    (["--sweep-seed", "1,1"], "--sweep-seed", "1 is listed twice"),
    (["--sweep-style-weight", "100,100.0001"], "--sweep-style-weight", "100.0 and 100.0001 would both be named 100"),
    (["--sweep-seed", ""], "--sweep-seed", "no values"),
    (["--sweep-seed", "1.5"], "--sweep-seed", "not a comma-separated list of integers"),
    (["--tv-weight", "0", "--style-weight", "0", "--sweep-content-weight", "1,0"],
     "--sweep-content-weight", "nothing to optimize"),
    (["--init-image", "start.png", "--init", "noise"], "--init-image", "conflicts with --init noise"),
    (["--remat", "tiles", "--normalize-gradients"], "--remat tiles", "use --remat blocks"),
    (["--num-step", "3"], "--num-step", "unknown flag (did you mean --num-steps?)"),  # no abbreviations
    (["--bogus"], "--bogus", "unknown flag"),
    (["--preprocessing", "bgr"], "--preprocessing", "invalid choice"),
    (["--output"], "-o/--output", "expected one argument"),
]


@pytest.mark.parametrize("flags, flag, says", FLAG_EDGES, ids=[" ".join(case[0]) for case in FLAG_EDGES])
def test_bad_flag_value_is_one_line_naming_the_flag(flags, flag, says, tmp_path, weight_loads):
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "out.png", *flags])
    assert status == 2
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: {flag}: "), stderr
    assert says in stderr
    assert weight_loads == [] and _files_under(tmp_path) == []


def test_bad_flag_from_the_command_line_is_one_line(tmp_path):
    # As a real process: nothing else on stderr (no usage dump, no import chatter), nothing written.
    completed = subprocess.run(
        [sys.executable, "-m", "nst_jax.run", str(CONTENT), str(STYLE), str(STYLE), "-o",
         str(tmp_path / "out.png"), "--style-blend-weights", "-1,2"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == "error: --style-blend-weights: must be >= 0, got -1.0\n"
    assert _files_under(tmp_path) == []


def test_missing_style_is_one_line_with_the_usage(tmp_path):
    status, stderr = _main([CONTENT])
    assert status == 2
    assert stderr.startswith("error: style: missing; usage: python -m nst_jax.run CONTENT STYLE")
    assert stderr.count("\n") == 1


def test_edge_values_in_range_are_accepted():
    _, settings, sweeps = run.parse_and_validate(
        [CONTENT, STYLE, STYLE, "--adam-b1", "0", "--lr-decay-rate", "1", "--init-noise-std", "0",
         "--image-size", "16384", "--seed", "4294967295", "--style-blend-weights", "0,1",
         "--learning-rate", "1e-30", "--sweep-seed", "0,4294967295", "--content-weight", "0",
         "--sweep-style-weight", "0,1e30"])
    assert (settings.optimizer.adam_b1, settings.optimizer.lr_decay_rate,
            settings.image.image_size) == (0.0, 1.0, 16384)
    assert settings.image.seed == 2**32 - 1 and settings.image.style_blend_weights == (0.0, 1.0)
    assert sweeps == {"seed": (0, 2**32 - 1), "style_weight": (0.0, 1e30)}


@pytest.mark.parametrize("changes, flag", [
    (dict(adam_b1=1.0), "--adam-b1"), (dict(learning_rate=float("nan")), "--learning-rate"),
    (dict(num_steps=2.5), "--num-steps"), (dict(style_blend_weights=(0.0,)), "--style-blend-weights"),
    (dict(init_image="start.png"), "--init-image")])
def test_python_api_is_checked_the_same_way(changes, flag):
    with pytest.raises(UserInputError) as raised:
        preset(DEFAULT_PRESET).replace(**changes)
    assert str(raised.value).startswith(f"{flag}: ")


def test_help_shows_each_range():
    parser = run.build_parser()
    helps = {action.option_strings[-1]: action.help for action in parser._actions if action.option_strings}
    for name, allowed in [*RANGES.items(), *run.CLI_RANGES.items()]:
        assert str(allowed) in helps["--" + name.replace("_", "-")], name
    assert f"each {RANGES['seed']}" in helps["--sweep-seed"]
    assert "--preprocessing {caffe,torch}" in parser.format_help()


def _numeric_flags():
    """{flag: (int or float, is_list)} for every flag the parser reads as numbers: from the parser itself."""
    return {action.option_strings[-1]: (action.type.kind, action.type.is_list)
            for action in run.build_parser()._actions
            if action.option_strings and getattr(action.type, "kind", None) in (int, float)}


def _range_of(flag):
    name = flag[2:].replace("-", "_").removeprefix("sweep_")
    return RANGES.get(name) or run.CLI_RANGES[name]


def _values_to_try(flag, kind, is_list, rng):
    """One value per class: special floats, 0, negative, tiny, huge, in range, and not numbers."""
    allowed = _range_of(flag)
    low = max(allowed.low, -1e6)
    high = min(allowed.high, low + 100)
    if kind is int:
        normal = str(int(rng.integers(math.ceil(low) + allowed.low_open, math.floor(high) + 1 - allowed.high_open)))
        negative, tiny, huge = str(-int(rng.integers(1, 10**6))), "1", str(10**30)
    else:
        normal = repr(float(rng.uniform(low, high)))
        negative = f"{-10 ** rng.uniform(-3, 3):.6g}"
        tiny, huge = f"{10 ** rng.uniform(-30, -20):.3g}", "1e30"
    values = ["nan", "inf", "-inf", "0", negative, tiny, huge, normal, "abc", "1,2", "", "0x10", "1e",
              "+inf", "-nan", "1e400", "-0", "9" * 5000]
    if is_list:
        values += [f"{normal},{normal}", f"{normal},nan", f"{negative},{normal}", f"{normal},,{huge}"]
    return values


@pytest.fixture
def no_compute(monkeypatch):
    """stylize_files replaced by a recorder: main runs up to the computation and no further."""
    calls = []

    def stylize_files(content, styles, output, settings, load_weights, batch=None, checkpoint=None, timings=None,
                      preview=None):
        calls.append(settings)
        return [(output, types.SimpleNamespace(interrupted=False))]

    monkeypatch.setattr(run, "stylize_files", stylize_files)
    return calls


def test_every_numeric_flag_gives_settings_or_one_line_naming_it(no_compute):
    """Property over the parser's numeric flags × value classes (seeded numpy RNG, 3 draws each):
    exit 0 having reached the computation, or exit 2 with one line `error: --that-flag: ...`."""
    flags = _numeric_flags()
    assert {"--num-steps", "--learning-rate", "--devices", "--sweep-seed", "--style-blend-weights"} <= set(flags)
    rng = np.random.default_rng(10)
    outcomes = {0: 0, 2: 0}
    for flag, (kind, is_list) in sorted(flags.items()):
        for _ in range(3):
            for value in _values_to_try(flag, kind, is_list, rng):
                calls_before = len(no_compute)
                status, stderr = _main([CONTENT, STYLE, flag, value])
                case = f"{flag} {value!r}: status {status}, stderr {stderr!r}"
                assert status in (0, 2), case
                if status == 0:
                    assert stderr == "" and len(no_compute) == calls_before + 1, case
                else:
                    assert stderr.count("\n") == 1 and stderr.startswith(f"error: {flag}: "), case
                    assert len(no_compute) == calls_before, case
                outcomes[status] += 1
    assert min(outcomes.values()) > 100, outcomes  # both outcomes well exercised


# --- unusual valid input, and what a run writes -------------------------------------------------

@dataclasses.dataclass
class RunRecord:
    status: int
    stderr: str
    content: Path
    output: Path
    content_size: tuple  # (width, height) as displayed, i.e. after EXIF orientation
    num_steps: int


def _run(folder, content, style, output_name, content_size, num_steps, *flags, weights):
    output = folder / "out" / output_name
    output.parent.mkdir()
    status, stderr = _main([content, style, "-o", output, "--weights", weights, *CHEAP_FLAGS,
                            "--num-steps", str(num_steps), *flags])
    return RunRecord(status, stderr, Path(content), output, content_size, num_steps)


@pytest.fixture(scope="module")
def gray_content_rgba_style(tmp_path_factory, synthetic_params_path):
    """8-bit grayscale JPEG content, RGBA PNG style with a transparency gradient; PNG output,
    a progress line every step and an intermediate save at step 2."""
    folder = tmp_path_factory.mktemp("gray-rgba")
    content = folder / "gray.jpg"
    _crop(CONTENT, 96, 64).convert("L").save(content, quality=90)
    style = folder / "translucent.png"
    rgba = _crop(STYLE, 60, 72).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(style)
    with Image.open(content) as check_content, Image.open(style) as check_style:
        assert (check_content.mode, check_style.mode) == ("L", "RGBA")
    return _run(folder, content, style, "result.png", (96, 64), 4,
                "--print-every", "1", "--save-every", "2", weights=synthetic_params_path)


@pytest.fixture(scope="module")
def sixteen_bit_content_cmyk_style(tmp_path_factory, synthetic_params_path):
    """16-bit grayscale PNG content (portrait), CMYK JPEG style; JPEG output."""
    folder = tmp_path_factory.mktemp("16bit-cmyk")
    content = folder / "deep.png"
    gray = np.asarray(_crop(CONTENT, 48, 80).convert("L"), np.uint16)
    # Every 16-bit value distinct from an 8-bit one scaled up: the low byte carries information.
    Image.fromarray(gray * 256 + np.arange(gray.size, dtype=np.uint16).reshape(gray.shape) % 256).save(content)
    style = folder / "print.jpg"
    _crop(STYLE, 64, 64).convert("CMYK").save(style, quality=90)
    with Image.open(content) as check_content, Image.open(style) as check_style:
        assert check_content.mode.startswith("I") and check_style.mode == "CMYK"
    assert content.read_bytes()[24] == 16  # the PNG header's bit depth
    return _run(folder, content, style, "result.jpg", (48, 80), 2, weights=synthetic_params_path)


@pytest.fixture(scope="module")
def exif_rotated_content(tmp_path_factory, synthetic_params_path):
    """Content stored 80×56 with EXIF orientation 6 (shown rotated 90° clockwise, 56×80).

    Learning rate 1e-12 (the smallest steps; 0 is refused) from the content: the output is the
    upright, resized content, so the test can tell a rotation in the wrong direction from the right one.
    """
    folder = tmp_path_factory.mktemp("exif")
    content = folder / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the 0th row is the visual right-hand side
    _crop(CONTENT, 80, 56).save(content, quality=95, exif=exif)
    return _run(folder, content, STYLE, "result.png", (56, 80), 2,
                "--init", "content", "--learning-rate", "1e-12", weights=synthetic_params_path)


@pytest.mark.parametrize("fixture", ["gray_content_rgba_style", "sixteen_bit_content_cmyk_style",
                                     "exif_rotated_content"])
def test_unusual_valid_input_just_works(fixture, request):
    record = request.getfixturevalue(fixture)
    assert record.status == 0, record.stderr
    assert "error" not in record.stderr and "Traceback" not in record.stderr
    with Image.open(record.output) as written:
        written.load()
        assert written.mode == "RGB"
        # Aspect ratio of the content as displayed, long side = --image-size.
        assert written.size == _expected_size(*record.content_size)


def test_exif_rotated_content_is_used_upright(exif_rotated_content):
    record = exif_rotated_content
    with Image.open(record.content) as stored:
        # Pillow 13, independently of nst_jax: orientation 6 displays as the stored pixels
        # rotated 90° clockwise (= ROTATE_270, counter-clockwise angles).
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    # Pillow's Lanczos on float ("F") images, one per channel: no 8-bit rounding in between.
    size = _expected_size(*record.content_size)
    reference = np.stack([np.asarray(Image.fromarray(np.asarray(band, np.float32) / 255).resize(
        size, Image.Resampling.LANCZOS)) for band in upright.split()], axis=-1)
    with Image.open(record.output) as written:
        output = np.asarray(written.convert("RGB"), np.float32) / 255
    # The output PNG has 8 bits: half a level of rounding. A wrong rotation or a mirror is far off.
    np.testing.assert_allclose(output, np.clip(reference, 0.0, 1.0), rtol=0, atol=0.6 / 255)


def test_png_output_holds_the_settings(gray_content_rgba_style):
    record = gray_content_rgba_style
    description = _png_description(record.output)
    assert description["steps"] == record.num_steps
    assert description["content"] == "gray.jpg" and description["styles"] == ["translucent.png"]
    settings = description["settings"]
    assert settings["num_steps"] == record.num_steps
    assert settings["image_size"] == IMAGE_SIZE
    assert settings["content_layers"] == ["relu2_1"] and settings["optimizer"] == "adam"
    assert description["weights"]["synthetic"] is True


def test_jpeg_output_is_a_jpeg(sixteen_bit_content_cmyk_style):
    with Image.open(sixteen_bit_content_cmyk_style.output) as written:
        assert written.format == "JPEG"


def test_save_every_writes_the_intermediate_images(gray_content_rgba_style):
    record = gray_content_rgba_style
    intermediate = Path(files.intermediate_path(str(record.output), 2, record.num_steps))
    # Only the final image and the step-2 save: no temporaries, no save at the last step.
    assert _files_under(record.output.parent) == sorted([record.output.name, intermediate.name])
    assert _png_description(intermediate)["steps"] == 2
    with Image.open(intermediate) as snapshot, Image.open(record.output) as final:
        assert snapshot.size == final.size


def test_progress_lines_show_rate_and_loss_terms(gray_content_rgba_style):
    record = gray_content_rgba_style
    progress = [line for line in record.stderr.splitlines() if "it/s" in line]
    assert [int(re.search(r"(\d+)/\d+", line).group(1)) for line in progress] == [1, 2, 3, 4]
    # The rate and time left from the first step on (the engine times each piece, less compiling).
    assert all(re.search(r" [0-9.]+ it/s  eta \d+:\d\d$", line) for line in progress), progress
    for line in progress:
        terms = {name: float(value) for name, value in
                 re.findall(r"\b(loss|content|style|tv) ([-+]?[0-9.]+(?:e[-+]?\d+)?)\s", line)}
        assert set(terms) == {"loss", "content", "style", "tv"}, line
        # The loss is the sum of the (weighted) terms shown, each printed to 4 significant digits.
        np.testing.assert_allclose(terms["loss"], terms["content"] + terms["style"] + terms["tv"],
                                   rtol=1.5e-3)
    assert "done after 4 steps" in record.stderr


# --- real runs at the edges: a result, or one line and nothing written ------------------------------

def _run_or_refuse(tmp_path, *flags, weights):
    """Run the CLI for real; assert it wrote an image (exit 0) or one error line and nothing (exit 2)."""
    output = tmp_path / "out" / "result.png"
    output.parent.mkdir()
    status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", weights, *CHEAP_FLAGS,
                            "--num-steps", "2", *flags])
    assert "Traceback" not in stderr
    if status == 0:
        with Image.open(output) as written:
            assert max(written.size) == IMAGE_SIZE
    else:
        assert status == 2, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
        assert _files_under(output.parent) == []
    return status, stderr, output


def test_renamed_params_file_tiny_learning_rate_and_a_stretched_init_image(tmp_path, synthetic_params_path):
    renamed = tmp_path / "params.bin"  # our .npz under a name that says nothing
    os.link(synthetic_params_path, renamed)
    start = tmp_path / "square.png"
    _crop(STYLE, 40, 40).save(start)  # the content is 4:3, so this start image gets stretched
    status, stderr, _ = _run_or_refuse(tmp_path, "--init-image", start, "--learning-rate", "1e-30",
                                       weights=renamed)
    assert status == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: --init-image")]
    assert len(warnings) == 1 and "stretched" in warnings[0] and "square.png" in warnings[0]
    converted = [f for f in _files_under(os.environ["NST_JAX_CACHE"]) if not f.startswith("xla/")]
    assert converted == []  # used as it is, not converted (xla/ holds compiled programs)


# The style term of these runs (synthetic weights, tubingen and starry_night at 32 px, relu1_1 and
# relu2_1) is about 1.4e3 before its weight: × 1e30 it is ~1e33, five orders of magnitude inside
# float32 (3.4e38); × 1e38 it is ~1e41, past it by more than two. Neither outcome is close to a call.

def _progress_losses(stderr):
    return [float(value) for value in re.findall(r"\bloss ([-+]?[0-9.]+(?:e[-+]?\d+)?)\s", stderr)]


def test_huge_style_weight_with_a_finite_loss_writes_an_image(tmp_path, synthetic_params_path):
    status, stderr, output = _run_or_refuse(tmp_path, "--style-weight", "1e30", weights=synthetic_params_path)
    assert status == 0, stderr
    assert output.exists() and "diverged" not in stderr and "done after 2 steps" in stderr, stderr
    losses = _progress_losses(stderr)
    assert losses and all(1e31 < loss < 1e36 for loss in losses), stderr  # huge, finite, weighted


def test_style_weight_past_float32_says_it_diverged_and_writes_nothing(tmp_path, synthetic_params_path):
    status, stderr, output = _run_or_refuse(tmp_path, "--style-weight", "1e38", weights=synthetic_params_path)
    assert status == 2, stderr
    error = stderr.splitlines()[-1]
    assert error.startswith("error: the optimization diverged") and "nothing written" in error, stderr
    assert "--style-weight" in error  # the advice names the flag to lower
    assert not output.exists()


def test_learning_rate_decayed_to_nothing_from_a_flat_start(tmp_path, synthetic_params_path):
    """A flat start (noise of std 0: the Caffe mean color), Adam with β1 = 0 and a learning rate
    of 10 decayed by 1e-30 per step: the first step moves every channel of every pixel by exactly
    ±10 (Adam's first step is lr·g/|g|), the second by 1e-29, i.e. not at all. So the image is the
    mean color ± 10 per channel, nothing else: an undecayed second step would leave 0 or ±20."""
    status, stderr, output = _run_or_refuse(
        tmp_path, "--learning-rate", "10", "--lr-decay-rate", "1e-30", "--lr-decay-steps", "1",
        "--adam-b1", "0", "--init", "noise", "--init-noise-std", "0", weights=synthetic_params_path)
    assert status == 0, stderr
    with Image.open(output) as written:
        pixels = np.asarray(written.convert("RGB"), np.float64)
    mean = np.array([123.68, 116.779, 103.939])  # Caffe's ImageNet means, R, G, B (0..255)
    distance = np.abs(np.abs(pixels - mean) - 10.0)  # 0 where a pixel moved by exactly ±10
    assert distance.max() <= 1.0, (distance.max(), np.unique(pixels.reshape(-1, 3), axis=0)[:8])
    for channel in range(3):  # both directions occur: the step followed the gradient's sign
        assert (pixels[..., channel] > mean[channel]).any() and (pixels[..., channel] < mean[channel]).any()


def test_stretch_warning_only_when_the_aspect_ratio_differs(tmp_path):
    for name, size in (("wide.png", (80, 40)), ("larger.png", (120, 60)), ("close.png", (201, 100)),
                       ("square.png", (50, 50))):
        Image.new("RGB", size).save(tmp_path / name)
    warning = run.stretch_warning(tmp_path / "wide.png", tmp_path / "square.png")
    assert warning.startswith("warning: --init-image: ") and "50x50 px" in warning and "80x40" in warning
    assert run.stretch_warning(tmp_path / "wide.png", tmp_path / "larger.png") is None
    assert run.stretch_warning(tmp_path / "wide.png", tmp_path / "close.png") is None  # 0.5 %: unseen
    # An unreadable init image gets its own one-line error from the image loader, not a warning.
    assert run.stretch_warning(tmp_path / "wide.png", tmp_path / "missing.png") is None


def test_preprocessing_flag_overrides_a_params_file(synthetic_params_path):
    assert fetch.load_weights(str(synthetic_params_path))[1].preprocessing == "caffe"
    assert fetch.load_weights(str(synthetic_params_path), "torch")[1].preprocessing == "torch"


def test_advice_for_an_unknown_pth_can_be_followed_from_run(tmp_path):
    pytest.importorskip("torch")
    public = tmp_path / "my_vgg19.pth"
    write_synthetic("torchvision-pth", public, seed=0)
    output = tmp_path / "out" / "result.png"
    output.parent.mkdir()
    argv = [CONTENT, STYLE, "-o", output, "--weights", public, *CHEAP_FLAGS, "--num-steps", "2"]

    status, stderr = _main(argv)
    assert status == 2 and stderr.count("\n") == 1 and stderr.startswith(f"error: {public}: "), stderr
    suggested = re.findall(r"--preprocessing (\w+)", stderr)
    assert suggested == ["torch", "caffe"] and not output.exists()

    status, stderr = _main(argv + ["--preprocessing", suggested[1]])  # as the line says
    assert status == 0, stderr
    assert _png_description(output)["weights"]["preprocessing"] == "caffe"


def test_a_failed_final_write_keeps_the_result_and_says_where(tmp_path, synthetic_params_path, monkeypatch):
    """A full disk (or a folder removed meanwhile) at the last write: the computed picture is kept
    in the temporary folder, and the one error line names both paths."""
    output, rescue = tmp_path / "out.png", tmp_path / "temporary"
    rescue.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue))
    real_save = images.save_image

    def disk_full_at(path, *args, **kwargs):
        if Path(path) == output:
            raise UserInputError(f"{path}: cannot write the image (No space left on device)")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(images, "save_image", disk_full_at)
    status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS,
                            "--num-steps", "3", "--print-every", "0"])
    assert status == 2, stderr
    error = stderr.strip().splitlines()[-1]
    (kept,) = rescue.iterdir()
    assert error.startswith(f"error: {output}: cannot write the image (No space left on device)"), error
    assert f"the result is kept as {kept}" in error, error
    assert _png_description(kept)["steps"] == 3 and not output.exists()


# --- Ctrl-C ---------------------------------------------------------------------------------

def _run_and_interrupt(tmp_path, synthetic_params_path, cue, presses, *flags, signum=signal.SIGINT):
    """Start the CLI, send `presses` signals `signum` (0.3 s apart) once `cue` is printed; (status,
    stderr, seconds from the first signal to the exit)."""
    output = tmp_path / "result.png"
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_jax.run", str(CONTENT), str(STYLE), "-o", str(output),
         "--weights", str(synthetic_params_path), *CHEAP_FLAGS, "--num-steps", "100000",
         "--print-every", "1", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    # A reader thread, so waiting for a line can time out instead of blocking on the pipe.
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    seen = []
    try:
        while not any(cue in line for line in seen):
            seen.append(lines.get(timeout=FIRST_PROGRESS_TIMEOUT_S))
        began = time.perf_counter()
        for press in range(presses):
            if press:
                time.sleep(0.3)
            process.send_signal(signum)
        status = process.wait(timeout=EXIT_AFTER_SIGINT_TIMEOUT_S)
        seconds = time.perf_counter() - began
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    return status, "".join(seen), seconds


@pytest.mark.parametrize("moment, cue, presses", [
    # Right after loading, while XLA compiles (a KeyboardInterrupt there crashed jaxlib: exit 139).
    ("twice while compiling", "warning: these VGG-19 weights are synthetic", 2),
    ("twice while stepping", "it/s", 2),
    # The third quits at once, whatever the process is doing.
    ("three times while compiling", "warning: these VGG-19 weights are synthetic", 3),
])
def test_ctrl_c_saves_the_image_and_exits_130(moment, cue, presses, tmp_path, synthetic_params_path):
    status, stderr, seconds = _run_and_interrupt(tmp_path, synthetic_params_path, cue, presses)
    assert status == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    if "nothing written" in stderr:
        # Ctrl-C landed before the first step: nothing to save, and nothing saved.
        assert "compiling" in moment, stderr
        assert _files_under(tmp_path) == []
        return
    assert "interrupted after" in stderr
    if moment == "twice while stepping":
        # Stepping checks the request between pieces of about half a second (a loaded machine:
        # slack for the process's exit and the write).
        assert seconds < 15, seconds
    steps = _png_description(tmp_path / "result.png")["steps"]
    assert 1 <= steps < 100000
    with Image.open(tmp_path / "result.png") as written:
        written.load()
        assert max(written.size) == IMAGE_SIZE
    assert _files_under(tmp_path) == ["result.png"]  # and no temporary beside it


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_keep_the_image(signum, status, tmp_path, synthetic_params_path):
    """What a scheduler, `docker stop` or a preemption sends before killing, and a closed terminal:
    the run stops at its next step, writes the latest image and exits with 128 + the signal."""
    exited, stderr, seconds = _run_and_interrupt(tmp_path, synthetic_params_path, "it/s", 1, signum=signum)
    assert exited == status, stderr
    assert f"{signal.Signals(signum).name}: stopping at the next step" in stderr, stderr
    assert "interrupted after" in stderr and "Traceback" not in stderr, stderr
    assert seconds < 15, seconds
    assert 1 <= _png_description(tmp_path / "result.png")["steps"] < 100000
    assert _files_under(tmp_path) == ["result.png"]


def test_ctrl_c_before_the_loop_writes_nothing(tmp_path, synthetic_params_path, monkeypatch):
    # Deterministic version of "Ctrl-C while compiling": the signal arrives just before the
    # targets are compiled. Raised there, it would escape XLA's compile (jaxlib then crashes at
    # exit); deferred, the run stops before its first step: the start image is no result.
    real_targets = engine.run_targets

    def targets_after_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the watcher thread counts the press
        return real_targets(*args, **kwargs)

    monkeypatch.setattr(engine, "run_targets", targets_after_ctrl_c)
    output = tmp_path / "result.png"
    before = {signum: signal.getsignal(signum) for signum in interrupt.STOP_SIGNALS}
    try:
        status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path,
                                *CHEAP_FLAGS, "--num-steps", "50", "--print-every", "1"])
    finally:
        for signum, handler in before.items():  # the run leaves them ignored for its exit
            signal.signal(signum, handler)
    assert status == 130, stderr
    assert "nothing written" in stderr and "Traceback" not in stderr
    assert _files_under(tmp_path) == []


def test_a_second_ctrl_c_is_deferred_too():
    before = {signum: signal.getsignal(signum) for signum in interrupt.STOP_SIGNALS}
    with interrupt.ctrl_c_at_visits(io.StringIO()) as ctrl_c:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.perf_counter() + 5
            while ctrl_c.presses < 2 and time.perf_counter() < deadline:
                time.sleep(0.01)
        except KeyboardInterrupt:  # caught here: escaping would end the whole pytest session
            pytest.fail("a Ctrl-C raised instead of being deferred")
        assert ctrl_c.requested and ctrl_c.presses == 2
    # Still none raises (or kills) on the way out; with no press the handlers are restored.
    assert all(signal.getsignal(signum) is signal.SIG_IGN for signum in interrupt.STOP_SIGNALS)
    for signum, handler in before.items():
        signal.signal(signum, handler)
    with interrupt.ctrl_c_at_visits(io.StringIO()):
        pass
    assert {signum: signal.getsignal(signum) for signum in interrupt.STOP_SIGNALS} == before


# --- a run that diverges or stalls says so in one line ----------------------------------------

def _visit(step, loss, scale=0):
    return engine.Visit(step=step, total_steps=1000, terms={"total": np.array([loss])},
                       images=lambda: [], scale=scale, scales=2)


def test_a_stalled_loss_is_one_warning_naming_a_flag():
    watch = LossWatch(preset("neural-style").replace(optimizer="adam"))
    assert [watch.stalled(_visit(step, 100 - step)) for step in (10, 20, 30, 40)] == [None] * 4
    # Three visits spanning 20 steps without a relative move of 1e-6: one warning, once.
    lines = [watch.stalled(_visit(step, 5.0)) for step in (50, 60, 70, 80, 90)]
    assert lines[:2] == [None, None] and lines[3:] == [None, None]
    assert lines[2].startswith("warning: the loss has not moved") and "--learning-rate" in lines[2]
    # Visits closer than 20 steps do not count as a stall; a new scale starts afresh.
    watch = LossWatch(preset("neural-style").replace(normalize_gradients=True))
    assert watch.stalled(_visit(1, 5.0)) is None and watch.stalled(_visit(2, 5.0)) is None
    assert watch.stalled(_visit(3, 5.0)) is None
    assert [watch.stalled(_visit(step, 5.0, scale=1)) for step in (10, 20)] == [None, None]
    assert "--normalize-gradients" in watch.stalled(_visit(30, 5.0, scale=1))


def test_a_stalled_run_warns_once_and_finishes(tmp_path, synthetic_params_path):
    output = tmp_path / "out.png"
    status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS,
                            "--num-steps", "40", "--learning-rate", "1e-30", "--print-every", "0"])
    assert status == 0, stderr
    warnings = [line for line in stderr.splitlines() if "has not moved" in line]
    assert len(warnings) == 1 and "--learning-rate" in warnings[0], stderr
    assert output.exists()


@pytest.mark.parametrize("optimizer, advice", [("adam", "lower --learning-rate / --style-weight"),
                                               ("lbfgs", "or try --lbfgs-linesearch zoom")])
def test_a_diverging_run_stops_keeps_the_last_finite_image_and_says_so(tmp_path, synthetic_params_path,
                                                                       monkeypatch, optimizer, advice):
    real = files.run_plan

    def nan_from_step_20(*args):
        *args, options = args
        def visit(v):
            if v.step >= 20:
                v = dataclasses.replace(v, terms={k: np.full_like(x, np.nan) for k, x in v.terms.items()})
            options.on_visit(v)
        return real(*args, dataclasses.replace(options, on_visit=visit))

    monkeypatch.setattr(files, "run_plan", nan_from_step_20)
    output = tmp_path / "out.png"
    status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS,
                            "--num-steps", "100", "--print-every", "0", "--optimizer", optimizer])
    assert status == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
    assert "diverged" in errors[0] and "step 20" in errors[0] and errors[0].endswith(advice)
    assert ("--learning-rate" in errors[0]) == (optimizer == "adam")  # L-BFGS has no learning rate
    assert _png_description(output)["steps"] == 10  # the last visit with a finite loss


@pytest.mark.parametrize("failure", ["device", "host", "bug"])
def test_a_run_out_of_memory_is_one_line_and_writes_nothing(tmp_path, synthetic_params_path, monkeypatch,
                                                               failure):
    """What the fit check cannot see (memory another process took, a compiler's temporaries
    beyond the estimate) ends as a run that does not fit; any other error stays a traceback."""
    import jax

    def runs_out(*args, **kwargs):
        if failure == "device":
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                             "4294967296 bytes.\nBufferAssignment OOM Debugging.")
        raise MemoryError() if failure == "host" else RuntimeError("a bug")

    monkeypatch.setattr(files, "run_plan", runs_out)
    output = tmp_path / "out.png"
    args = [CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS, "--num-steps", "2"]
    if failure == "bug":
        with pytest.raises(RuntimeError, match="a bug"):
            run.main([str(arg) for arg in args])
        return
    status, stderr = _main(args)
    assert status == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
    assert errors[0].startswith("error: the run does not fit in memory") and "--remat tiles" in errors[0]
    assert ("4294967296 bytes" in errors[0]) == (failure == "device")
    assert _files_under(tmp_path) == []


def test_every_command_ends_a_run_out_of_memory_in_one_line(capsys):
    """exit_status, which the image and video commands share, refuses what files.py did not."""
    def runs_out():
        raise MemoryError()

    assert interrupt.exit_status(runs_out, "interrupted") == 2
    assert capsys.readouterr().err.startswith("error: the run does not fit in memory (MemoryError)")


@pytest.mark.parametrize("writes", ["a flood of lines", "one buffered line"])
def test_a_reader_closing_stdout_ends_the_command_quietly(writes):
    """`--estimate-memory | head -1`: once the reader has gone, writing fails with EPIPE; that ends
    the command with the status of a closed pipe (141), without a traceback, also when the
    output waited in Python's buffer (stdout to a pipe, PYTHONUNBUFFERED unset)."""
    command = {"a flood of lines": "    while True:\n        print('x' * 1000, flush=True)\n",
               "one buffered line": "    time.sleep(1)\n    print('x' * 100)\n"}[writes]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom nst_jax.cli import interrupt\ndef command():\n" + command +
         "raise SystemExit(interrupt.exit_status(command, 'interrupted'))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    child.stdout.close()  # the reader leaves before the first line
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 141 and stderr.decode() == "", stderr


def test_another_broken_pipe_is_not_taken_for_the_reader_leaving():
    def breaks():
        raise BrokenPipeError("a peer host went away")

    with pytest.raises(BrokenPipeError):
        interrupt.exit_status(breaks, "interrupted")


def test_a_run_diverging_at_once_writes_nothing(tmp_path, synthetic_params_path):
    status, stderr, output = _run_or_refuse(tmp_path, "--style-weight", "1e38", weights=synthetic_params_path)
    assert status == 2 and "diverged" in stderr and "nothing written" in stderr


# --- output: names, metadata, progress ----------------------------------------------------------

def test_a_one_member_batch_is_named_like_a_single_run(tmp_path, synthetic_params_path):
    output = tmp_path / "out.png"
    status, stderr = _main([CONTENT, STYLE, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS,
                            "--num-steps", "2", "--sweep-seed", "3", "--init", "noise"])
    assert status == 0, stderr
    assert _files_under(tmp_path) == ["out.png"]
    assert _png_description(output)["settings"]["seed"] == 3


def test_multi_scale_progress_names_the_scale(tmp_path, synthetic_params_path):
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "out.png", "--weights", synthetic_params_path,
                            *CHEAP_FLAGS, "--image-size", "48", "--scales", "2", "--num-steps", "2",
                            "--print-every", "2"])
    assert status == 0, stderr
    assert re.search(r"scale 1/2 \(34 px\), step 2/4 ", stderr), stderr
    assert re.search(r"scale 2/2 \(48 px\), step 4/4 ", stderr), stderr


def test_pytorch_tutorial_preset_on_caffe_weights_warns(tmp_path, synthetic_params_path):
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "out.png", "--weights", synthetic_params_path,
                            "--preset", "pytorch-tutorial", *CHEAP_FLAGS, "--num-steps", "1"])
    assert status == 0, stderr
    assert len([line for line in stderr.splitlines() if "expects torchvision" in line]) == 1


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_on_a_terminal_that_reports_no_size():
    """Some pseudo-terminals report 0 x 0: tqdm then drew nothing at all."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    from nst_jax.cli.progress import ProgressBar
    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    with open(terminal_fd, "w", closefd=True) as terminal:
        bar = ProgressBar(100, stream=terminal)
        bar.update(10, {"total": 3.0})
        terminal.flush()
        shown, deadline = "", time.monotonic() + 10
        while "10/100" not in shown and time.monotonic() < deadline:  # the pty passes data on asynchronously
            if select.select([main_fd], [], [], 0.5)[0]:
                shown += os.read(main_fd, 65536).decode(errors="replace")
        bar.close()
    os.close(main_fd)
    assert "10/100" in shown and "loss 3" in shown, shown


class _Clock:
    """A clock the test moves: rates without sleeping, exact on a loaded machine."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _rate_and_eta(line):
    match = re.search(r"(\S+) it/s  eta (\S+)$", line)
    return match.group(1), match.group(2)


def test_progress_rates_of_a_new_scale_exclude_its_compiling_and_time_left_weighs_later_scales():
    from nst_jax.cli.progress import ProgressBar
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(40, stream=stream, clock=clock)
    first, second = "scale 1/2 (45 px)", "scale 2/2 (64 px)"
    bar.update(10, scale=first, work_left=30)  # not printed: no --print-every visit
    clock.now += 1.0
    bar.update(15, force_line=True, scale=first, work_left=25)
    clock.now += 1.0
    bar.update(20, force_line=True, scale=first, work_left=20)
    clock.now += 6.0  # the next scale compiling, before its first visit
    bar.update(30, force_line=True, scale=second, work_left=10)
    clock.now += 4.0
    bar.update(40, force_line=True, scale=second, work_left=0)
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [first, first, second, second]
    # 5 steps a second from the first (unprinted) visit; work_left at that rate is the time left.
    assert [_rate_and_eta(line) for line in lines] == [("5.00", "0:05"), ("5.00", "0:04"), ("?", "?"),
                                                      ("2.50", "0:00")]


def test_time_left_counts_a_later_scales_steps_by_its_pixels():
    assert files._work_left(4, 0, 8, [45, 90]) == pytest.approx(4 + 8 * 4)  # twice the side: 4x per step
    assert files._work_left(12, 1, 8, [45, 90]) == 4


def test_progress_shows_the_engines_measured_rate_from_the_first_step():
    """At print sizes a step takes minutes: the rate and time left come from the engine's timing
    of each piece (compilation excluded), so the first step already says them."""
    from nst_jax.cli.progress import ProgressBar
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(10, stream=stream, clock=clock)
    clock.now += 400.0  # compiling and the first step: the wall clock says nothing of a step
    bar.measured(1, 100.0)
    bar.update(1, force_line=True)
    bar.measured(3, 50.0)  # two more steps at 50 s
    bar.update(3, {"total": 2.0}, force_line=True)
    first, second = stream.getvalue().splitlines()
    assert _rate_and_eta(first) == ("0.01", "15:00")  # 100 s a step, 9 left
    assert _rate_and_eta(second) == (f"{3 / 200:.2f}", "7:46")  # 3 steps in 200 s, 7 left
    bar.measured(12, 1.0, scale="scale 2/2 (64 px)")  # a new scale counts afresh
    assert (bar.measured_steps, bar.measured_seconds) == (1, 1.0)


def test_progress_bar_on_a_terminal_keeps_lines_off_the_bar_and_rates_exclude_compiling():
    from nst_jax.cli.progress import ProgressBar, write_line
    stream, clock = _Terminal(), _Clock()
    bar = ProgressBar(100, stream=stream, clock=clock)
    clock.now += 3.0  # "compiling": before the first visit, not counted in the rate
    bar.update(10, {"total": 3.0, "content": 1.0, "style": 2.0, "tv": 0.0}, force_line=True)
    write_line("warning: something", stream)
    clock.now += 0.5
    bar.update(20, {"total": 2.0}, force_line=True)
    assert bar.bar.postfix.endswith("loss 2, eta 0:04")  # the bar shows the line's time left
    bar.close("done")
    text = stream.getvalue()
    lines = text.replace("\r", "\n").split("\n")
    # Every line meant to stay stands alone on its line, never glued to the bar.
    assert "warning: something" in lines and "done" in lines
    kept = [line for line in lines if line.startswith("step ")]
    assert "? it/s" in kept[0]
    assert _rate_and_eta(kept[1]) == ("20.00", "0:04")  # 10 steps in 0.5 s, not in 3.5 s
