"""Several hosts: the same batched command on two processes (jax.distributed over 127.0.0.1).

Each process has two simulated CPU devices, so the batch is sharded over four devices on two
hosts; the images the first host writes must equal a one-process run's.
"""

import signal
import socket
import subprocess
import sys

import numpy as np

from nst_jax.imaging.images import load_image
from datafiles import IMAGES, ROOT
from simulated import device_env



def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(weights, output, *extra):
    return [sys.executable, "-m", "nst_jax.run", str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg"),
            "-o", str(output), "--weights", str(weights), "--sweep-seed", "0,1,2", "--image-size", "32",
            "--num-steps", "3", "--optimizer", "adam", "--init", "noise", "--init-noise-std", "0.1",
            "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1", *extra]


def test_two_hosts_write_what_one_host_writes(synthetic_params_path, tmp_path):
    env = device_env(2)
    port = _free_port()
    outputs = [tmp_path / f"host{i}" for i in range(2)]
    for folder in outputs:
        folder.mkdir()
    # With --preview: the first host serves, and every host gathers the images at each visit (a
    # collective: a host that skipped it would hang the others).
    hosts = [subprocess.Popen(_command(synthetic_params_path, outputs[i] / "out.png", "--coordinator",
                                       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                                       "--preview", "127.0.0.1:0"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        logs = [host.communicate(timeout=300) for host in hosts]
    finally:
        for host in hosts:
            host.kill()
    assert [host.returncode for host in hosts] == [0, 0], [log[1][-2000:] for log in logs]
    assert ["preview: http://127.0.0.1:" in log[1] for log in logs] == [True, False]

    single = tmp_path / "single"
    single.mkdir()
    completed = subprocess.run(_command(synthetic_params_path, single / "out.png"), cwd=ROOT, timeout=300,
                               env=device_env(4),
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]

    names = sorted(p.name for p in single.iterdir())
    assert names == ["out_seed0.png", "out_seed1.png", "out_seed2.png"]
    assert sorted(p.name for p in outputs[0].iterdir()) == names  # the first host writes
    assert list(outputs[1].iterdir()) == []  # the others do not
    for name in names:
        np.testing.assert_allclose(load_image(outputs[0] / name), load_image(single / name), atol=2 / 255)


def test_a_signal_to_one_host_stops_every_host_at_the_same_step(synthetic_params_path, tmp_path):
    """A scheduler's SIGTERM reaching one host first: every host stops at the same step (they
    agree at each piece of a chunk), the first writes, none hangs in a collective the others
    left."""
    env = device_env(2)
    port = _free_port()
    hosts = [subprocess.Popen(_command(synthetic_params_path, tmp_path / f"host{i}.png", "--coordinator",
                                       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                                       "--num-steps", "100000", "--print-every", "1"),
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        for line in hosts[0].stderr:  # the first host prints the progress
            if "it/s" in line:
                break
        hosts[1].send_signal(signal.SIGTERM)
        statuses = [host.wait(timeout=60) for host in hosts]
        stderr = hosts[0].stderr.read()
    finally:
        for host in hosts:
            host.kill()
    assert statuses == [130, 143], (statuses, stderr[-2000:])  # stopped; the signalled one says which
    assert "interrupted after" in stderr, stderr[-2000:]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["host0_seed0.png", "host0_seed1.png", "host0_seed2.png"], written
