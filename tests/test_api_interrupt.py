"""An interrupted `stylize()` stops its computation, not only the Python call: the next call runs
as fast as it would have without the interrupt, in a script (SIGINT) and in a real Jupyter kernel
(the notebook's interrupt button: jupyter_client's interrupt_kernel)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from datafiles import IMAGES

# Within this of the call before the interrupt (the goal is 1 s; a busy CI machine gets slack on
# a 20-step call that takes about half a second). Before the fix the next call waited for the
# interrupted chunk: minutes.
SLACK_S = 1.0

SETUP = """
import json, os, signal, threading, time
from nst_jax import Model, load_params, preset, stylize
from nst_jax.imaging.images import load_image
params, metadata = load_params({weights!r})
model = Model(params, metadata.preprocessing)
content, style = load_image({content!r}, 64), load_image({style!r}, 64)
settings = preset("neural-style").replace(image_size=64, num_steps=20, content_layers=("relu2_1",),
    content_layer_weights=None, style_layers=("relu1_1", "relu2_1"), style_layer_weights=None)

def timed(steps):
    began = time.perf_counter()
    result = stylize(content, [style], settings.replace(num_steps=steps), model)
    return time.perf_counter() - began, result

timed(20)  # compiles
before, _ = timed(20)
"""
LONG = "began = time.perf_counter(); long_seconds, long = timed(10 ** 6)"
AFTER = """after, _ = timed(20)
print(json.dumps({"before": before, "after": after, "interrupted": long.interrupted,
                  "steps": long.steps_done, "returned_after": time.perf_counter() - began}))
"""


def _code(synthetic_params_path):
    return SETUP.format(weights=str(synthetic_params_path), content=str(IMAGES / "tubingen.jpg"),
                        style=str(IMAGES / "starry_night.jpg"))


def _check(report):
    assert report["interrupted"] and report["steps"] > 0, report
    assert report["after"] < report["before"] + SLACK_S, report


def test_an_interrupted_call_in_a_script_leaves_the_device_free(synthetic_params_path, tmp_path):
    script = tmp_path / "script.py"
    # SIGINT 3 s into the long call, as a Ctrl-C in the terminal would send it.
    script.write_text(_code(synthetic_params_path) + textwrap.dedent("""
        threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        """) + LONG + "\n" + AFTER)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    _check(report)
    assert report["returned_after"] < 3.0 + 5.0, report  # the interrupt ended the call


def test_an_interrupted_call_in_a_jupyter_kernel_leaves_the_device_free(synthetic_params_path):
    manager_module = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    manager, client = manager_module.start_new_kernel(kernel_name="python3",
                                                      env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        def run(code, timeout=240):
            outputs = []
            reply = client.execute_interactive(code, timeout=timeout, output_hook=lambda message: outputs.append(
                message["content"].get("text", "")) if message["msg_type"] == "stream" else None)
            return reply["content"]["status"], "".join(outputs)

        status, output = run(f"import sys; sys.path.insert(0, {str(IMAGES.parent.parent)!r})\n"
                             + _code(synthetic_params_path))
        assert status == "ok", output
        # The long cell, interrupted from outside as the notebook's button does.
        message_id = client.execute(LONG)
        time.sleep(3.0)
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != message_id:
            reply = client.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]  # returned, interrupted=True
        status, output = run(AFTER)
        assert status == "ok", output
        _check(json.loads(output.strip().splitlines()[-1]))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
