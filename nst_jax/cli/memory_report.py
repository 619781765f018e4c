"""--estimate-memory: the planned run and the memory it needs, with the choices that change it."""

from nst_jax.engine.memory import estimate_run, gib
from nst_jax.engine.plan import RunPlan
from nst_jax.loss.objective import REMATS


def memory_report(plan: RunPlan) -> str:
    """The planned run (output size, members per device, "auto" choices resolved) with the memory
    it needs against what is free (one line), then a table of the total against each memory option
    (remat, storage, L-BFGS memory): the fit check's own analytic estimate (engine.plan)."""
    settings, layout, estimate, available = plan.settings, plan.layout, plan.estimate, plan.available
    out_height, out_width = plan.working_shape
    split = ", each image split by rows" if layout.splits_rows else ""
    lbfgs = settings.optimizer.name == "lbfgs"
    line = (f"{out_width}x{out_height} px, {layout.members} image(s) on {layout.devices} device(s) "
            f"({layout.per_device} per device{split}), {settings.optimizer.name}"
            f"{f' (memory {settings.optimizer.lbfgs_memory})' if lbfgs else ''}, remat {settings.network.remat}: "
            f"about {gib(estimate.total)} per device (params "
            f"{gib(estimate.params)}, images and optimizer state {gib(estimate.state)}, loop "
            f"temporaries {gib(estimate.loop)}, content and style passes {gib(estimate.targets)})"
            + (f"; {gib(available)} available" if available is not None else ""))
    memories = sorted({settings.optimizer.lbfgs_memory, 100, 20, 5}, reverse=True) if lbfgs else [None]
    rows = [f"{'remat':<8}{'storage':<10}{'lbfgs memory':<14}per device"]
    remats = [r for r in REMATS if r != "tiles" or not settings.loss.normalize_gradients]
    for remat in remats:
        for storage in ("float32", "bfloat16"):
            for memory in memories:
                changed = settings.replace(remat=remat, storage_dtype=storage,
                                           lbfgs_memory=memory or settings.optimizer.lbfgs_memory)
                total = estimate_run(changed, plan.inputs, layout).total
                fits = "" if available is None else "  fits" if total <= available else "  too large"
                rows.append(f"{remat:<8}{storage:<10}{memory or '-'!s:<14}{gib(total)}{fits}")
    return "\n".join([line] + rows)
