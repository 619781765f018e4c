"""CLI outputs are bit-identical to the ones recorded before a refactor, on the machine that recorded them.

Each case runs `python -m nst_jax.run` in-process on the suite's synthetic weights and the repo's
test images with a fixed seed, and hashes what a user gets: the output's decoded pixels and the
losses the run reports (float32 values, bit for bit). tests/data/golden.json holds the hashes and
the machine they were recorded on (CPU model, JAX and jaxlib versions): XLA's CPU code differs
between processors, so on another machine the comparison is skipped, never loosened.

Record afresh (only when a change is meant to change results, and say so in the commit):
    NST_JAX_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py
"""

import hashlib
import json
import os
import platform

import jax
import jaxlib
import numpy as np
import pytest
from PIL import Image

from datafiles import IMAGES
from nst_jax.cli.run import main

GOLDEN = IMAGES / "golden.json"
RECORD = os.environ.get("NST_JAX_RECORD_GOLDEN") == "1"

CONTENT, STYLE, STYLE2 = IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", IMAGES / "the_scream.jpg"
CASES = {
    "neural-style-lbfgs": ["--image-size", "64", "--num-steps", "12", "--seed", "3"],
    "gatys-zoom": ["--preset", "gatys", "--image-size", "48", "--num-steps", "6"],
    "adam-content-luminance": ["--optimizer", "adam", "--init", "content", "--tv-loss", "l1",
                               "--original-colors", "luminance", "--image-size", "64",
                               "--num-steps", "15", "--learning-rate", "2"],
    "two-scales-blend": ["STYLE2", "--scales", "2", "--image-size", "64", "--num-steps", "5",
                         "--style-blend-weights", "1,3"],
    "sweep-seeds": ["--sweep-seed", "1,2", "--optimizer", "adam", "--image-size", "48",
                    "--num-steps", "8", "--storage-dtype", "bfloat16"],
}


def machine():
    """What the recorded hashes depend on besides the code."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_case(name, params_path, folder):
    flags = [str(STYLE2) if flag == "STYLE2" else flag for flag in CASES[name]]
    output, report = folder / f"{name}.png", folder / f"{name}.json"
    status = main([str(CONTENT), str(STYLE), *flags, "--weights", str(params_path), "-o", str(output),
                   "--report", str(report), "--print-every", "4"])
    assert status == 0
    digest = hashlib.sha256()
    for path in sorted(folder.glob(f"{name}*.png")):  # a sweep writes one file per member
        digest.update(path.name.encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    visits = json.loads(report.read_text())["visits"]
    digest.update(np.asarray([visit["losses"] for visit in visits], np.float32).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_output_is_unchanged(name, synthetic_params_path, tmp_path):
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"machine": None, "cases": {}}
    if RECORD:
        if recorded["machine"] != machine():
            recorded = {"machine": machine(), "cases": {}}
        recorded["cases"][name] = run_case(name, synthetic_params_path, tmp_path)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    if recorded["machine"] != machine():
        pytest.skip(f"golden hashes were recorded on {recorded['machine']}, this is {machine()}")
    assert run_case(name, synthetic_params_path, tmp_path) == recorded["cases"][name]
