"""Batched runs: one compilation, members equal to their one-by-one runs, sharding over devices."""

import textwrap

import jax
import numpy as np
import pytest

import nst_jax.engine.chunk_inputs as chunk_inputs
from nst_jax.engine.timings import CompileCounter
from nst_jax.engine.stylize import make_members, stylize_batch
from nst_jax.imaging.images import load_image, read_png_metadata
from nst_jax.config.presets import preset
from nst_jax.cli.run import main
from nst_jax import Model, RunOptions, stylize
from nst_jax.cli.files import member_path
from datafiles import IMAGES
from simulated import json_report, run_script

# Block-2 layers keep compile and step time small; the batching machinery is the same.
CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), image_size=40,
             init="noise", init_noise_std=0.1)
# What a run padded to shape buckets compiles instead of jit(targets) and jit(_noise_start): one
# targets' program per image, their blend, and the noise laid out in the bucket.
BUCKET_PROGRAMS = ("jit(content_pass)", "jit(_style_pass)", "jit(blend_grams)", "jit(_noise_start_in_bucket)")
# Content, and styles of different sizes and aspect ratios in one batch: landscape and portrait.
PHOTOS = (("tubingen.jpg", 64), ("starry_night.jpg", 64), ("the_scream.jpg", 80))


def test_members_are_every_combination_with_predictable_labels():
    settings = preset("neural-style")
    members = make_members(settings, ["starry", "scream"], style_weights=[10.0, 1000.0], seeds=[3])
    assert [m.label for m in members] == ["starry_sw10", "starry_sw1000", "scream_sw10", "scream_sw1000"]
    assert [(m.style_index, m.style_weight, m.seed) for m in members] == [
        (0, 10.0, 3), (0, 1000.0, 3), (1, 10.0, 3), (1, 1000.0, 3)]
    blended = make_members(settings, ["a", "b"], per_style=False, seeds=[0, 1])
    assert [(m.style_index, m.label) for m in blended] == [(None, "seed0"), (None, "seed1")]
    assert member_path("out/x.png", "seed1") == "out/x_seed1.png"


@pytest.mark.parametrize("optimizer, linesearch", [("adam", "none"), ("lbfgs", "none"), ("lbfgs", "zoom")])
def test_batched_members_equal_their_single_runs(optimizer, linesearch, params, photo):
    content, starry, scream = (photo(*entry) for entry in PHOTOS)
    settings = preset("neural-style").replace(optimizer=optimizer, lbfgs_linesearch=linesearch,
                                              num_steps=10, learning_rate=8.0, **CHEAP)
    members = make_members(settings, ["starry", "scream"], style_weights=[100.0, 1000.0], seeds=[0, 5])
    assert len(members) == 8

    jax.clear_caches()  # each parametrization sees every program the batch compiles, not only the first
    with CompileCounter() as compiled:
        batched = stylize_batch(content, [starry, scream], settings, Model(params, "caffe"), members, RunOptions(intervals=(3,)))
    # Four chunks (3+3+3+1 steps), one compilation of the loop for all eight members, and no
    # program a single image would not compile (stacking the members' Grams and images compiled
    # one per shape, outside jit).
    assert compiled.programs.count("jit(chunk)") == 1
    assert set(compiled.programs) <= {"jit(targets)", "jit(_noise_start)", "jit(init)", "jit(<lambda>)",
                                      "jit(chunk)", *BUCKET_PROGRAMS}, compiled.programs

    for member, result in zip(members[::3], batched[::3]):  # a sample: each style, weight and seed
        single = stylize(content, [[starry, scream][member.style_index]],
                         settings.replace(style_weight=member.style_weight, seed=member.seed), Model(params, "caffe"))
        # The zoom line search branches on float32 values, and a vmapped program rounds
        # differently from the plain one a single image runs: one of eight members here takes
        # another branch and ends 0.4 % apart (the others agree to 2e-6).
        np.testing.assert_allclose(result.loss, single.loss, rtol=1e-2 if linesearch == "zoom" else 1e-4)
        np.testing.assert_allclose(result.image, single.image, atol=0.02)
        assert result.image.shape == single.image.shape == (30, 40, 3)
    assert len({round(r.loss, 3) for r in batched}) == len(batched)  # members really differ


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from nst_jax.engine.devices import batch_mesh
    from nst_jax import Model, RunOptions
    from nst_jax.engine.stylize import make_members, stylize_batch
    from nst_jax.imaging.images import load_image
    from nst_jax.config.presets import preset
    from weights_tools.synthetic import synthetic_params
    images = sys.argv[1]
    content = load_image(images + "/tubingen.jpg", 48)
    styles = [load_image(images + "/starry_night.jpg", 48), load_image(images + "/shipwreck.jpg", 48)]
    settings = preset("neural-style").replace(
        optimizer="lbfgs", num_steps=6, image_size=32, init="noise", init_noise_std=0.1,
        content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), shape_buckets=sys.argv[2])
    # Three members on four devices: padded to four, the copy dropped.
    members = make_members(settings, ["starry", "shipwreck"], per_style=False, seeds=[0, 1, 2])
    params = synthetic_params(0)
    import nst_jax.engine.stylize as engine
    spread = []  # devices holding the start images of each run: the members really are split
    real_run_loop = engine.run_loop
    def recording_run_loop(chunk_fn, pixels, *args, **kwargs):
        spread.append(len(pixels.sharding.device_set))
        return real_run_loop(chunk_fn, pixels, *args, **kwargs)
    engine.run_loop = recording_run_loop
    one = stylize_batch(content, styles, settings, Model(params, "caffe"), members)
    four = stylize_batch(content, styles, settings, Model(params, "caffe"), members, RunOptions(mesh=batch_mesh(4)))
    print(json.dumps({"devices": jax.device_count(), "count": len(four), "spread": spread,
                      "loss_one": [r.loss for r in one], "loss_four": [r.loss for r in four],
                      "pixels": max(float(np.abs(a.image - b.image).max()) for a, b in zip(one, four))}))
""")


@pytest.mark.parametrize("buckets", ["off", "on"])
def test_sharded_over_four_devices_equals_one_device(buckets):
    report = json_report(run_script(SHARDED_SCRIPT, IMAGES, buckets, devices=4))
    assert report["devices"] == 4 and report["count"] == 3
    assert report["spread"] == [1, 4]  # one device, then the batch split over all four
    # From noise, fixed-step L-BFGS overshoots (loss ×10³ by step 6) and magnifies any rounding
    # difference: the exact-shape programs happen to round alike for one member per device and
    # three on one (the same loss), the masked ones do not (5 % apart; their gradients agree to
    # 2e-7, tests/test_buckets.py). The pixels stay close either way.
    np.testing.assert_allclose(report["loss_four"], report["loss_one"], rtol=1e-4 if buckets == "off" else 0.1)
    assert report["pixels"] < 0.02


def test_cli_batch_writes_one_labelled_image_per_member(synthetic_params_path, tmp_path, capsys):
    output = tmp_path / "out.png"
    status = main([str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg"), str(IMAGES / "shipwreck.jpg"),
                   "-o", str(output), "--weights", str(synthetic_params_path), "--batch",
                   "--sweep-style-weight", "10,1000", "--image-size", "32", "--num-steps", "2",
                   "--optimizer", "adam", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"])
    assert status == 0, capsys.readouterr().err
    expected = {f"out_{style}_sw{weight}.png" for style in ("starry_night", "shipwreck") for weight in ("10", "1000")}
    assert {p.name for p in tmp_path.iterdir()} == expected
    described = read_png_metadata(tmp_path / "out_shipwreck_sw1000.png")
    assert described["member"]["style_weight"] == 1000.0 and described["member"]["style_index"] == 1
    # The member's own weights and seed, not only the shared settings.
    assert described["settings"]["style_weight"] == 1000.0
    assert read_png_metadata(tmp_path / "out_starry_night_sw10.png")["settings"]["style_weight"] == 10.0
    assert load_image(tmp_path / "out_shipwreck_sw10.png").shape == (24, 32, 3)


@pytest.mark.parametrize("linesearch", ["none", "zoom"])
def test_a_batched_lbfgs_member_costs_what_a_single_image_costs(linesearch):
    """XLA's cost analysis of the compiled chunks: 4 vmapped members against 4 × one plain image.

    Without a line search there is nothing to branch on, so the batch is the members' sum; the
    zoom line search's data-dependent branches become selects under vmap that compute every
    branch (the check can fail: it does for zoom)."""
    from nst_jax.engine.memory import compiled_chunk

    def flops(compiled):
        analysis = compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

    settings = preset("neural-style").replace(lbfgs_linesearch=linesearch, **CHEAP)
    single = flops(compiled_chunk(settings, 32, 32, batch_size=1))
    four = flops(compiled_chunk(settings, 32, 32, batch_size=4))
    ratio = four / (4 * single)
    if linesearch == "none":
        assert ratio <= 1.1, ratio
    else:
        assert ratio > 1.1, ratio


def test_the_api_takes_uint8_arrays_and_one_style_not_in_a_list(params, photo):
    """What PIL and OpenCV hand out: uint8 pixels; before, they were clipped to 1 (a white image)."""
    content, starry, _ = (np.round(photo(*entry) * 255).astype(np.uint8) for entry in PHOTOS)
    # Another size than the other tests here: their compile counts must not find these programs.
    settings = preset("neural-style").replace(num_steps=2, **{**CHEAP, "image_size": 36})
    as_bytes = stylize(content, starry, settings, Model(params, "caffe"))
    as_floats = stylize(content.astype(np.float32) / np.float32(255), [starry.astype(np.float32) / np.float32(255)],
                        settings, Model(params, "caffe"))
    np.testing.assert_array_equal(as_bytes.image, as_floats.image)
    assert 0.2 < as_bytes.image.mean() < 0.8  # a picture, not white


def test_a_single_image_runs_the_plain_chunk_and_a_second_run_compiles_nothing(params, photo, monkeypatch):
    content, starry, _ = (photo(*entry) for entry in PHOTOS)
    settings = preset("neural-style").replace(num_steps=4, **CHEAP)
    programs = []
    real_chunk_program = chunk_inputs.chunk_program

    def recording(objective, spec, batched):
        programs.append(batched)
        return real_chunk_program(objective, spec, batched)

    monkeypatch.setattr(chunk_inputs, "chunk_program", recording)
    with CompileCounter() as first:
        one = stylize(content, [starry], settings, Model(params, "caffe"), RunOptions(intervals=(2,)))
    with CompileCounter() as second:
        again = stylize(content, [starry], settings, Model(params, "caffe"), RunOptions(intervals=(2,)))
    assert programs == [False, False]  # never vmapped for one image on one device
    assert first.compiles >= 2 and "jit(chunk)" in first.programs  # the check can see compiles
    assert second.compiles == 0, second.programs
    np.testing.assert_array_equal(one.image, again.image)
    # Other settings of the same static shape make a new program; the same sizes again do not.
    with CompileCounter() as other:
        stylize(content, [starry], settings.replace(optimizer="adam"), Model(params, "caffe"))
    assert "jit(chunk)" in other.programs
