"""python -m bench preview: what --preview costs a run, and how soon its page shows a visit.

Steps (the goal, ≤ 1.03×): the CLI's own run (`nst_jax.cli.files.stylize_files`, what
`python -m nst_jax.run` calls) in one process, in turns: without --preview, then with it and its
page open in headless Chromium on this machine (the browser takes its share of the CPU as a
user's would). Each turn's steps are its run phase less compiling; the first turn of each is
left out (it compiles).
Latency: for each progress visit, from the run handing over its images to the page having them
(the page's clock and the run's are this machine's).
Whole commands: `python -m nst_jax.run` with and without `--preview 0` (its page open), one
cold compile cache each, with --report: wall time, programs compiled and their seconds.
`--screenshots DIR`: the page during a batch sweep and during a clip, as the README shows them.
"""

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.browser import open_browser
from bench.e2e import DEFAULT_IMAGES, REPO_ROOT, _prepare
from bench.flags import at_least
from bench.machine import publish
from nst_jax.errors import bad_input_exits_2

PAGE_TIMEOUT_S = 60
SHOT_QUALITY = 88  # the README's screenshots, as JPEG


def _wait(browser, script, timeout=PAGE_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"the page did not reach: {script}")


def _settings(size, steps):
    from nst_jax.config.presets import DEFAULT_PRESET, preset

    return preset(DEFAULT_PRESET).replace(image_size=size, num_steps=steps, print_every=0)


def _timed_turn(content, style, npz, settings, folder, browser):
    """One run of the CLI's function: (seconds of steps, [seconds from hand-over to page per visit])."""
    from nst_jax.cli.files import stylize_files
    from nst_jax.engine.timings import RunTimings
    from nst_jax.preview.live import LiveRun
    from nst_jax.preview.server import PreviewServer
    from nst_jax.weights.fetch import load_weights

    handed = {}

    class _Timed(LiveRun):
        def offer_images(self, step, images):
            handed[step] = time.time()
            super().offer_images(step, images)

    live = server = None
    if browser is not None:
        live = _Timed("bench")
        server = PreviewServer(("127.0.0.1", 0), live)
        browser.get(server.url)
        _wait(browser, "return nstPreview.events >= 1")
    timings = RunTimings()
    try:
        stylize_files(str(content), [str(style)], str(folder / "out.png"), settings, lambda: load_weights(str(npz)),
                      stream=io.StringIO(), timings=timings, preview=live)
        latencies = []
        if browser is not None:
            _wait(browser, "return nstPreview.status === 'done'")
            shown = dict(browser.execute_script("return nstPreview.imageTimes"))
            latencies = [shown[step] / 1000 - at for step, at in handed.items() if step in shown]
    finally:
        if server is not None:
            server.close(grace=0)
    return timings.phases["run"] - timings.compile.seconds, latencies


def _cpu_seconds(stat_path):
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds():
    """{"chromium": every Chromium process's CPU seconds, "python": this process's threads but
    XLA's (the run's host side, the preview's worker and its server), "xla": XLA's threads}, from
    /proc (Linux); {} elsewhere."""
    found = {"chromium": 0.0, "python": 0.0, "xla": 0.0}
    if not Path("/proc/self/task").is_dir():
        return {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            found["xla" if name.startswith("tf_") else "python"] += _cpu_seconds(task / "stat")
        except OSError:  # a thread that ended meanwhile
            pass
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and b"chrom" in (process / "cmdline").read_bytes():
                found["chromium"] += _cpu_seconds(process / "stat")
        except OSError:
            pass
    return found


def step_turns(content, style, npz, settings, rounds, browser, folder):
    """{"off"/"on": [seconds of steps per turn]} and {"off"/"on": [{"chromium"/"python"/"xla":
    CPU seconds}]} per turn (first turns dropped), and the visits' latencies."""
    times, cpu, latencies = {"off": [], "on": []}, {"off": [], "on": []}, []
    for round_ in range(rounds + 1):
        for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):  # either order as often
            before = cpu_seconds()
            seconds, shown = _timed_turn(content, style, npz, settings, folder, browser if mode == "on" else None)
            after = cpu_seconds()
            if round_:
                times[mode].append(seconds)
                cpu[mode].append({name: after[name] - before[name] for name in after})
                latencies += shown
            print(f"[bench preview] turn {round_} {mode}: {seconds:.2f} s of steps", file=sys.stderr, flush=True)
    return times, cpu, latencies


def _command(content, style, npz, size, steps, folder, label, extra=()):
    return [sys.executable, "-m", "nst_jax.run", str(content), str(style), "--weights", str(npz),
            "--image-size", str(size), "--num-steps", str(steps), "-o", str(folder / f"{label}.png"),
            "--report", str(folder / f"{label}.json"), *extra]


def whole_command(command, env, browser=None):
    """Run a command to its end (its page opened in `browser` when it has --preview): wall s, report."""
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT)
    if browser is not None:
        line = process.stderr.readline()
        browser.get(re.search(r"preview: (\S+)", line).group(1))
    process.stderr.read()
    status = process.wait()
    wall = time.perf_counter() - began
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} exited {status}")
    report = json.loads(Path(command[command.index("--report") + 1]).read_text())
    return {"wall_s": round(wall, 2), "compile_s": round(report.get("compile_seconds", 0.0), 2),
            "programs": len(report.get("compiled_programs", []))}


def measure(size, steps, rounds, source=DEFAULT_IMAGES):
    results = {"size": size, "steps": steps, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="bench-preview-") as scratch, open_browser() as browser:
        folder = Path(scratch)
        _, npz, pairs = _prepare(folder, [size], source)
        content, style = pairs[size][:2]
        times, cpu, latencies = step_turns(content, style, npz, _settings(size, steps), rounds, browser, folder)
        results["steps_seconds"], results["cpu_seconds"] = times, cpu
        # Each round's pair runs back to back: their ratio cancels the machine's drift between
        # rounds; the median of the rounds' ratios.
        results["ratio"] = float(np.median(np.asarray(times["on"]) / np.asarray(times["off"])))
        results["ratio_of_medians"] = float(np.median(times["on"]) / np.median(times["off"]))
        if cpu["on"] and cpu["on"][0]:
            mean = {mode: {name: float(np.mean([turn[name] for turn in cpu[mode]])) for name in cpu[mode][0]}
                    for mode in cpu}
            # What the preview takes from the machine: Chromium's CPU and this process's extra
            # non-XLA CPU, against the CPU the steps themselves use.
            added = mean["on"]["chromium"] - mean["off"]["chromium"] + mean["on"]["python"] - mean["off"]["python"]
            results["cpu_mean"], results["cpu_share"] = mean, added / mean["off"]["xla"]
        results["latency_s"] = {"median": float(np.median(latencies)), "max": float(np.max(latencies)),
                                "visits": len(latencies)}
        print(f"[bench preview] ratio {results['ratio']:.3f}, latency {results['latency_s']}", file=sys.stderr)
        results["commands"] = {}
        for label, extra in (("plain", ()), ("preview", ("--preview", "0"))):
            env = {**os.environ, "NST_JAX_CACHE": str(folder / f"cache_{label}")}
            results["commands"][label] = whole_command(
                _command(content, style, npz, size, steps, folder, label, extra), env,
                browser if extra else None)
            print(f"[bench preview] {label}: {results['commands'][label]}", file=sys.stderr, flush=True)
    return results


def markdown(results, machine):
    times = results["steps_seconds"]
    off, on = np.median(times["off"]), np.median(times["on"])
    lines = [f"`python -m bench preview --size {results['size']}` on {machine}: the default preset, "
             f"{results['steps']} steps, the CLI's own run in one process, {results['rounds']} rounds of a turn "
             "without and a turn with the page open in headless Chromium on the same machine, in alternating "
             "order (after a first round that compiles). The ratio is the median of the rounds' ratios:\n",
             "| | steps s (median) | turns | ÷ without |", "|---|---|---|---|",
             f"| without --preview | {off:.2f} | {', '.join(f'{t:.2f}' for t in times['off'])} | 1.000 |",
             f"| with the page open | {on:.2f} | {', '.join(f'{t:.2f}' for t in times['on'])} | "
             f"{results['ratio']:.3f} |"]
    if "cpu_mean" in results:
        mean = results["cpu_mean"]
        lines.append(f"\nCPU seconds per turn (mean), without → with: Chromium {mean['off']['chromium']:.2f} → "
                     f"{mean['on']['chromium']:.2f}, this process's threads but XLA's {mean['off']['python']:.2f} → "
                     f"{mean['on']['python']:.2f}, XLA's threads {mean['off']['xla']:.1f} → {mean['on']['xla']:.1f}: "
                     f"the preview takes {results['cpu_share'] * 100:.1f} % of the CPU the steps use.")
    latency = results["latency_s"]
    lines += [f"\nFrom a visit's hand-over to the page having its images: median {latency['median'] * 1000:.0f} ms, "
              f"at most {latency['max'] * 1000:.0f} ms ({latency['visits']} visits).\n",
              "| whole command (cold cache) | wall s | programs | compile s |", "|---|---|---|---|"]
    for label, entry in results["commands"].items():
        lines.append(f"| {label} | {entry['wall_s']:.1f} | {entry['programs']} | {entry['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _shoot(browser, path):
    """The page as a JPEG at `path`, cut to its content's height."""
    for _ in range(2):  # the window's outer height holds more than the page's viewport
        height = browser.execute_script("return document.documentElement.scrollHeight")
        inner = browser.execute_script("return window.innerHeight")
        outer = browser.get_window_size()["height"]
        browser.set_window_size(1280, min(1600, height + outer - inner + 16))
    picture = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    picture.save(path, "JPEG", quality=SHOT_QUALITY, optimize=True)
    print(f"[bench preview] wrote {path}", file=sys.stderr)


def screenshots(folder_out, source=DEFAULT_IMAGES):
    """The README's two pictures: a batch sweep and a clip, each while it runs."""
    folder_out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-preview-shots-") as scratch, open_browser() as browser:
        folder = Path(scratch)
        _, npz, _ = _prepare(folder, [], source)
        common = ["--weights", str(npz), "--preview", "0", "--init", "content", "--print-every", "0"]
        batch = [sys.executable, "-m", "nst_jax.run", str(source / "tubingen.jpg"), str(source / "starry_night.jpg"),
                 str(source / "the_scream.jpg"), "--batch", "--sweep-style-weight", "1e2,1e4", "--image-size", "192",
                 "--num-steps", "120", "-o", str(folder / "batch.png"), *common]
        _shoot_while(browser, batch, "return nstPreview.points.length >= 8", folder_out / "preview-batch.jpg")
        clip = folder / "clip"
        clip.mkdir()
        photo = Image.open(source / "tubingen.jpg").convert("RGB")
        photo.thumbnail((320, 320))
        for index in range(8):  # the photo panning right
            photo.crop((index * 6, 0, index * 6 + 256, 192)).save(clip / f"f{index:03d}.png")
        video = [sys.executable, "-m", "nst_jax.video", str(clip), str(source / "starry_night.jpg"),
                 "--image-size", "256", "--num-steps", "60", "--frame-steps", "30", "-o", str(folder / "out"), *common]
        _shoot_while(browser, video, "return nstPreview.frames.length >= 4 && nstPreview.points.length >= 2",
                     folder_out / "preview-video.jpg")


def _shoot_while(browser, command, ready, path):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        browser.get(re.search(r"preview: (\S+)", process.stderr.readline()).group(1))
        _wait(browser, ready, timeout=600)
        _shoot(browser, path)
    finally:
        process.terminate()
        process.wait()


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bench preview", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="--image-size (default 256)")
    parser.add_argument("--steps", type=int, default=50, help="steps per run (default 50; at least 10)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8; at least 3)")
    parser.add_argument("--out", type=Path, help="write the JSON there too")
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="only take the README's screenshots into DIR (preview-batch.jpg, preview-video.jpg)")
    return parser


@bad_input_exits_2
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.screenshots is not None:
        screenshots(args.screenshots)
        return 0
    results = measure(at_least("--size", args.size, 64), at_least("--steps", args.steps, 10),
                      at_least("--rounds", args.rounds, 3))
    publish(results, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
