"""Checkpoints of image runs (engine.checkpoint): a resumed run equals the uninterrupted one bit
for bit, wherever it stopped; another run's, a damaged or a finished checkpoint is handled in one
line; and the interval policy."""

import json
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from nst_jax.config.presets import preset
from nst_jax.engine.checkpoint import Checkpoints, Every
from nst_jax.errors import UserInputError
from nst_jax.engine.stylize import RunOptions, make_members, stylize_batch
from nst_jax.weights.params_file import Model
from datafiles import IMAGES
from test_cli import _main, _run_and_interrupt

CONTENT, STYLE, OTHER_STYLE = IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", IMAGES / "the_scream.jpg"
# Cheap: block 2 is the deepest layer read.
CHEAP = dict(image_size=40, content_layers=("relu2_1",), content_layer_weights=None,
             style_layers=("relu1_1", "relu2_1"), style_layer_weights=None)
CHEAP_FLAGS = ("--image-size", "32", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1",
               "--print-every", "0")


def _run(content, styles, settings, params, members, **options):
    return stylize_batch(content, styles, settings, Model(params, "caffe"), members, RunOptions(**options))


def _stopping_at(step):
    """(on_steps, should_stop): stop at the first piece end at or past `step`."""
    reached = []
    return (lambda at, seconds: reached.append(at)), (lambda: bool(reached) and reached[-1] >= step)


@pytest.mark.parametrize("case", [
    # L-BFGS's history, coarse to fine: stopped inside the first scale, resumed there.
    dict(settings=dict(optimizer="lbfgs", num_steps=12, scales=2), sweep=None, stop=7),
    # L-BFGS stopped in the second scale.
    dict(settings=dict(optimizer="lbfgs", num_steps=8, scales=2), sweep=None, stop=11),
    # A batch of two (its own Adam moments each) with a decaying learning rate: the step count
    # in the optimizer's state drives the schedule.
    dict(settings=dict(optimizer="adam", learning_rate=5.0, lr_decay_rate=0.5, lr_decay_steps=3, num_steps=14),
         sweep=(1e2, 1e4), stop=6),
])
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_result(case, params, photo, tmp_path):
    settings = preset("neural-style").replace(**CHEAP, **case["settings"])
    content, styles = photo("tubingen.jpg", 64), [photo("starry_night.jpg", 64)]
    members = make_members(settings, ["s"], style_weights=case["sweep"]) if case["sweep"] else \
        make_members(settings, ["s"], per_style=False)
    whole = _run(content, styles, settings, params, members)

    folder = tmp_path / "out.png.checkpoint"
    on_steps, should_stop = _stopping_at(case["stop"])
    # Visits every 3 steps end pieces there (chunks of any length give the same bits: the
    # uninterrupted run had none).
    stopped = _run(content, styles, settings, params, members, should_stop=should_stop, on_steps=on_steps,
                   intervals=(3,), checkpoints=Checkpoints(folder, {"run": 1}, Every(seconds=3600)))
    assert stopped[0].interrupted and case["stop"] <= stopped[0].steps_done < settings.optimizer.num_steps * settings.image.scales
    resumed = _run(content, styles, settings, params, members,
                   checkpoints=Checkpoints(folder, {"run": 1}, Every(seconds=3600)))
    for done, again in zip(whole, resumed):
        assert not again.interrupted and again.steps_done == done.steps_done
        np.testing.assert_array_equal(again.image, done.image)
        assert again.loss == done.loss


def test_periodic_checkpoints_land_on_their_steps_and_keep_only_the_latest(params, photo, tmp_path):
    settings = preset("neural-style").replace(**CHEAP, optimizer="adam", num_steps=10)
    checkpoints = Checkpoints(tmp_path / "c", {"run": 1}, Every(steps=4))
    saved = []
    real_save = checkpoints.save
    checkpoints.save = lambda position, *arrays: (saved.append(position.step), real_save(position, *arrays))
    _run(photo("tubingen.jpg", 64), [photo("starry_night.jpg", 64)], settings, params,
         make_members(settings, ["s"], per_style=False), checkpoints=checkpoints)
    checkpoints.wait()
    assert saved == [4, 8]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["8"]  # written whole, the older removed
    assert Checkpoints(tmp_path / "c", {"run": 1}, Every(steps=4)).latest().step == 8


def test_interval_policy():
    assert Every.parse("500") == Every(steps=500)
    assert Every.parse("10m") == Every(seconds=600) and Every.parse("1.5h") == Every(seconds=5400)
    assert Every.parse(" 30s ") == Every(seconds=30)
    for bad in ("0", "-5", "10 minutes", "m", ""):
        with pytest.raises(ValueError, match="expected a number of steps"):
            Every.parse(bad)
    now = [0.0]
    timed = Checkpoints("unused", {}, Every(seconds=60), clock=lambda: now[0])
    assert not timed.due(5)
    now[0] = 61.0
    assert timed.due(6)


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image)


def _steps(path):
    with Image.open(path) as image:
        return json.loads(image.text["nst-jax"])["steps"]


def test_cli_keeps_a_finished_run_and_runs_it_further_to_the_uninterrupted_result(tmp_path, synthetic_params_path):
    common = [CONTENT, STYLE, "--weights", synthetic_params_path, *CHEAP_FLAGS]
    status, stderr = _main([*common, "-o", tmp_path / "whole.png", "--num-steps", "9"])
    assert status == 0, stderr
    output, folder = tmp_path / "mon été 1.png", tmp_path / "mon été 1.png.checkpoint"  # spaces, non-ASCII
    status, stderr = _main([*common, "-o", output, "--num-steps", "5", "--checkpoint-every", "2",
                            "--keep-checkpoint"])
    assert status == 0 and folder.is_dir(), stderr
    assert f"the same command resumes from {folder}" in stderr
    status, stderr = _main([*common, "-o", output, "--num-steps", "9", "--checkpoint-every", "2"])
    assert status == 0, stderr
    assert f"resuming from step 5 of 9 ({folder})" in stderr
    np.testing.assert_array_equal(_pixels(output), _pixels(tmp_path / "whole.png"))
    assert _steps(output) == 9
    assert not folder.exists()  # the images are written: it served its run


def test_cli_refuses_another_runs_or_a_damaged_checkpoint_in_one_line(tmp_path, synthetic_params_path):
    common = [CONTENT, STYLE, "--weights", synthetic_params_path, *CHEAP_FLAGS, "-o", tmp_path / "out.png",
              "--num-steps", "3", "--checkpoint-every", "1", "--keep-checkpoint"]
    assert _main(common)[0] == 0
    folder = tmp_path / "out.png.checkpoint"
    status, stderr = _main([*common, "--style-weight", "7"])
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: {folder}: the checkpoint of another run (--style-weight") and "7.0 here" in stderr
    status, stderr = _main([c if c != STYLE else OTHER_STYLE for c in common])
    assert status == 2 and "the style differs" in stderr, stderr
    status, stderr = _main([*common[:-5], "--num-steps", "2", "--checkpoint-every", "1"])
    assert status == 2 and stderr.startswith("error: --num-steps 2: ") and "at step 3 already" in stderr, stderr
    # Damaged: the arrays' files cut short (found when they are read, after the targets), or the
    # run's description unreadable (found before anything compiles).
    (step,) = folder.iterdir()
    before = _pixels(tmp_path / "out.png")
    for damaged in sorted((step / "state").rglob("*")):
        if damaged.is_file() and damaged.stat().st_size > 100:
            damaged.write_bytes(damaged.read_bytes()[:50])
    status, stderr = _main(common)
    error = stderr.splitlines()[-1]
    assert status == 2 and error.startswith(f"error: {folder}: cannot read the checkpoint's arrays"), stderr
    assert "remove it to start afresh" in error and "Traceback" not in stderr
    np.testing.assert_array_equal(_pixels(tmp_path / "out.png"), before)  # nothing overwritten
    shutil.rmtree(step / "run")
    status, stderr = _main(common)
    assert status == 2 and f"error: {folder}: not a readable checkpoint" in stderr, stderr


@pytest.mark.parametrize("value, problem", [("0", "expected a number of steps"), ("5 parsecs", "expected")])
def test_bad_checkpoint_flags_are_one_line(value, problem, tmp_path):
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "o.png", "--checkpoint-every", value])
    assert status == 2 and stderr.startswith("error: --checkpoint-every: ") and problem in stderr, stderr
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "o.png", "--keep-checkpoint"])
    assert status == 2 and "--keep-checkpoint: only with --checkpoint-every" in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_keeps_a_checkpoint_the_same_command_resumes(tmp_path, synthetic_params_path):
    """What a scheduler's time limit does: SIGTERM mid-run, then the job again (with more steps
    here, so that the test ends): it resumes where the signal stopped it."""
    status, stderr, _ = _run_and_interrupt(tmp_path, synthetic_params_path, "it/s", 1,
                                           "--checkpoint-every", "1h", signum=signal.SIGTERM)
    assert status == 143, stderr
    folder = tmp_path / "result.png.checkpoint"
    assert f"the same command resumes from {folder}" in stderr, stderr
    stopped_at = _steps(tmp_path / "result.png")
    status, stderr = _main([CONTENT, STYLE, "-o", tmp_path / "result.png", "--weights", synthetic_params_path,
                            "--image-size", "32", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1",
                            "--optimizer", "adam", "--num-steps", stopped_at + 3, "--print-every", "1",
                            "--checkpoint-every", "1h"])
    assert status == 0, stderr
    assert f"resuming from step {stopped_at} of {stopped_at + 3}" in stderr, stderr
    assert _steps(tmp_path / "result.png") == stopped_at + 3 and not folder.exists()


def test_a_save_cut_short_leaves_the_last_complete_checkpoint(params, photo, tmp_path):
    """A kill in the middle of a write (the third Ctrl-C, a power cut) leaves Orbax's temporary
    folder beside the complete one: the run resumes from the complete one."""
    settings = preset("neural-style").replace(**CHEAP, optimizer="adam", num_steps=4)
    folder = tmp_path / "c"
    _run(photo("tubingen.jpg", 64), [photo("starry_night.jpg", 64)], settings, params,
         make_members(settings, ["s"], per_style=False), checkpoints=Checkpoints(folder, {"run": 1}, Every(steps=4)))
    shutil.copytree(folder / "4", folder / "8.orbax-checkpoint-tmp-1733400000000000")
    shutil.rmtree(folder / "8.orbax-checkpoint-tmp-1733400000000000" / "state")
    assert Checkpoints(folder, {"run": 1}, Every(steps=4)).latest().step == 4


def test_a_checkpoint_that_cannot_be_written_is_one_warning_and_the_run_goes_on(params, photo, tmp_path):
    """A full disk at a checkpoint: the run finishes (its image is the work), saying so once."""
    settings = preset("neural-style").replace(**CHEAP, optimizer="adam", num_steps=6)
    failures = []
    checkpoints = Checkpoints(tmp_path / "c", {"run": 1}, Every(steps=2), on_failure=failures.append)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    checkpoints._open().save = disk_full
    members = make_members(settings, ["s"], per_style=False)
    content, styles = photo("tubingen.jpg", 64), [photo("starry_night.jpg", 64)]
    (result,) = _run(content, styles, settings, params, members, checkpoints=checkpoints)
    (whole,) = _run(content, styles, settings, params, members)
    assert not result.interrupted and result.steps_done == 6
    np.testing.assert_array_equal(result.image, whole.image)
    assert failures == [f"cannot write the checkpoint {tmp_path / 'c'} (No space left on device); "
                        f"the run goes on without it"]


def test_two_runs_on_one_checkpoint_the_second_is_one_line(tmp_path):
    first = Checkpoints(tmp_path / "out.png.checkpoint", {}, Every(steps=1))
    first.acquire()
    try:
        with pytest.raises(UserInputError, match=r"out.png.checkpoint: another run is using it"):
            Checkpoints(tmp_path / "out.png.checkpoint", {}, Every(steps=1)).acquire()
    finally:
        first.close()
    assert not (tmp_path / "out.png.checkpoint").exists()  # nothing saved: nothing left
    again = Checkpoints(tmp_path / "out.png.checkpoint", {}, Every(steps=1))
    again.acquire()
    again.close()


SHARDED_SCRIPT = r"""
import json, sys
import numpy as np
from nst_jax import Model, RunOptions, make_members, preset, stylize_batch
from nst_jax.engine.checkpoint import Checkpoints, Every
from nst_jax.engine.devices import batch_mesh, image_mesh
from nst_jax.imaging.images import load_image
from weights_tools.synthetic import synthetic_params

folder, content_path, style_path = sys.argv[1:]
model = Model(synthetic_params(seed=0), "caffe")
content, styles = load_image(content_path, 64), [load_image(style_path, 64)]
cheap = dict(image_size=40, content_layers=("relu2_1",), content_layer_weights=None,
             style_layers=("relu1_1", "relu2_1"), style_layer_weights=None)
report = {}
for name, mesh, settings, sweep in [
        ("rows", image_mesh(2), preset("neural-style").replace(optimizer="adam", learning_rate=4.0, num_steps=9, **cheap), None),
        ("batch", batch_mesh(2), preset("neural-style").replace(optimizer="lbfgs", num_steps=9, **cheap), (1e2, 1e3, 1e4))]:
    members = make_members(settings, ["s"], style_weights=sweep) if sweep else make_members(settings, ["s"], per_style=False)
    run = lambda **extra: stylize_batch(content, styles, settings, model, members, RunOptions(mesh=mesh, **extra))
    whole = run()
    reached = []
    checkpoints = lambda: Checkpoints(f"{folder}/{name}", {"run": name}, Every(seconds=3600))
    stopped = run(on_steps=lambda step, seconds: reached.append(step), should_stop=lambda: bool(reached) and reached[-1] >= 4,
                  intervals=(2,), checkpoints=checkpoints())
    resumed = run(checkpoints=checkpoints())
    report[name] = {"stopped_at": stopped[0].steps_done, "interrupted": stopped[0].interrupted,
                    "equal": all(np.array_equal(a.image, b.image) for a, b in zip(whole, resumed)),
                    "steps": [r.steps_done for r in resumed]}
print(json.dumps(report))
"""


def test_sharded_runs_resume_to_the_uninterrupted_result(tmp_path):
    """An image split by rows over 2 devices (its state sharded by rows) and a batch of 3 split
    over 2 devices (padded to 4): stopped, saved from the shards, read back into them."""
    from simulated import json_report, run_script
    report = json_report(run_script(SHARDED_SCRIPT, tmp_path, CONTENT, STYLE, devices=2))
    for name in ("rows", "batch"):
        assert report[name]["interrupted"] and 4 <= report[name]["stopped_at"] < 9, report
        assert report[name]["equal"] and report[name]["steps"] == [9] * len(report[name]["steps"]), report
