"""The --preview page in a real browser: headless Chromium (the OS's package) driven by Selenium
with the OS's ChromeDriver.

The page loads, shows images whose pixels are the run's latest, its loss plot grows at each
progress visit, its grid has one cell per output, a clip shows its finished frames, and the page
says when the run is done, has failed or cannot be reached. Skipped, with the reason, where no
Chromium is installed; CI installs it (Debian: chromium, chromium-driver) and sets
NST_JAX_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""

import io
import os
import time

import numpy as np
import pytest

pytest.importorskip("selenium.webdriver")

from nst_jax.cli.files import BatchRequest, stylize_files  # noqa: E402
from nst_jax.cli.preview import preview_session  # noqa: E402
from nst_jax.config.presets import preset  # noqa: E402
from nst_jax.errors import UserInputError  # noqa: E402
from nst_jax.imaging.images import load_image  # noqa: E402
from nst_jax.preview.live import LiveRun  # noqa: E402
from nst_jax.preview.server import PreviewServer  # noqa: E402
from nst_jax.preview.thumbnails import FRAME_SIDE, preview_side, thumbnail  # noqa: E402
from nst_jax.weights.fetch import load_weights  # noqa: E402
from bench.browser import INSTALL_HINT, browser_paths, open_browser  # noqa: E402
from datafiles import IMAGES  # noqa: E402
from test_preview import JPEG_MEAN_LEVELS, _blocks, _decode  # noqa: E402

CONTENT, STYLE, STYLE_2 = IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", IMAGES / "the_scream.jpg"
# test_video's cheap clip flags at a size of our own: test_video counts the programs its clips
# compile, which a clip of its own size run earlier in the process would have compiled already.
OWN_SIZE = ("--image-size", "40")
PAGE_TIMEOUT_S = 20  # for the page to show what the run has published (it takes well under a second)
STYLE_COLOR = (0xFF, 0x94, 0x48)  # the page's colour for the style term's curve


@pytest.fixture(scope="module")
def browser():
    if browser_paths() is None:
        reason = f"no Chromium and ChromeDriver on this machine ({INSTALL_HINT})"
        if os.environ.get("NST_JAX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and NST_JAX_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    with open_browser() as session:
        yield session


def _js(browser, script):
    return browser.execute_script(script)


def _wait(browser, script, what):
    """Until the page's `script` returns something true: that value."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        value = _js(browser, script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"the page did not show {what} within {PAGE_TIMEOUT_S} s")


def _cell_pixels(browser, selector, index):
    """The RGB pixels of the index-th <img> under `selector`, as the page holds them."""
    return _decode(_js(browser, f"""
        const img = document.querySelectorAll({selector!r})[{index}];
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        canvas.getContext("2d").drawImage(img, 0, 0);
        return canvas.toDataURL("image/png");"""))


def _shows(browser, selector, index, image, side):
    shown, expected = _cell_pixels(browser, selector, index), np.asarray(thumbnail(image, side), np.float32) / 255
    assert shown.shape == expected.shape
    assert np.abs(_blocks(shown) - _blocks(expected)).mean() * 255 < JPEG_MEAN_LEVELS


class _PageWatchedRun(LiveRun):
    """A LiveRun that, at each progress visit, holds the run until the page shows that visit:
    its point on the curve and its images (what the page had is recorded)."""

    def __init__(self, browser, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.browser, self.seen = browser, []

    def offer_images(self, step, images):
        super().offer_images(step, images)
        points = len(self.points)
        _wait(self.browser, f"return nstPreview.points.length === {points} && nstPreview.imageStep === {step}",
              f"the visit of step {step}")
        self.seen.append((step, _js(self.browser, "return nstPreview.points.length")))


def test_the_page_follows_a_batch_sweep_to_its_end(browser, synthetic_params_path, tmp_path):
    settings = preset("gatys").replace(image_size=48, content_layers=("relu2_1",), content_layer_weights=None,
                                       style_layers=("relu1_1", "relu2_1"), style_layer_weights=None,
                                       optimizer="adam", learning_rate=5.0, num_steps=30, print_every=0)
    live = _PageWatchedRun(browser, "tubingen.jpg in the style of two paintings")
    server = PreviewServer(("127.0.0.1", 0), live)
    try:
        browser.get(server.url)
        assert _wait(browser, "return nstPreview.events >= 1 && document.getElementById('status').textContent",
                     "its first state") == "starting"
        results = stylize_files(CONTENT, [STYLE, STYLE_2], str(tmp_path / "out.png"), settings,
                                lambda: load_weights(str(synthetic_params_path)),
                                batch=BatchRequest(per_style=True, style_weights=(100.0, 10000.0)),
                                stream=io.StringIO(), preview=live)
        _wait(browser, "return nstPreview.status === 'done'", "the end")
        # The plot grew by one point at each visit, and the page had each visit's images.
        assert live.seen == [(10, 1), (20, 2), (30, 3)]
        labels = ["starry_night_sw100", "starry_night_sw10000", "the_scream_sw100", "the_scream_sw10000"]
        assert _js(browser, "return [...document.querySelectorAll('#grid figcaption')].map(c => c.textContent)") \
            == labels
        assert _js(browser, "return document.getElementById('status').textContent") == "done"
        assert _js(browser, "return document.getElementById('message').textContent").startswith("done after 30 steps")
        for index, (path, result) in enumerate(results):
            assert path.endswith(f"out_{labels[index]}.png")
            _shows(browser, "#grid img", index, load_image(path), preview_side(4))
        plot = _decode(_js(browser, "return document.getElementById('plot').toDataURL('image/png')"))
        assert (np.abs(plot - np.asarray(STYLE_COLOR, np.float32) / 255).max(-1) < 0.1).sum() > 50
    finally:
        server.close(grace=0)


def test_the_page_shows_a_clips_frames_as_they_finish(browser, synthetic_params_path, tmp_path):
    from nst_jax.cli import video as video_cli
    from test_video import CHEAP_FLAGS as VIDEO_FLAGS, translating, write_folder
    clip = write_folder(tmp_path / "clip", translating(3))
    args, settings, video = video_cli.parse_and_validate(
        [clip, STYLE, "--weights", synthetic_params_path, *VIDEO_FLAGS, "-o", tmp_path / "out", *OWN_SIZE])
    live = LiveRun("clip in the style of starry_night.jpg")
    server = PreviewServer(("127.0.0.1", 0), live)
    try:
        browser.get(server.url)
        _wait(browser, "return nstPreview.events >= 1", "its first state")
        video_cli.stylize_video_files(args, settings, video, lambda: load_weights(str(synthetic_params_path)),
                                      stream=io.StringIO(), preview=live)
        _wait(browser, "return nstPreview.status === 'done'", "the end")
        assert _js(browser, "return nstPreview.frames") == [0, 1, 2]
        assert _js(browser, "return document.getElementById('frame-line').textContent.trim()") == "frame 3 of 3 ·"
        assert not _js(browser, "return document.getElementById('strip-box').hidden")
        for index in range(3):
            frame = load_image(tmp_path / "out" / f"frame_{index + 1:05d}.png")
            _shows(browser, "#strip img", index, frame, FRAME_SIDE)
        # The large image is the last frame as its last visit left it: what was written.
        _shows(browser, "#grid img", 0, load_image(tmp_path / "out" / "frame_00003.png"), preview_side(1))
    finally:
        server.close(grace=0)


def test_the_page_says_when_a_run_failed_and_when_its_process_is_gone(browser):
    said = io.StringIO()
    with pytest.raises(UserInputError):
        with preview_session(("127.0.0.1", 0), "a run", said):
            browser.get(said.getvalue().split()[1])  # "preview: URL (open it ...)"
            _wait(browser, "return nstPreview.events >= 1", "its first state")
            raise UserInputError("--weights w.npz: not a params file")
    _wait(browser, "return nstPreview.status === 'failed'", "the failure")
    assert _js(browser, "return document.getElementById('message').textContent") == \
        "error: --weights w.npz: not a params file"
    # A process that ends without a word (killed): the page says it has no connection.
    live = LiveRun("a run")
    server = PreviewServer(("127.0.0.1", 0), live)
    browser.get(server.url)
    _wait(browser, "return nstPreview.events >= 1", "its first state")
    server.close(grace=0)
    _wait(browser, "return nstPreview.status === 'lost'", "the lost connection")
    assert _js(browser, "return document.getElementById('status').textContent") == "no connection"

