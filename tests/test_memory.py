"""The memory estimate: XLA's analysis of the compiled step, checked against sizes known by hand."""


from nst_jax.memory import estimate_memory
from nst_jax.presets import preset
from nst_jax.run import main

CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))


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
    images = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "images"
    output = tmp_path / "out.png"
    status = main([str(images / "tubingen.jpg"), str(images / "starry_night.jpg"), "-o", str(output),
                   "--estimate-memory", "--image-size", "64", "--content-layers", "relu2_1",
                   "--style-layers", "relu1_1,relu2_1", "--sweep-seed", "0,1", "--devices", "1"])
    printed = capsys.readouterr().out.strip()
    assert status == 0
    assert printed.startswith("48x64 px, 2 image(s) on 1 device(s)") and "GiB" in printed
    assert not output.exists() and list(tmp_path.iterdir()) == []
