"""The benchmark's two-panel PNG, drawn with matplotlib (Agg, no display): step time against image
size for each framework and optimizer, and batched throughput against batch size.

matplotlib comes with the `bench` extra: pip install -e '.[bench]'.
"""

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, LogFormatter, NullLocator
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("the benchmark's plot needs matplotlib: pip install -e '.[bench]'") from None

from nst_jax.atomic import atomic_write

SIZE_INCHES, DPI = (12, 5.2), 100  # 1200 × 520 px


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


def _step_panel(axes, results):
    series, sizes = step_series(results)
    for label, values in series.items():
        points = [(size, value) for size, value in zip(sizes, values) if value is not None and value > 0]
        if points:
            axes.plot(*zip(*points), marker="o", linewidth=2, label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    # One tick per measured size, labelled in px (a log axis would put its own at powers of 2).
    axes.xaxis.set_major_locator(FixedLocator(sizes))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticklabels([f"{size} px" for size in sizes])
    # Plain numbers (20, not 2×10¹); intermediate ticks labelled only over a decade or two.
    axes.yaxis.set_major_formatter(LogFormatter())
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.set_title("Step time (median) vs image size")
    axes.set_ylabel("ms per step")
    axes.grid(True, which="both", color="0.9")
    if series:
        axes.legend(fontsize="small")


def _batch_panel(axes, results):
    batch = results.get("batch") or []
    size_note = f" at {batch[0]['size']} px" if batch else ""
    axes.set_title(f"Batched throughput{size_note}")
    axes.set_ylabel("member steps/s")
    if not batch:
        axes.text(0.5, 0.5, "no batched runs", ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    labels = [f"batch {entry['batch']}" for entry in batch]
    bars = axes.bar(labels, [entry["member_steps_per_s"] for entry in batch], width=0.6)
    axes.bar_label(bars, fmt="%.3g")
    axes.grid(True, axis="y", color="0.9")
    axes.set_axisbelow(True)


def draw(results, path):
    """Write the PNG to `path` (atomically: nst_jax.atomic)."""
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    steps, batched = figure.subplots(1, 2)
    _step_panel(steps, results)
    _batch_panel(batched, results)
    machine = results["machine"]
    accelerator = f", {machine['accelerator']}" if machine.get("accelerator") else ""
    figure.supxlabel(f"{machine['cpu_model']}, {machine['usable_cores']} cores{accelerator}; "
                     f"jax {results['versions']['jax']}", fontsize="small")
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png")
