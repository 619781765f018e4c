"""--preview and NotebookPreview without a browser: the address flag and its one-line errors
(a port in use fails before any input is read), what the server serves and refuses, the
LiveRun's deltas, throttle and failures, a slow or vanished browser never holding up the run,
the page's end states, a real command's event stream, a clip's frames, and the notebook view.

The page itself, in headless Chromium: tests/test_preview_browser.py.
"""

import base64
import contextlib
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax.cli import run as image_cli
from nst_jax.cli import video as video_cli
from nst_jax.cli.preview import preview_session
from nst_jax.errors import UserInputError
from nst_jax.imaging.images import load_image
from nst_jax.preview import live as live_module
from nst_jax.preview.live import LiveRun
from nst_jax.preview.server import PreviewServer, parse_address
from nst_jax.preview.thumbnails import preview_side, thumbnail
from datafiles import IMAGES

ROOT = Path(__file__).resolve().parent.parent
CONTENT, STYLE, STYLE_2 = IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", IMAGES / "the_scream.jpg"
# test_video's cheap clip flags at a size of our own: test_video counts the programs its clips
# compile, which a clip of its own size run earlier in the process would have compiled already.
OWN_SIZE = ("--image-size", "40")
CHEAP_FLAGS = ("--image-size", "48", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1",
               "--optimizer", "adam", "--learning-rate", "5", "--print-every", "0", "--no-compile-cache")
# A JPEG preview against the image it was made from (quality 85), both averaged over 4×4 blocks
# (JPEG keeps the coarse picture; the synthetic weights' noise-like outputs lose their fine grain):
# mean error in 8-bit levels. The previous visit's image is 30+ levels away.
JPEG_MEAN_LEVELS = 4.0
BLOCK = 4


def _main(main, argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, stderr.getvalue()


def _decode(uri):
    """A data: URI's image (the previews' JPEG, a canvas's PNG) as float RGB in [0, 1]."""
    encoded = uri.split(",", 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"), np.float32) / 255


def _blocks(rgb):
    height, width = rgb.shape[0] // BLOCK * BLOCK, rgb.shape[1] // BLOCK * BLOCK
    return rgb[:height, :width].reshape(height // BLOCK, BLOCK, width // BLOCK, BLOCK, 3).mean((1, 3))


def _matches(preview_uri, image, side):
    """A preview shows `image` (the run's own): same size as its thumbnail, pixels within JPEG's error."""
    expected = np.asarray(thumbnail(image, side), np.float32) / 255
    shown = _decode(preview_uri)
    assert shown.shape == expected.shape
    assert np.abs(_blocks(shown) - _blocks(expected)).mean() * 255 < JPEG_MEAN_LEVELS


def _events(url, until=("done", "interrupted", "failed"), timeout=120):
    """Every server-sent event of `url` + "events" until an ended status."""
    events = []
    with urllib.request.urlopen(url + "events", timeout=timeout) as stream:
        for raw in stream:
            if raw.startswith(b"data: "):
                events.append(json.loads(raw[6:]))
                if events[-1]["status"] in until:
                    break
    return events


@pytest.fixture
def busy_port():
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


# --- the flag ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, address", [
    ("8000", ("127.0.0.1", 8000)), ("0", ("127.0.0.1", 0)), ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("[::1]:9000", ("::1", 9000)), ("localhost:1", ("localhost", 1)), (" 65535 ", ("127.0.0.1", 65535))])
def test_preview_addresses_parse_with_127_0_0_1_by_default(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text, problem", [
    ("abc", "expected [HOST:]PORT"), ("70000", "0..65535"), ("host:", "expected"), (":80", "expected"),
    ("a:b:80", "expected"), ("", "expected")])
def test_bad_preview_values_are_one_line_naming_the_flag(text, problem, tmp_path):
    status, err = _main(image_cli.main, [CONTENT, STYLE, "--preview", text, "-o", tmp_path / "o.png"])
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: --preview") and problem in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("main, output", [(image_cli.main, "out.png"), (video_cli.main, "out.mp4")])
def test_a_port_in_use_is_one_line_before_any_input_is_read(main, output, busy_port, tmp_path):
    # The content does not exist: the error is the port's, so nothing was read (nor compiled) first.
    status, err = _main(main, [tmp_path / "missing.jpg", STYLE, "--preview", f"127.0.0.1:{busy_port}",
                               "-o", tmp_path / output])
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --preview 127.0.0.1:{busy_port}: the port is in use")
    assert not list(tmp_path.iterdir())


def test_preview_with_a_mode_that_runs_no_steps_is_refused(tmp_path):
    status, err = _main(image_cli.main, [CONTENT, STYLE, "--preview", "0", "--estimate-memory"])
    assert status == 2 and err == "error: --preview: shows a run as it goes; --estimate-memory runs no steps\n"


def test_an_address_this_machine_does_not_have_is_one_line():
    with pytest.raises(UserInputError, match=r"--preview 192\.0\.2\.1:0: this machine has no such address"):
        PreviewServer(("192.0.2.1", 0), LiveRun())  # TEST-NET-1: never this machine's


# --- the server ------------------------------------------------------------------------------

@pytest.fixture
def served():
    live = LiveRun("photo.jpg in the style of a.jpg")
    server = PreviewServer(("127.0.0.1", 0), live)
    yield live, server
    live.end("done")
    server.close(grace=0)


def _request(server, path, method="GET", host=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read() if path != "/events" else b""
    headers = dict(response.getheaders())
    connection.close()
    return response.status, headers, body


def test_the_server_serves_its_page_and_state_and_nothing_else(served):
    live, server = served
    status, headers, body = _request(server, "/")
    assert status == 200 and b"EventSource" in body and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, _, body = _request(server, "/state.json")
    assert status == 200 and json.loads(body)["info"]["title"] == "photo.jpg in the style of a.jpg"
    for path in ("/../../etc/passwd", "/page.html", "/nst_jax/preview/page.html", "/%2e%2e/etc/passwd",
                 "/events/../../x"):
        assert _request(server, path)[0] == 404, path
    assert _request(server, "/", method="POST")[0] == 501
    assert _request(server, "/", method="DELETE")[0] == 501


@pytest.mark.parametrize("host, allowed", [("127.0.0.1:1", True), ("localhost:1", True), ("[::1]:1", True),
                                           ("evil.example:1", False), ("127.0.0.1.evil.example", False)])
def test_a_loopback_preview_answers_only_requests_naming_this_machine(served, host, allowed):
    # A page elsewhere that rebinds its name to 127.0.0.1 sends its own name as the Host.
    assert (_request(served[1], "/", host=host)[0] == 200) == allowed


def test_the_server_stops_with_the_run(served):
    live, server = served
    live.end("done", "done after 3 steps")
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


# --- the live state --------------------------------------------------------------------------

def test_snapshots_send_each_view_only_what_it_has_not_seen():
    live = LiveRun("t")
    live.describe(["a", "b"], {"image_size": 64}, total=30)
    live.progress(10, 30, {"total": np.array([3.0, 4.0]), "style": np.array([2.0, np.inf])})
    first, seen = live.snapshot()
    assert first["info"]["labels"] == ["a", "b"] and first["status"] == "running"
    assert first["history"] == {"reset": True, "points": [{"step": 10, "terms": {"total": [3.0, 4.0],
                                                                                  "style": [2.0, None]}}]}
    assert "images" not in first
    live.progress(12, 30)  # a piece's speed: no point of the curve
    live.progress(20, 30, {"total": np.array([1.0, 2.0])})
    second, seen = live.snapshot(seen)
    assert "info" not in second and second["step"] == 20
    assert second["history"] == {"reset": False, "points": [{"step": 20, "terms": {"total": [1.0, 2.0]}}]}
    third, _ = live.snapshot(seen)
    assert third["history"]["points"] == [] and third["version"] == second["version"]
    live.begin_frame(1)  # a video's next frame: a new curve
    fourth, _ = live.snapshot(seen)
    assert fourth["history"] == {"reset": True, "points": []} and fourth["frame"] == 1
    json.dumps(first, allow_nan=False)  # what the page parses: no NaN or Infinity


def test_a_long_run_keeps_its_whole_curve_in_fewer_points(monkeypatch):
    monkeypatch.setattr(live_module, "MAX_POINTS", 100)
    live = LiveRun()
    _, seen = live.snapshot()
    for step in range(1, 251):
        live.progress(step, 250, {"total": np.array([1.0 / step])})
    state, _ = live.snapshot(seen)
    steps = [point["step"] for point in state["history"]["points"]]
    assert state["history"]["reset"] and len(steps) <= 100
    assert steps[0] == 1 and steps[-1] == 250 and steps == sorted(steps)


def test_previews_are_made_off_the_callers_thread_newest_first_and_throttled():
    live = LiveRun(min_interval=0.3)
    made, gate = [], threading.Event()

    def images(step):
        def make():
            made.append((step, threading.current_thread().name))
            gate.wait(10)
            return [np.full((30, 40, 3), step / 100, np.float32)]
        return make

    live.offer_images(1, images(1))  # taken at once by the worker, which waits on the gate
    for _ in range(100):
        if made:
            break
        time.sleep(0.01)
    for step in range(2, 40):  # offered meanwhile: each replaces the last
        live.offer_images(step, images(step))
    gate.set()
    version = live.version
    while live.image_step != 39:
        version = live.wait(version, 5)
    assert [step for step, _ in made] == [1, 39]
    assert {name for _, name in made} == {"nst-jax preview"}
    state, _ = live.snapshot()
    assert state["images"]["step"] == 39
    np.testing.assert_allclose(_decode(state["images"]["uris"][0]), 0.39, atol=3 / 255)
    live.end("done")


def test_a_preview_that_fails_is_shown_and_the_run_goes_on():
    live = LiveRun(min_interval=0)

    def broken():
        raise RuntimeError("no pixels")

    live.offer_images(3, broken)
    live.end("done", "done after 3 steps")
    state, _ = live.snapshot()
    assert state["status"] == "done" and "RuntimeError: no pixels" in state["problem"]


def test_the_end_publishes_the_final_images_once_and_stays():
    live = LiveRun()
    live.offer_images(5, lambda: [np.zeros((8, 8, 3))])
    final = np.ones((8, 8, 3), np.float32)
    live.end("interrupted", "interrupted after 7 steps", [final], step=7)
    live.end("done")  # later ends change nothing
    live.offer_images(9, lambda: [np.zeros((8, 8, 3))])
    state, _ = live.snapshot()
    assert (state["status"], state["message"], state["step"]) == ("interrupted", "interrupted after 7 steps", 7)
    np.testing.assert_allclose(_decode(state["images"]["uris"][0]), 1.0, atol=2 / 255)


@pytest.mark.parametrize("raised, status, message", [
    (UserInputError("--weights w.npz: not a params file"), "failed", "error: --weights w.npz: not a params file"),
    (RuntimeError("XLA ran out\nof memory"), "failed", "error: RuntimeError: XLA ran out"),
    (KeyboardInterrupt(), "interrupted", "interrupted")])
def test_a_run_that_ends_by_an_exception_says_so_on_its_page(raised, status, message):
    with pytest.raises(type(raised)):
        with preview_session(("127.0.0.1", 0), "t", io.StringIO()) as live:
            raise raised
    assert (live.status, live.message) == (status, message)


def test_a_slow_or_vanished_browser_never_holds_up_the_run(served):
    live, server = served
    live.describe(["a"], {}, total=400)
    # One browser that reads nothing (its socket's buffers fill), one that leaves after an event.
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    gone = urllib.request.urlopen(server.url + "events", timeout=10)
    gone.readline()
    gone.close()
    noise = np.random.default_rng(0).random((512, 512, 3)).astype(np.float32)  # large previews
    slowest = 0.0
    for step in range(1, 401):
        began = time.perf_counter()
        live.progress(step, 400, {"total": np.array([1.0 / step])})
        live.offer_images(step, lambda: [noise])
        slowest = max(slowest, time.perf_counter() - began)
        if step % 50 == 0:
            time.sleep(0.3)  # the worker makes previews: the stuck feed has megabytes to send
    assert live.image_version >= 4
    # Handing over never waits for a browser: a stalled send would hold a call for the socket's
    # timeout (10 s); a bound of a second leaves room for a busy machine's scheduling.
    assert slowest < 1.0, slowest
    began = time.perf_counter()
    live.end("done")
    server.close()  # waits END_GRACE_SECONDS at most for the stuck page
    assert time.perf_counter() - began < 5
    stuck.close()


# --- whole runs --------------------------------------------------------------------------------

def test_a_batch_command_streams_its_run_and_ends_its_page(synthetic_params_path, tmp_path):
    """The real command in its own process: the page's events from start to end."""
    output = tmp_path / "out.png"
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_jax.run", CONTENT, STYLE, STYLE_2, "--batch", "--weights",
         synthetic_params_path, *CHEAP_FLAGS, "--num-steps", "30", "-o", output, "--preview", "0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        said = [process.stderr.readline() for _ in range(1)]
        while not said[-1].startswith("preview: ") and said[-1]:  # a library's warning may come first
            said.append(process.stderr.readline())
        url = re.fullmatch(r"preview: (http://127\.0\.0\.1:\d+/) \(open it in a browser; it ends with the run\)\n",
                           said[-1]).group(1)
        events = _events(url)
        rest = process.stderr.read()
    finally:
        process.kill() if process.poll() is None else None
    assert process.wait(60) == 0, rest
    statuses = [event["status"] for event in events]
    assert statuses[-1] == "done" and "running" in statuses
    described = [event["info"] for event in events if "info" in event][-1]  # after the page connected
    assert described["labels"] == ["starry_night", "the_scream"] and described["settings"]["image_size"] == 48
    points = [point["step"] for event in events for point in event["history"]["points"]]
    assert points == [10, 20, 30]  # the curve grows at each progress visit
    final = events[-1]
    paths = [tmp_path / "out_starry_night.png", tmp_path / "out_the_scream.png"]
    assert final["message"].startswith("done after 30 steps") and str(paths[0]) in final["message"]
    for uri, path in zip(final["images"]["uris"], paths):
        _matches(uri, load_image(path), preview_side(2))
    with pytest.raises(OSError):  # the server stopped with the run
        urllib.request.urlopen(url, timeout=5)


def test_a_clip_shows_each_finished_frame_and_its_current_one(synthetic_params_path, tmp_path):
    from test_video import CHEAP_FLAGS as VIDEO_FLAGS, translating, write_folder
    clip = write_folder(tmp_path / "clip", translating(3))
    args, settings, video = video_cli.parse_and_validate(
        [clip, STYLE, "--weights", synthetic_params_path, *VIDEO_FLAGS, "-o", tmp_path / "out", *OWN_SIZE])
    live = LiveRun("clip", min_interval=0)
    shown = []
    original = live.offer_images

    def offer(step, images):  # what each visit would show: made here to compare
        shown.append((live.frame, step, images()[0]))
        original(step, images)

    live.offer_images = offer
    from nst_jax.weights.fetch import load_weights
    result = video_cli.stylize_video_files(args, settings, video, lambda: load_weights(str(synthetic_params_path)),
                                           stream=io.StringIO(), preview=live)
    assert not result.interrupted
    state, _ = live.snapshot()
    assert state["status"] == "done" and state["message"].startswith("done: 3 frames")
    assert [index for index, _ in state["frames"]] == [0, 1, 2]
    assert state["info"]["kind"] == "video" and state["frames_total"] == 3
    for index, uri in state["frames"]:
        frame = load_image(tmp_path / "out" / f"frame_{index + 1:05d}.png")
        _matches(uri, frame, 160)
        last_visit = [image for frame_index, step, image in shown if frame_index == index][-1]
        # The frame's last visit shows what was written (8-bit PNG).
        np.testing.assert_allclose(last_visit, frame, atol=1 / 255)


def test_the_notebook_view_draws_a_batch_in_one_cell(params):
    import nst_jax
    from nst_jax.config.presets import preset
    from nst_jax.weights.params_file import Model
    settings = preset("gatys").replace(image_size=32, content_layers=("relu2_1",), content_layer_weights=None,
                                       style_layers=("relu1_1", "relu2_1"), style_layer_weights=None,
                                       optimizer="adam", learning_rate=5.0, num_steps=20)
    content = load_image(CONTENT, 32)
    styles = [load_image(STYLE, 32), load_image(STYLE_2, 32)]
    members = nst_jax.make_members(settings, ["starry", "scream"])
    drawn = []
    with nst_jax.NotebookPreview([m.label for m in members], "notebook run", display=drawn.append,
                                 min_interval=0) as preview:
        results = nst_jax.stylize_batch(content, styles, settings, Model(params, "caffe"), members,
                                        nst_jax.RunOptions(on_visit=preview, intervals=(10,)))
        preview.show_results(results)
    final = drawn[-1]
    assert 'data-status="done"' in final and "done after 20 steps" in final
    uris = re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', final)
    assert len(uris) == 2 and "starry" in final and "scream" in final
    for uri, result in zip(uris, results):
        _matches(uri, result.image, preview_side(2))
    assert final.count("<polyline") == 4  # total, content, style, tv of the first output
    assert any('data-status="running"' in html for html in drawn[:-1])


def test_the_notebook_view_updates_one_ipython_display_in_place():
    """Without a display of its own, NotebookPreview draws through IPython's display machinery:
    one display made when it starts, then updates of that display (what a notebook redraws)."""
    from IPython.core.interactiveshell import InteractiveShell
    from nst_jax import NotebookPreview
    from nst_jax.engine.stylize import Visit
    shell = InteractiveShell.instance()
    published = []
    original = shell.display_pub.publish
    shell.display_pub.publish = lambda data, metadata=None, **kwargs: published.append((data, kwargs))
    try:
        with NotebookPreview(title="in a notebook", min_interval=0) as preview:
            image = np.full((24, 32, 3), 0.5, np.float32)
            preview(Visit(step=10, total_steps=20, terms={"total": np.array([2.0])}, images=lambda: [image]))
    finally:
        shell.display_pub.publish = original
    first, *updates = published
    display_id = first[1]["transient"]["display_id"]
    assert not first[1].get("update") and updates
    assert all(kwargs.get("update") and kwargs["transient"]["display_id"] == display_id for _, kwargs in updates)
    final = updates[-1][0]["text/html"]
    assert 'data-status="done"' in final and "in a notebook" in final and "<img src=\"data:image/jpeg" in final
