"""Python scripts run in a fresh process on N simulated CPU devices (XLA's host device count):
the device count is fixed when JAX starts, so sharded runs cannot share the test process."""

import json
import os
import subprocess
import sys

from datafiles import ROOT


def device_env(count):
    """The environment of a process that sees `count` CPU devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


def run_script(script, *args, devices=4, timeout=600):
    """`python -c script args...` from the repository root on `devices` devices; the process."""
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=device_env(devices), cwd=ROOT, timeout=timeout)


def json_report(completed):
    """The JSON a script printed last, once it exited 0 (else its stderr's end in the failure)."""
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
