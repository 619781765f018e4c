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


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STATEMENTS = [(document.name, statement) for document in DOCUMENTS
              for block in _python_blocks(document.read_text()) for statement in _import_statements(block)]


def test_the_readme_has_python_examples_to_check():
    assert len([name for name, _ in STATEMENTS if name == "README.md"]) >= 5


@pytest.mark.parametrize("document, statement", STATEMENTS, ids=[f"{d}: {s}" for d, s in STATEMENTS])
def test_every_import_in_the_examples_works(document, statement):
    if "nst_jax.video" in statement:  # the video modules need the [video] extra
        pytest.importorskip("av")
        pytest.importorskip("cv2")
    exec(statement, {})  # ImportError names what is missing


# --- the README's examples, run whole ------------------------------------------------------------

# Literals of the examples that would make the test slow (print sizes, hundreds of steps), and
# what the test runs instead. Each must occur once in the examples: a README edit that drops or
# changes one fails here, so the map cannot silently stop applying.
SMALLER = {
    'long_side=512': 'long_side=32',
    'image_size=512, num_steps=300': 'image_size=32, num_steps=2',
    'image_size=4096': 'image_size=48',
    'long_side=256, start=0, duration=2': 'long_side=32, start=0, duration=0.3',
    'frame_steps=200': 'frame_steps=1',
}
# What the examples must have made, checked after they ran (names they define).
OUTCOME = """
import json
print(json.dumps({"features": sorted(acts), "image": list(result.image.shape), "batch": len(results),
                  "big": list(big.image.shape), "frames": len(results_video)}))
"""


def test_the_readme_python_examples_run_whole(tmp_path, synthetic_params_path):
    """The README's Python blocks, in order, as one script in a fresh process on 4 simulated
    devices, with the repo's photos, a short clip and the synthetic weights ($NST_JAX_WEIGHTS),
    at the sizes SMALLER gives."""
    av = pytest.importorskip("av")
    import json
    import shutil

    import numpy as np

    from simulated import device_env

    blocks = _python_blocks((ROOT / "README.md").read_text())
    script = "\n".join(blocks)
    for slow, fast in SMALLER.items():
        assert script.count(slow) == 1, f"README's examples no longer contain {slow!r}: update SMALLER"
        script = script.replace(slow, fast)
    # The video example appends to `results`, as the batch example's name: kept apart here.
    video = script.index("from nst_jax.video")
    script = script[:video] + script[video:].replace("results", "results_video") + OUTCOME
    for name in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"):
        shutil.copy(ROOT / "tests" / "data" / name, tmp_path / name)
    with av.open(str(tmp_path / "input.mp4"), "w") as container:  # 5 frames at 10 fps
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for index in range(5):
            picture = np.full((32, 48, 3), 40 * index, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    environment = {**device_env(4), "NST_JAX_WEIGHTS": str(synthetic_params_path),
                   "PYTHONPATH": str(ROOT)}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                               env=environment, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome == {"features": ["relu1_1", "relu4_2"], "image": [24, 32, 3], "batch": 6,
                       "big": [36, 48, 3], "frames": 3}, outcome
    assert (tmp_path / "out.png").exists()
