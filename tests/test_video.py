"""Videos: optical flow and warping, temporal consistency, one compile per clip, resume, bad input, I/O.

Clips are synthetic (a smooth random texture translating a few pixels per frame, made with PyAV or
as PNG folders) and tiny; the network stops at block 2 (tests/test_batch.py's CHEAP settings).
"""

import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("cv2")

from nst_jax.errors import UserInputError  # noqa: E402
from nst_jax.video import flow, files as video_io  # noqa: E402
from nst_jax.imaging.images import load_image, save_image  # noqa: E402
from nst_jax.config.presets import preset  # noqa: E402
from nst_jax.engine.timings import CompileCounter  # noqa: E402
from nst_jax.cli.video import main  # noqa: E402
from nst_jax.video.transfer import FrameOptions, VideoSettings, output_warping_error, stylize_frames  # noqa: E402
from nst_jax import Model  # noqa: E402
from datafiles import ROOT  # noqa: E402

CHEAP = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), image_size=48,
             init="noise", init_noise_std=0.1)
CHEAP_FLAGS = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--image-size", "48",
               "--optimizer", "adam", "--learning-rate", "8", "--num-steps", "12", "--frame-steps", "6",
               "--print-every", "0", "--no-compile-cache"]


def texture(height, width, dx=0.0, dy=0.0, seed=0):
    """A smooth random RGB texture in [0, 1], shifted by (dx, dy) px: a sum of plane waves, so a
    sub-pixel shift is exact (no resampling)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs - dx, ys - dy
    image = np.zeros((height, width, 3))
    for _ in range(24):
        frequency = rng.uniform(0.05, 0.35, 2) * rng.choice([-1, 1], 2)
        phases, amplitudes = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.2, 1, 3)
        for channel in range(3):
            image[..., channel] += amplitudes[channel] * np.sin(
                frequency[0] * xs + frequency[1] * ys + phases[channel])
    return ((image + 12) / 24).clip(0, 1).astype(np.float32)


def translating(count, height=48, width=48, step=(2.0, 1.0)):
    return [texture(height, width, step[0] * i, step[1] * i) for i in range(count)]


def write_mp4(path, frames, fps=10, audio=False, rotation=0):
    """An H.264 clip of `frames`, with a mono AAC tone as long as the video when `audio`, tagged
    to be shown turned `rotation` degrees counter-clockwise (a phone's portrait video)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if audio:
            sound = container.add_stream("aac", rate=44100)
            sound.layout = "mono"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray((rgb * 255 + 0.5).astype(np.uint8), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            samples = int(44100 * len(frames) / fps)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)[None]
            for offset in range(0, samples, 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, offset:offset + 1024]),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, offset
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def write_folder(folder, frames):
    folder.mkdir()
    for index, rgb in enumerate(frames):
        save_image(folder / f"f{index:03d}.png", rgb)
    return folder


@pytest.fixture(scope="module")
def style_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    save_image(path, texture(64, 64, seed=3))
    return path


# --- flow -------------------------------------------------------------------------------------

def test_flow_warp_and_mask_on_a_known_translation():
    shift = np.array([2.5, -1.0])  # content moves right 2.5 px and up 1 px
    first, second = texture(96, 128), texture(96, 128, *shift)
    motion = flow.motion(first, second)
    inner = (slice(8, -8), slice(8, -8))
    # second(p) = first(p − shift): the flow back from the second frame is −shift everywhere.
    error = np.linalg.norm(motion.backward[inner] + shift, axis=-1).mean()
    print(f"\nDIS end-point error on a (2.5, -1.0) px shift, 8 px from the borders: {error:.4f} px")
    assert error < 0.2
    forward = flow.frame_flow(first, second)
    assert np.linalg.norm(forward[inner] - shift, axis=-1).mean() < 0.2
    # Warping the first frame along the backward flow gives the second; warping the second
    # along the forward flow gives back the first.
    np.testing.assert_allclose(flow.warp(first, motion.backward)[inner], second[inner], atol=0.03)
    np.testing.assert_allclose(flow.warp(second, forward)[inner], first[inner], atol=0.03)
    assert np.abs(flow.warp(first, motion.backward) - second)[inner].mean() < 0.005
    # The disoccluded strips (3 columns on the left, 1 row at the bottom entered the frame) are
    # masked out; the inside is trusted.
    assert (motion.mask[:, :2] == 0).all() and (motion.mask[-1:, :] == 0).all()
    assert (motion.mask[inner] == 1).all()
    assert not motion.inside[:, :2].any() and motion.inside[inner].all()


def test_consistency_mask_marks_an_occluding_object():
    """A square moving over a still background: what it uncovers is inconsistent or a boundary."""
    background = texture(64, 64, seed=1)
    square = texture(64, 64, seed=2)
    first, second = background.copy(), background.copy()
    first[20:36, 16:32] = square[20:36, 16:32]
    second[20:36, 22:38] = square[20:36, 16:32]  # moved 6 px right: columns 16–21 uncovered
    motion = flow.motion(first, second)
    assert motion.mask[24:32, 17:21].mean() < 0.5  # the uncovered background is not trusted
    assert motion.mask[4:12, 44:60].mean() == 1  # still background far away is


# Ruder et al.'s thresholds written out here (not read from flow.py), so a changed constant fails.
def paper_consistency_mask(forward, backward):
    """An independent float64 transcription of the paper's c for known flows: bilinear fetch with
    edge pixels repeated, central differences (one-sided at the edges), and ŵ inside the image."""
    forward, backward = np.asarray(forward, np.float64), np.asarray(backward, np.float64)
    height, width = backward.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx, sy = xs + backward[..., 0], ys + backward[..., 1]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    at = lambda y, x: forward[np.clip(y, 0, height - 1).astype(int), np.clip(x, 0, width - 1).astype(int)]
    fetched = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
               + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    norm2 = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2
    disoccluded = norm2(fetched + backward) > 0.01 * (norm2(fetched) + norm2(backward)) + 0.5

    def derivative(f, axis):
        f = np.moveaxis(f, axis, 0)
        d = np.empty_like(f)
        d[1:-1] = (f[2:] - f[:-2]) / 2
        d[0], d[-1] = f[1] - f[0], f[-1] - f[-2]
        return np.moveaxis(d, 0, axis)

    gradient2 = sum(derivative(backward[..., c], axis) ** 2 for c in (0, 1) for axis in (0, 1))
    boundary = gradient2 > 0.01 * norm2(backward) + 0.002
    inside = (sx >= 0) & (sx <= width - 1) & (sy >= 0) & (sy <= height - 1)
    return ~disoccluded & ~boundary & inside


def test_forward_backward_test_on_known_flows_just_inside_and_outside_its_threshold():
    """Guards the disocclusion test |w̃+ŵ|² > 0.01(|w̃|²+|ŵ|²) + 0.5 alone: ŵ is uniform (no motion
    boundary) and w is chosen per pixel so that |w̃+ŵ|² is k times the threshold, k from 0.5 to 20
    with 0.97 and 1.03 among them; swapped or scaled constants or a missing test change the mask."""
    ratios = np.array([0.5, 0.9, 0.97, 1.03, 1.1, 2.0, 5.0, 20.0])
    height, width = 24, 32
    ys, xs = np.mgrid[0:height, 0:width]
    for shift in [(0, 0), (-3, 2), (5, -4)]:  # integer ŵ: the fetch w̃(p) = w(p + ŵ) is exact
        b = np.array(shift, np.float64)
        k = ratios[(xs + 3 * ys) % len(ratios)]  # the ratio wanted where w is fetched from
        angle = 2.399 * (xs + width * ys)  # directions all round, so w̃·ŵ takes both signs
        u = np.stack([np.cos(angle), np.sin(angle)], -1)
        # w̃ = d − ŵ with |d|² = k (0.01(|d − ŵ|² + |ŵ|²) + 0.5): a quadratic in r = |d|.
        a, half_b, c = 1 - 0.01 * k, 0.01 * k * (u @ b), -k * (0.02 * (b @ b) + 0.5)
        r = (-half_b + np.sqrt(half_b ** 2 - a * c)) / a
        forward = (r[..., None] * u - b).astype(np.float32)
        backward = np.broadcast_to(b, (height, width, 2)).astype(np.float32)
        mask = flow.consistency_mask(forward, backward)
        np.testing.assert_array_equal(mask, paper_consistency_mask(forward, backward))
        # By construction: trusted exactly where ŵ stays inside and the fetched k is below 1.
        fx, fy = xs + shift[0], ys + shift[1]
        inside = (fx >= 0) & (fx < width) & (fy >= 0) & (fy < height)
        k_fetched = k[np.clip(fy, 0, height - 1), np.clip(fx, 0, width - 1)]
        np.testing.assert_array_equal(mask == 1, inside & (k_fetched < 1))
        assert inside.sum() > 300 and {0.97, 1.03} <= set(k_fetched[inside])


def test_motion_boundary_test_on_known_consistent_flows_just_inside_and_outside_its_threshold():
    """Guards the motion-boundary test |∇û|² + |∇v̂|² > 0.01|ŵ|² + 0.002 alone: two motions (c, ∓s)
    meet at a column (and, transposed, at a row) with flows that agree forward and backward
    exactly; s puts the step's gradient at 0.95 or 1.05 times the threshold, for |ŵ| small and
    large, so swapped or scaled constants or a missing test change the mask."""
    height, width, step = 12, 24, 12
    for along in (0, 4, -3):  # the integer component of both motions, c
        for ratio in (0.95, 1.05):
            # Both motions have |ŵ|² = c² + s²; across the step central differences give |∇v̂|² = s².
            s = np.sqrt(ratio * (0.01 * along ** 2 + 0.002) / (1 - 0.01 * ratio))
            backward = np.zeros((height, width, 2), np.float32)
            backward[..., 0] = along
            backward[:, :step, 1], backward[:, step:, 1] = -s, s
            # Frame t−1's pixels left of column step + c went to the left motion: w = −ŵ there.
            forward = np.zeros((height, width, 2), np.float32)
            forward[:, :step + along] = -backward[0, 0]
            forward[:, step + along:] = -backward[0, -1]
            for transposed in (False, True):
                if transposed:  # the same scene turned: the step is between rows, in û
                    forward, backward = (np.ascontiguousarray(f.transpose(1, 0, 2)[..., ::-1])
                                         for f in (forward, backward))
                mask = flow.consistency_mask(forward, backward)
                expected = paper_consistency_mask(forward, backward)
                np.testing.assert_array_equal(mask, expected)
                # Away from the image's edges, only the two columns beside the step can be masked.
                inner = expected.T if transposed else expected
                inner = inner[1:-1, max(0, -along) + 1:width - max(0, along) - 1]
                columns = np.arange(max(0, -along) + 1, width - max(0, along) - 1)
                beside = np.isin(columns, (step - 1, step))
                assert inner[:, ~beside].all()
                assert inner[:, beside].all() == (ratio < 1) and inner[:, beside].any() == (ratio < 1)


def test_consistency_mask_needs_the_disocclusion_test_where_a_square_uncovers_background():
    """Estimated flow: a bright textured square moves 12 px right over a still dark textured
    background. The strip it uncovers (columns 34–45) gets a smooth backward flow that the
    forward flow does not undo, so only the forward–backward test masks it; the square itself
    and the still background away from it stay trusted."""
    background, square = 0.5 * texture(128, 128, seed=1), 0.5 + 0.5 * texture(128, 128, seed=2)
    first, second = background.copy(), background.copy()
    first[40:88, 34:82] = square[40:88, 34:82]
    second[40:88, 46:94] = square[40:88, 34:82]
    motion = flow.motion(first, second)
    assert (motion.mask[44:84, 38:45] == 0).all()  # the uncovered strip, away from its edges
    assert (motion.mask[44:84, 52:90] == 1).all()  # the moved square, tracked
    for still in [(slice(4, 24), slice(4, -4)), (slice(104, 124), slice(4, -4)),
                  (slice(40, 88), slice(4, 16))]:
        assert (motion.mask[still] == 1).all()


# --- the temporal loss and the compiled loop ---------------------------------------------------

def test_temporal_loss_makes_consecutive_output_frames_consistent_with_one_compile(params, monkeypatch):
    import threading
    frames = translating(5)
    style = texture(64, 64, seed=3)
    motions = [None] + [flow.motion(frames[i - 1], frames[i]) for i in range(1, len(frames))]
    settings = preset("neural-style").replace(optimizer="adam", learning_rate=8.0, num_steps=40,
                                              print_every=0, **CHEAP)

    def run(video):
        outputs = []
        stylize_frames(frames, [style], settings, video, Model(params, "caffe"),
                       FrameOptions(on_frame=lambda result: outputs.append(result.image)))
        return outputs

    flow_threads = []

    def recording_motion(*args):
        flow_threads.append(threading.current_thread())
        return motion(*args)

    motion = flow.motion
    monkeypatch.setattr(flow, "motion", recording_motion)
    with CompileCounter() as compiled:
        temporal = run(VideoSettings(temporal_weight=1e3, frame_steps=20))
    monkeypatch.undo()
    # Each pair's flow once, on the background thread (it runs while the frame before optimizes).
    assert len(flow_threads) == 4 and threading.main_thread() not in flow_threads
    with CompileCounter() as compiled_long:  # 3 earlier frames stacked: other shapes, one compile
        long_term = run(VideoSettings(temporal_weight=1e3, frame_steps=20, long_term=3))
    # Same steps per frame, no temporal loss, each frame from its own start.
    independent = run(VideoSettings(temporal_weight=0.0, frame_steps=20, frame_init="independent"))
    warped_only = run(VideoSettings(temporal_weight=0.0, frame_steps=20))
    errors = [output_warping_error(outputs, motions)
              for outputs in (temporal, independent, warped_only, long_term)]
    print(f"\nwarping error between consecutive output frames (mean squared, RGB in [0, 1], outside "
          f"occlusions): temporal loss 1e3 {errors[0]:.3g}, independent frames {errors[1]:.3g} "
          f"({errors[1] / errors[0]:.1f}x), warped start without the loss {errors[2]:.3g}, "
          f"long-term K=3 {errors[3]:.3g}")
    assert errors[0] * 3 <= errors[1]
    assert errors[0] < errors[2]
    assert errors[3] * 3 <= errors[1]
    assert compiled.programs.count("jit(chunk)") == 1, compiled.programs  # 5 frames, one compile
    assert compiled_long.programs.count("jit(chunk)") == 1, compiled_long.programs


def test_long_term_weights_go_to_the_nearest_frame_that_saw_a_pixel():
    near, middle, far = (np.array([1.0, 0.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0, 0.0]),
                         np.array([1.0, 1.0, 1.0, 0.0]))
    weights = flow.long_term_masks([near, middle, far])
    np.testing.assert_array_equal(np.stack(weights), [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]])


@pytest.mark.parametrize("remat", ["none", "tiles"])
def test_luminance_transfer_with_long_term_frames(params, remat):
    """One-channel pixels (--original-colors luminance) through the warps and stacked targets."""
    frames = translating(4, 32, 40)
    settings = preset("neural-style").replace(optimizer="adam", learning_rate=4.0, num_steps=6,
                                              original_colors="luminance", print_every=0, remat=remat,
                                              **{**CHEAP, "image_size": 40})
    results = []
    stylize_frames(frames, [texture(40, 40, seed=4)], settings,
                   VideoSettings(frame_steps=3, long_term=2), Model(params, "caffe"), FrameOptions(on_frame=results.append))
    assert [r.image.shape for r in results] == [(32, 40, 3)] * 4
    assert [r.pixels.shape for r in results] == [(32, 40, 1)] * 4
    assert results[0].temporal == 0 and all(np.isfinite(r.temporal) for r in results)


@pytest.mark.parametrize("remat", ["none", "tiles"])  # tiles: the network's terms summed over tiles
def test_objective_without_a_temporal_target_is_unchanged(params, remat):
    from nst_jax.loss.objective import Objective, TemporalTarget, loss_terms, loss_weights
    from nst_jax.engine.stages import compute_targets
    settings = preset("neural-style").replace(remat=remat, **CHEAP)
    objective = Objective.from_settings(settings, "caffe")
    pixels = jnp.asarray(texture(32, 32) * 255)
    targets = compute_targets(objective, params, pixels * 0.9, [pixels])
    weights = loss_weights(5.0, 100.0, 1e-3)
    plain = loss_terms(objective, params, pixels, targets, weights)
    previous = pixels + 2.0
    mask = jnp.ones((32, 32)).at[:, :16].set(0)
    with_term = loss_terms(objective, params, pixels,
                           dataclasses.replace(targets, temporal=TemporalTarget(previous, mask)),
                           loss_weights(5.0, 100.0, 1e-3, temporal_weight=3.0))
    assert set(with_term) == set(plain)
    # (1/D) Σ c·(x − ω)²: half the pixels differ by 2, so 3 · 4 / 2.
    np.testing.assert_allclose(with_term["total"] - plain["total"], 3.0 * 4.0 / 2, rtol=1e-3)


# --- the command: resume, bad input, video files ----------------------------------------------

def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, style_path,
                                                                   synthetic_params_path, capsys):
    clip = write_folder(tmp_path / "clip", translating(5))
    # Two earlier frames in the loss: the resumed run needs both frames' pixels back.
    common = [clip, style_path, "--weights", synthetic_params_path, *CHEAP_FLAGS, "--long-term", "2"]
    assert main([*common, "-o", tmp_path / "whole"]) == 0

    def stop_after_second(result):
        if result.index == 1:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    assert main([*common, "-o", resumed], on_frame=stop_after_second) == 130
    assert sorted(p.name for p in resumed.glob("*.png")) == ["frame_00001.png", "frame_00002.png"]
    capsys.readouterr()
    assert main([*common, "-o", resumed]) == 0
    assert "resuming: 2 of 5 frames" in capsys.readouterr().err
    names = sorted(p.name for p in resumed.glob("*.png"))
    assert names == [f"frame_{i:05d}.png" for i in range(1, 6)]
    assert json.loads((resumed / video_io.MANIFEST).read_text())["video"]["long_term"] == 2
    assert not (resumed / video_io.RESUME).exists()  # only needed while frames are missing
    for name in names:
        np.testing.assert_allclose(load_image(resumed / name), load_image(tmp_path / "whole" / name),
                                   atol=1.5 / 255)
    # Other settings do not continue someone else's frames.
    assert main([*common, "-o", resumed, "--style-weight", "7"]) == 2
    assert "other settings (settings.style_weight)" in capsys.readouterr().err


def test_auto_choices_are_resolved_for_the_clip(tmp_path, style_path, synthetic_params_path, monkeypatch):
    """--remat auto and --lbfgs-memory auto reach the clip's plan: the frames say what ran, the
    manifest keeps what was asked (a rerun with more free memory still resumes)."""
    from nst_jax.engine.memory import LIMIT_ENV, estimate_run
    from nst_jax.engine.stages import InputShapes
    from nst_jax.imaging.images import read_png_metadata
    from nst_jax.cli.video import parse_and_validate
    clip = write_folder(tmp_path / "clip", translating(2))
    flags = [clip, style_path, "--weights", synthetic_params_path, *CHEAP_FLAGS, "--optimizer", "lbfgs",
             "--remat", "auto", "--lbfgs-memory", "auto", "-o", tmp_path / "out"]
    settings = parse_and_validate([str(flag) for flag in flags])[1]
    inputs = InputShapes((48, 48), ((64, 64),))
    none, tiles = (estimate_run(settings.replace(remat=remat, lbfgs_memory=100), inputs).total
                   for remat in ("none", "tiles"))
    monkeypatch.setenv(LIMIT_ENV, str((none + tiles) // 2))
    assert main(flags) == 0
    ran = read_png_metadata(tmp_path / "out" / "frame_00001.png")["settings"]
    assert ran["remat"] == "tiles" and ran["lbfgs_memory"] == 100, ran
    asked = json.loads((tmp_path / "out" / video_io.MANIFEST).read_text())["settings"]
    assert asked["remat"] == asked["lbfgs_memory"] == "auto"


def test_mp4_round_trip_keeps_frames_fps_size_and_audio(tmp_path, style_path, synthetic_params_path):
    source = tmp_path / "in.mp4"
    write_mp4(source, translating(5, 48, 64), fps=12, audio=True)
    output = tmp_path / "out.mp4"
    assert main([source, style_path, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS]) == 0
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.average_rate, stream.width, stream.height) == (12, 64, 48)
        assert len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(video=0)) == 5
    assert not (tmp_path / "out_frames").exists()  # encoded: the working frames are gone
    assert not list(tmp_path.glob(".*tmp*"))

    # --start/--duration/--every select frames; the rate follows --every; no audio in, none out.
    write_mp4(source, translating(8, 48, 64), fps=10, audio=False)
    assert main([source, style_path, "-o", output, "--weights", synthetic_params_path, *CHEAP_FLAGS,
                 "--start", "0.2", "--duration", "0.6", "--every", "2"]) == 0
    with av.open(str(output)) as container:
        assert container.streams.video[0].average_rate == 5 and not container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) == 3  # frames 2, 4, 6 of 0..7


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_a_video_tagged_to_be_turned_is_read_as_players_show_it(tmp_path, rotation):
    stored = np.zeros((32, 48, 3))
    stored[:, :24] = 1.0  # left half white: after a quarter turn it is the top or bottom half
    path = tmp_path / "phone.mp4"
    write_mp4(path, [stored] * 2, rotation=rotation)
    assert next(av.open(str(path)).decode(video=0)).rotation % 360 == rotation  # the tag reads back
    clip = video_io.read_clip(path, long_side=48)
    shown = np.rot90(stored, rotation // 90)  # counter-clockwise, as the tag says
    assert clip.source_size == (shown.shape[1], shown.shape[0])  # a video output keeps it
    assert clip.frames[0].shape == shown.shape
    np.testing.assert_allclose(clip.frames[0], shown, atol=0.1)  # H.264's rounding


def test_the_video_api_refuses_frames_that_would_give_a_wrong_picture(params):
    frames = [frame * 255 for frame in translating(2)]  # 0..255 floats: they would turn white
    with pytest.raises(UserInputError, match=r"^frame 0: float pixels run from"):
        stylize_frames(frames, [texture(40, 40)], preset("neural-style").replace(**CHEAP), VideoSettings(),
                       Model(params, "caffe"))


def test_start_and_duration_count_from_a_streams_first_frame(tmp_path):
    """A capture or a cut clip whose timestamps start at 10 s: --start 0.08 is its third frame."""
    path = tmp_path / "capture.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        for index, rgb in enumerate(translating(5)):
            frame = av.VideoFrame.from_ndarray((rgb * 255 + 0.5).astype(np.uint8), format="rgb24")
            frame.pts = 250 + index  # 10 s at 1/25 s a tick
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    clip = video_io.read_clip(path, long_side=48, start=0.08)
    assert len(clip.frames) == 3 and clip.origin == pytest.approx(10.0, abs=0.05)
    assert len(video_io.read_clip(path, long_side=48, duration=0.1).frames) == 3  # 0, 0.04, 0.08 s


def test_a_frames_folder_resizes_other_resolutions_and_refuses_other_shapes(tmp_path):
    frames = translating(3, height=30, width=40)
    folder = write_folder(tmp_path / "frames", frames)
    save_image(folder / "f001.png", texture(60, 80, dx=2, dy=1))  # the same shape, twice the pixels
    clip = video_io.read_clip(folder, long_side=40)
    assert [frame.shape for frame in clip.frames] == [(30, 40, 3)] * 3
    np.testing.assert_allclose(clip.frames[0], load_image(folder / "f000.png"), atol=1e-6)

    save_image(folder / "f002.png", texture(40, 40))  # a stray square image among 4:3 frames
    with pytest.raises(UserInputError, match=r"f002.png: 40x40 px, another shape than the first "
                                             r"frame f000.png \(40x30 px\)"):
        video_io.read_clip(folder, long_side=40)


def test_bad_inputs_give_one_line_and_status_2_and_leave_nothing(tmp_path, style_path, capsys):
    good = tmp_path / "good.mp4"
    write_mp4(good, translating(3), fps=10)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w", format="mp4") as container:
        sound = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*sound.encode(frame), *sound.encode()]:
            container.mux(packet)
    (tmp_path / "no_frames").mkdir()
    strip = tmp_path / "strip.mp4"  # 96 × 12 frames: VGG's layers to relu5_1 need 16 px a side
    write_mp4(strip, [np.tile(frame, (1, 2, 1))[:12] for frame in translating(2)], fps=10)
    out = tmp_path / "out.mp4"
    cases = [
        ([tmp_path / "missing.mp4"], "missing.mp4: no such file"),
        ([garbage], "garbage.mp4: not a readable video"),
        ([empty], "empty.mp4: not a readable video"),
        ([audio_only], "audio.m4a: has no video stream"),
        ([tmp_path / "no_frames"], "no_frames: a folder with no image frames"),
        ([good, "--start", "5"], "--start: "),
        ([good, "--start", "-1"], "--start: must be >= 0"),
        ([good, "--every", "0"], "--every: must be"),
        ([good, "--batch"], "--batch: not available for videos"),
        ([good, "--shard", "image"], "--shard: not available for videos"),
        ([good, "--temporal-wieght", "1"], "--temporal-wieght: unknown flag (did you mean --temporal-weight?)"),
        ([strip, "--image-size", "96"], "strip.mp4: 96x12 px at --image-size 96 is too small"),
    ]
    for arguments, expected in cases:
        assert main([arguments[0], style_path, "-o", out, *arguments[1:], "--no-compile-cache"]) == 2
        line = _error_line(capsys)
        assert expected in line, line
    assert main([good, style_path, "-o", tmp_path / "nowhere" / "out.mp4"]) == 2
    assert "does not exist" in _error_line(capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main([good, style_path, "-o", notes]) == 2  # neither a video name nor a folder
    assert "notes.txt: exists and is not a folder" in _error_line(capsys)
    assert notes.read_text() == "mine"
    notes.unlink()
    assert main([good, tmp_path / "missing_style.png", "-o", out]) == 2
    assert "missing_style.png" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["good.mp4", "garbage.mp4", "empty.mp4", "audio.m4a", "no_frames", "strip.mp4"])


def test_help_leaves_out_the_image_flags_videos_refuse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--batch", "--sweep-seed", "--shard", "--coordinator", "--report", "--init-image",
                 "--scales", "--save-every", "--estimate-memory"):
        assert flag not in help_text, flag
    for flag in ("--temporal-weight", "--style-weight", "--image-size", "--preset", "--keep-frames"):
        assert flag in help_text, flag


def test_more_bad_video_inputs_and_outputs_are_one_line(tmp_path, style_path, capsys):
    mkv = tmp_path / "clip.mkv"  # an mkv stream records no duration: its length is counted
    write_mp4(mkv, translating(2))
    folder = write_folder(tmp_path / "clip_frames", translating(2))
    cases = [
        ([mkv, "-o", tmp_path / "out.mp4", "--start", "5"], "--start: " + str(mkv) + " is 0.2 s long"),
        ([folder, "-o", tmp_path / "out.mp4", "--start", "100"], "--start: " + str(folder) + " is 0.08 s long"),
        ([mkv, "-o", tmp_path / "out.webm"], "out.webm: nst-jax writes videos as .mp4, .mov, .mkv"),
        ([mkv, "-o", tmp_path / "out.png"], "out.png: nst-jax writes videos as"),
        # a video output's frames go to OUT_frames: here, the input folder
        ([folder, "-o", tmp_path / "clip.mp4"], "its frames folder " + str(folder) + " is the input folder"),
    ]
    for arguments, expected in cases:
        assert main([arguments[0], style_path, *arguments[1:], "--no-compile-cache"]) == 2
        line = _error_line(capsys)
        assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "clip_frames"]
    assert len(list(folder.iterdir())) == 2


def test_a_bad_video_is_one_stderr_line_from_a_real_process(tmp_path):
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"\0" * 1000)
    process = subprocess.run([sys.executable, "-m", "nst_jax.video", str(garbage), str(garbage),
                              "-o", str(tmp_path / "out.mp4")], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        process.stderr.strip()] and process.stderr.startswith(f"error: {garbage}: not a readable video")


def test_sigterm_in_a_real_process_keeps_finished_frames_and_the_rerun_completes(
        tmp_path, style_path, synthetic_params_path):
    """SIGTERM (a scheduler's, `docker stop`'s) stops a clip as Ctrl-C does (the same watcher;
    test_cli.py sends Ctrl-C): finished frames stay, status 143, the same command resumes."""
    import os
    import signal
    import time
    clip = write_folder(tmp_path / "clip", translating(3))
    output = tmp_path / "out"
    # Later frames take long enough (seconds) for the signal to land inside one.
    command = [sys.executable, "-m", "nst_jax.video", str(clip), str(style_path), "-o", str(output),
               "--weights", str(synthetic_params_path), *CHEAP_FLAGS, "--frame-steps", "300"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output / "frame_00001.png").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "SIGTERM: stopping at the next step" in err, err
    kept = sorted(p.name for p in output.glob("frame_*.png"))
    assert kept and len(kept) < 3, err
    assert f"interrupted: {len(kept)} of 3 frames" in err
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {len(kept)} of 3 frames" in rerun.stderr
    assert len(list(output.glob("frame_*.png"))) == 3
