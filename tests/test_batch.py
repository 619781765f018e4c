"""Batched runs: one compilation, members equal to their one-by-one runs, sharding over devices."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax.batch as batch_module
from nst_jax.batch import make_members, stylize_batch
from nst_jax.images import load_image, read_png_metadata
from nst_jax.presets import preset
from nst_jax.run import main
from nst_jax.stylize import member_path, stylize
from weights_tools.synthetic import synthetic_params

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
# Block-2 layers keep compile and step time small; the batching machinery is the same.
CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), image_size=40,
             init="noise", init_noise_std=0.1)


@pytest.fixture(scope="module")
def params():
    return jax.tree_util.tree_map(jnp.asarray, synthetic_params(seed=0))


@pytest.fixture(scope="module")
def photos():
    # Styles of different sizes and aspect ratios in one batch: landscape and portrait.
    return (load_image(IMAGES / "tubingen.jpg", 64), load_image(IMAGES / "starry_night.jpg", 64),
            load_image(IMAGES / "the_scream.jpg", 80))


def test_members_are_every_combination_with_predictable_labels():
    settings = preset("neural-style")
    members = make_members(settings, ["starry", "scream"], style_weights=[10.0, 1000.0], seeds=[3])
    assert [m.label for m in members] == ["starry_sw10", "starry_sw1000", "scream_sw10", "scream_sw1000"]
    assert [(m.style_index, m.style_weight, m.seed) for m in members] == [
        (0, 10.0, 3), (0, 1000.0, 3), (1, 10.0, 3), (1, 1000.0, 3)]
    blended = make_members(settings, ["a", "b"], per_style=False, seeds=[0, 1])
    assert [(m.style_index, m.label) for m in blended] == [(None, "seed0"), (None, "seed1")]
    assert member_path("out/x.png", "seed1") == "out/x_seed1.png"


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_batched_members_equal_their_single_runs(optimizer, params, photos, monkeypatch):
    content, starry, scream = photos
    settings = preset("neural-style").replace(optimizer=optimizer, num_steps=10, learning_rate=8.0, **CHEAP)
    members = make_members(settings, ["starry", "scream"], style_weights=[100.0, 1000.0], seeds=[0, 5])
    assert len(members) == 8

    traces = []
    real_make_chunk = batch_module.make_chunk

    def counting_make_chunk(*args):
        chunk = real_make_chunk(*args)

        def traced(*chunk_args):
            traces.append(1)  # runs only while tracing
            return chunk(*chunk_args)
        return traced

    monkeypatch.setattr(batch_module, "make_chunk", counting_make_chunk)
    batched = stylize_batch(content, [starry, scream], settings, params, "caffe", members, intervals=(3,))
    assert len(traces) == 1  # four chunks (3+3+3+1 steps), one compilation for all eight members

    for member, result in zip(members[::3], batched[::3]):  # a sample: each style, weight and seed
        single = stylize(content, [[starry, scream][member.style_index]],
                         settings.replace(style_weight=member.style_weight, seed=member.seed), params, "caffe")
        np.testing.assert_allclose(result.loss, single.loss, rtol=1e-4)
        np.testing.assert_allclose(result.image, single.image, atol=0.02)
        assert result.image.shape == single.image.shape == (30, 40, 3)
    assert len({round(r.loss, 3) for r in batched}) == len(batched)  # members really differ


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from nst_jax.batch import batch_mesh, make_members, stylize_batch
    from nst_jax.images import load_image
    from nst_jax.presets import preset
    from weights_tools.synthetic import synthetic_params
    images = sys.argv[1]
    content = load_image(images + "/tubingen.jpg", 48)
    styles = [load_image(images + "/starry_night.jpg", 48), load_image(images + "/shipwreck.jpg", 48)]
    settings = preset("neural-style").replace(
        optimizer="lbfgs", num_steps=6, image_size=32, init="noise", init_noise_std=0.1,
        content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    # Three members on four devices: padded to four, the copy dropped.
    members = make_members(settings, ["starry", "shipwreck"], per_style=False, seeds=[0, 1, 2])
    params = synthetic_params(0)
    one = stylize_batch(content, styles, settings, params, "caffe", members)
    four = stylize_batch(content, styles, settings, params, "caffe", members, mesh=batch_mesh(4))
    print(json.dumps({"devices": jax.device_count(), "count": len(four),
                      "loss_one": [r.loss for r in one], "loss_four": [r.loss for r in four],
                      "pixels": max(float(np.abs(a.image - b.image).max()) for a, b in zip(one, four))}))
""")


def test_sharded_over_four_devices_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(IMAGES)], capture_output=True,
                               text=True, env=env, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["count"] == 3
    np.testing.assert_allclose(report["loss_four"], report["loss_one"], rtol=1e-4)
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
    described = json.loads(read_png_metadata(tmp_path / "out_shipwreck_sw1000.png")["nst-jax"])
    assert described["member"]["style_weight"] == 1000.0 and described["member"]["style_index"] == 1
    assert load_image(tmp_path / "out_shipwreck_sw10.png").shape == (24, 32, 3)
