"""A run's plan, made once before anything compiles: the inputs' shapes, where the members go
(`Layout`), the Settings with every "auto" resolved, and the memory that needs.

The image command, the video command, `--estimate-memory` and the Python API all run from a
`RunPlan` made by `plan_run`; nothing else resolves "auto" (Objective and OptimizerSpec refuse it),
and the fit check's refusal states the same estimate `--estimate-memory` shows.
"""

import dataclasses
from typing import Callable, List, Optional, Tuple

import jax

from nst_jax.config.settings import AUTO, Settings
from nst_jax.engine.buckets import buckets_pay
from nst_jax.engine.devices import Layout
from nst_jax.engine.memory import RunEstimate, available_bytes, estimate_run, gib, measured_run
from nst_jax.engine.stages import InputShapes, scale_sizes
from nst_jax.errors import UserInputError

# --lbfgs-memory auto takes the largest memory up to this that fits (neural-style's default).
MOST_LBFGS_MEMORY = 100
# The analytic estimate's loop is at most this much above XLA's (measured 1.05–1.6×): past it
# no compile is worth asking.
ANALYTIC_MARGIN = 2.0


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run is, decided before it starts."""

    settings: Settings  # as run: no "auto" left
    inputs: InputShapes
    layout: Layout
    estimate: RunEstimate  # analytic, per device, at the largest scale
    available: Optional[int]  # bytes the run may use per device; None: unknown

    @property
    def working_shape(self) -> Tuple[int, int]:
        """(height, width) of the output, the last scale's loop."""
        return self.inputs.working_shape(self.settings.image.image_size)

    @property
    def sizes(self) -> List[int]:
        """Long sides of the coarse-to-fine passes."""
        return scale_sizes(self.settings)

    @property
    def total_steps(self) -> int:
        return self.settings.optimizer.num_steps * self.settings.image.scales

    @property
    def fits(self) -> bool:
        return self.available is None or self.estimate.total <= self.available


def plan_run(settings: Settings, inputs: InputShapes, layout: Layout = Layout(),
             device: Optional[jax.Device] = None, available: Optional[int] = None) -> RunPlan:
    """The plan of running `settings` on images of these shapes with this layout.

    `available`: the bytes the run may use per device, default what `device` (default: the first)
    has free (memory.available_bytes). "auto" choices are resolved: shape buckets where they pay on
    `device`'s platform (buckets.buckets_pay); against the memory, remat "none" when
    the run fits without recomputation, else the remat that needs least memory; L-BFGS memory the
    largest up to MOST_LBFGS_MEMORY that fits (with the remat chosen, at its most).
    """
    if available is None:
        available = available_bytes(device)
    settings = _resolve_auto(settings, inputs, layout, available, (device or jax.devices()[0]).platform)
    return RunPlan(settings, inputs, layout, estimate_run(settings, inputs, layout), available)


def least_memory_remat(settings: Settings) -> str:
    """"tiles" (about 0.3 × the loop's temporaries of none, 1.2–1.25 × the step: BENCHMARKS.md), or
    "blocks" where tiles cannot go (gradients normalized over the whole image)."""
    return "blocks" if settings.loss.normalize_gradients else "tiles"


def _resolve_auto(settings, inputs, layout, available, platform):
    def fits(changed):
        return available is None or estimate_run(changed, inputs, layout).total <= available

    if settings.network.shape_buckets == AUTO:
        shapes = [inputs.working_shape(size) for size in scale_sizes(settings)]
        members = -(-layout.members // layout.devices) if layout.shard == "batch" else layout.members
        pays = buckets_pay(platform, shapes, settings.optimizer.num_steps, members)
        settings = settings.replace(shape_buckets="on" if pays else "off")

    memory_auto = settings.optimizer.lbfgs_memory == AUTO
    if memory_auto:
        settings = settings.replace(lbfgs_memory=MOST_LBFGS_MEMORY)
    if settings.network.remat == AUTO:
        plain = settings.replace(remat="none")
        settings = plain if fits(plain) else settings.replace(remat=least_memory_remat(settings))
    if memory_auto and settings.optimizer.name == "lbfgs" and not fits(settings):
        # The estimate grows with the memory; with nothing fitting, 1 (the refusal says what else).
        memory = _largest(lambda m: fits(settings.replace(lbfgs_memory=m)), 1, MOST_LBFGS_MEMORY - 1)
        settings = settings.replace(lbfgs_memory=memory)
    return settings


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), by bisection (fits(low) assumed, fits monotone)."""
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def check_fits(plan: RunPlan, analytic_margin: float = ANALYTIC_MARGIN) -> RunEstimate:
    """The estimate that says the plan fits; UserInputError (one line, with flags that would fit)
    when it cannot.

    The analytic estimate decides at once when it fits. It errs high (XLA keeps 0.50–0.84 of
    it), so when it does not fit by less than `analytic_margin`, XLA's own analysis of the loop
    decides: the chunk compiled for abstract inputs (seconds; the run's own compile of the same
    program then finds it in the compilation cache).
    """
    available, settings, inputs, layout = plan.available, plan.settings, plan.inputs, plan.layout
    if plan.fits:
        return plan.estimate
    assert available is not None  # plan.fits holds when nothing is known
    needs = f"this run needs about {gib(plan.estimate.total)} per device"
    if plan.estimate.total <= analytic_margin * available:
        measured = measured_run(settings, inputs, layout)
        if measured.total <= available:
            return measured
        needs += f" (XLA's analysis of the compiled loop: {gib(measured.total)})"
    raise UserInputError(f"{needs}, {gib(available)} available; {_advice(plan, available)}")


def _advice(plan, available):
    """What would fit, as flags: ' / '-separated tries, or to free memory."""
    settings, inputs, layout = plan.settings, plan.inputs, plan.layout

    def fits(**changes):
        try:
            changed = settings.replace(**changes)
        except ValueError:
            return False
        return estimate_run(changed, inputs, layout).total <= available

    def fits_on(more):
        return estimate_run(settings, inputs, more).total <= available

    tries = []
    if fits(image_size=16):  # the largest size that fits
        tries.append(f"--image-size {_largest(lambda size: fits(image_size=size), 16, settings.image.image_size - 1)}")
    if settings.image.style_scale > 1:  # a large style pass alone can be what does not fit
        scales = [x for x in (8, 4, 2, 1) if x < settings.image.style_scale and fits(style_scale=float(x))]
        if scales:
            tries.append(f"--style-scale {scales[0]}")
    if settings.optimizer.name == "lbfgs":
        memories = [m for m in (100, 50, 20, 10, 5, 1) if m < settings.optimizer.lbfgs_memory and fits(lbfgs_memory=m)]
        if memories:
            tries.append(f"--lbfgs-memory {memories[0]}")
        if fits(optimizer="adam"):
            tries.append("--optimizer adam")
    remat = least_memory_remat(settings)
    if settings.network.remat != remat and fits(remat=remat):
        tries.append(f"--remat {remat}")
    members, devices, visible = layout.members, layout.devices, jax.device_count()
    if layout.shard == "batch" and members > devices and visible > devices:
        more = next((n for n in range(devices + 1, min(members, visible) + 1)
                     if fits_on(Layout(members, n, "batch"))), None)
        if more is not None:
            tries.append(f"--devices {more}")
    # Split each image by rows over more devices (what lets one print-size image fit).
    first = devices + 1 if layout.shard == "image" else 2
    more = next((n for n in range(first, visible + 1) if fits_on(Layout(members, n, "image"))), None)
    if more is not None:
        tries.append(f"--devices {more} --shard image")
    return f"try {' / '.join(tries)}" if tries else "free some memory"

