"""A two-panel PNG drawn with Pillow (no plotting dependency): step time against image size for
each framework and optimizer, and batched throughput against batch size."""

import math
import os
import tempfile

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1200, 520
PANEL_MARGIN = {"left": 80, "right": 20, "top": 50, "bottom": 60}
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
          (140, 86, 75))
INK, GRID, BACKGROUND = (30, 30, 30), (225, 225, 225), (255, 255, 255)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _nice_ticks(low, high, log):
    """Tick values covering [low, high]: powers of 10 (and 2×, 5×) on a log axis, else 5 steps."""
    if log:
        ticks = []
        for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
            ticks += [m * 10.0 ** exponent for m in (1, 2, 5)]
        return [t for t in ticks if low <= t <= high] or [low, high]
    raw = (high - low) / 5 or 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    return [low + i * step for i in range(int((high - low) / step) + 1)]


def _label(value):
    return f"{value:g}" if value < 1e4 else f"{value:.0e}"


class _Panel:
    """One chart's plotting box and the mapping from data to pixels."""

    def __init__(self, draw, box, title, x_labels, y_values, y_title, log):
        self.draw, self.log = draw, log
        left, top, right, bottom = box
        self.left = left + PANEL_MARGIN["left"]
        self.right = right - PANEL_MARGIN["right"]
        self.top = top + PANEL_MARGIN["top"]
        self.bottom = bottom - PANEL_MARGIN["bottom"]
        values = [v for v in y_values if v is not None and v > 0] or [1.0]
        low, high = min(values), max(values)
        if log:
            self.low, self.high = low / 1.5, high * 1.5
        else:
            self.low, self.high = 0.0, high * 1.15
        self.x_labels = x_labels
        font, small = _font(18), _font(13)
        draw.text(((left + right) / 2, top + 15), title, fill=INK, font=font, anchor="mm")
        for tick in _nice_ticks(self.low, self.high, log):
            y = self.y(tick)
            draw.line([(self.left, y), (self.right, y)], fill=GRID)
            draw.text((self.left - 6, y), _label(tick), fill=INK, font=small, anchor="rm")
        for index, label in enumerate(x_labels):
            draw.text((self.x(index), self.bottom + 8), str(label), fill=INK, font=small, anchor="mt")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=INK)
        draw.text((self.left, self.top - 6), y_title, fill=INK, font=small, anchor="ld")
        self.small = small

    def x(self, index):
        slots = max(1, len(self.x_labels))
        return self.left + (index + 0.5) * (self.right - self.left) / slots

    def y(self, value):
        if self.log:
            position = (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            position = (value - self.low) / (self.high - self.low)
        return self.bottom - position * (self.bottom - self.top)


def _draw_lines(panel, series):
    for number, (label, values) in enumerate(series.items()):
        color = COLORS[number % len(COLORS)]
        points = [(panel.x(i), panel.y(v)) for i, v in enumerate(values) if v is not None and v > 0]
        if len(points) > 1:
            panel.draw.line(points, fill=color, width=3)
        for x, y in points:
            panel.draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
        legend_y = panel.top + 12 + 20 * number
        panel.draw.line([(panel.left + 12, legend_y), (panel.left + 40, legend_y)], fill=color, width=3)
        panel.draw.text((panel.left + 46, legend_y), label, fill=INK, font=panel.small, anchor="lm")


def _draw_bars(panel, values, color):
    half = 0.3 * (panel.right - panel.left) / max(1, len(values))
    for index, value in enumerate(values):
        if value is None or value <= 0:
            continue
        x = panel.x(index)
        panel.draw.rectangle([x - half, panel.y(value), x + half, panel.bottom], fill=color)
        panel.draw.text((x, panel.y(value) - 4), f"{value:.3g}", fill=INK, font=panel.small, anchor="mb")


def step_series(results):
    """({label: [median ms per size]}, sizes) from the results' single-image step entries."""
    sizes = sorted({entry["size"] for entry in results["steps"]})
    series = {}
    for entry in results["steps"]:
        label = f"{entry['framework']} {entry['optimizer']}"
        if entry.get("compute_dtype", "float32") != "float32":
            label += f" {entry['compute_dtype']}"
        if entry.get("variant"):
            label += f" {entry['variant']}"
        series.setdefault(label, [None] * len(sizes))[sizes.index(entry["size"])] = (
            entry["step_s"]["median"] * 1e3)
    return series, sizes


def draw(results, path):
    """Write the PNG to `path`."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    canvas = ImageDraw.Draw(image)
    series, sizes = step_series(results)
    all_values = [v for values in series.values() for v in values]
    left = _Panel(canvas, (0, 0, WIDTH // 2, HEIGHT), "Step time (median) vs image size",
                  [f"{s} px" for s in sizes], all_values, "ms", log=True)
    _draw_lines(left, series)
    batch = results.get("batch") or []
    throughput = [entry["member_steps_per_s"] for entry in batch]
    size_note = f" at {batch[0]['size']} px" if batch else ""
    right = _Panel(canvas, (WIDTH // 2, 0, WIDTH, HEIGHT), f"Batched throughput{size_note}",
                   [f"batch {entry['batch']}" for entry in batch], throughput, "steps/s", log=False)
    _draw_bars(right, throughput, COLORS[0])
    footer = (f"{results['machine']['cpu_model']}, {results['machine']['usable_cores']} cores"
              f"{', ' + results['machine']['accelerator'] if results['machine']['accelerator'] else ''}; "
              f"jax {results['versions']['jax']}")
    canvas.text((WIDTH / 2, HEIGHT - 14), footer, fill=INK, font=_font(13), anchor="mm")
    handle, temporary = tempfile.mkstemp(prefix=".bench-", suffix=".png",
                                         dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
