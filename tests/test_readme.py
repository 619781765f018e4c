"""The README's Python examples: every name they import exists, and the examples run whole."""

import re
import subprocess
import sys

import pytest

from datafiles import ROOT


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def _import_statements(block):
    return [line.strip() for line in block.splitlines() if re.match(r"\s*(from \S+ )?import ", line)]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
STATEMENTS = [(document.name, statement) for document in DOCUMENTS
              for block in _python_blocks(document.read_text()) for statement in _import_statements(block)]


def test_the_readme_and_the_guide_have_python_examples_to_check():
    assert len([name for name, _ in STATEMENTS if name == "README.md"]) >= 4
    assert len([name for name, _ in STATEMENTS if name == "python-api.md"]) >= 5


@pytest.mark.parametrize("document, statement", STATEMENTS, ids=[f"{d}: {s}" for d, s in STATEMENTS])
def test_every_import_in_the_examples_works(document, statement):
    if "nst_jax.video" in statement:  # the video modules need the [video] extra
        pytest.importorskip("av")
        pytest.importorskip("cv2")
    exec(statement, {})  # ImportError names what is missing


# --- the examples, run whole ----------------------------------------------------------------------

# The README's and the guide's Python examples (the guide's Python API page, then its video page,
# which goes on from it) each as one script. Literals that would make the test slow (print sizes,
# hundreds of steps) are replaced by what the test runs instead; each must occur once in its
# examples: an edit that drops or changes one fails here, so the map cannot silently stop
# applying. OUTCOME prints what the examples must have made (names they define).
EXAMPLES = {
    "README.md": dict(
        documents=("README.md",),
        smaller={'long_side=512': 'long_side=32', 'image_size=512, num_steps=300': 'image_size=32, num_steps=2'},
        outcome='print(json.dumps({"image": list(result.image.shape), "batch": len(results)}))',
        expected={"image": [24, 32, 3], "batch": 6}),
    "docs/guide": dict(
        documents=("docs/guide/python-api.md", "docs/guide/video.md"),
        smaller={'long_side=512': 'long_side=32', 'image_size=512, num_steps=300': 'image_size=32, num_steps=2',
                 'image_size=4096': 'image_size=48', 'long_side=256, start=0, duration=2': 'long_side=32, start=0, duration=0.3',
                 'frame_steps=200': 'frame_steps=1'},
        outcome='print(json.dumps({"features": sorted(acts), "image": list(result.image.shape), "batch": len(results), '
                '"big": list(big.image.shape), "frames": len(results_video)}))',
        expected={"features": ["relu1_1", "relu4_2"], "image": [24, 32, 3], "batch": 6, "big": [36, 48, 3],
                  "frames": 3}),
}


def _clip(path):
    """A 5-frame 48×32 H.264 clip at 10 fps."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 40 * index, np.uint8), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_python_examples_run_whole(name, tmp_path, synthetic_params_path):
    """The Python blocks, in order, as one script in a fresh process on 4 simulated devices, with
    the repo's photos, a short clip and the synthetic weights ($NST_JAX_WEIGHTS), at the sizes
    the map gives."""
    pytest.importorskip("av")
    import json
    import shutil

    from simulated import device_env

    example = EXAMPLES[name]
    script = "\n".join(block for document in example["documents"]
                       for block in _python_blocks((ROOT / document).read_text()))
    for slow, fast in example["smaller"].items():
        assert script.count(slow) == 1, f"{name}'s examples no longer contain {slow!r}: update the map"
        script = script.replace(slow, fast)
    if "from nst_jax.video" in script:  # the video example appends to `results`, the batch's name
        video = script.index("from nst_jax.video")
        script = script[:video] + script[video:].replace("results", "results_video")
    script += "\nimport json\n" + example["outcome"] + "\n"
    for picture in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"):
        shutil.copy(ROOT / "tests" / "data" / picture, tmp_path / picture)
    _clip(tmp_path / "input.mp4")
    environment = {**device_env(4), "NST_JAX_WEIGHTS": str(synthetic_params_path), "PYTHONPATH": str(ROOT)}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                               env=environment, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome == example["expected"], outcome
    assert (tmp_path / "out.png").exists()
