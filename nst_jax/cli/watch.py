"""Watching a run's losses: a stalled descent gets one warning, NaN pixels one error line."""

from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from nst_jax.config.settings import Settings
from nst_jax.engine.stylize import Visit
from nst_jax.errors import UserInputError


def divergence_advice(settings: Settings) -> str:
    """What to change after a run diverged: L-BFGS has no learning rate to lower."""
    if settings.optimizer.name != "lbfgs":
        return "lower --learning-rate / --style-weight"
    if settings.optimizer.lbfgs_linesearch == "none":
        return "lower --style-weight / --content-weight, or try --lbfgs-linesearch zoom"
    return "lower --style-weight / --content-weight"


def check_finite(image: npt.ArrayLike, steps_done: int, settings: Settings) -> None:
    """A diverged run is the user's settings' doing: say so in one line instead of saving NaNs."""
    if not np.isfinite(image).all():
        raise UserInputError(f"the optimization diverged (NaN pixels) by step {steps_done}: "
                             f"{divergence_advice(settings)}")


# A loss that moves less than this (relative) over STALL_VISITS visits spanning at least
# STALL_MIN_STEPS steps has stalled: more steps will not change the image.
STALL_RELATIVE_CHANGE = 1e-6
STALL_VISITS = 3
STALL_MIN_STEPS = 20


class LossWatch:
    """Notices, once per run, a loss that stopped moving; says which flag to change."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.warned = settings, False
        self.history: List[Tuple[int, np.ndarray]] = []  # (step, losses) of the latest visits
        self.scale: Optional[int] = None

    def stalled(self, visit: Visit) -> Optional[str]:
        """A warning line the first time every member's loss has stalled, else None."""
        if visit.scale != self.scale:  # a new scale starts a new descent
            self.scale, self.history = visit.scale, []
        self.history = (self.history + [(visit.step, np.asarray(visit.losses, np.float64))])[-STALL_VISITS:]
        first, last = self.history[0][0], self.history[-1][0]
        if self.warned or len(self.history) < STALL_VISITS or last - first < STALL_MIN_STEPS:
            return None
        values = np.stack([losses for _, losses in self.history])
        change = (values.max(0) - values.min(0)) / np.maximum(np.abs(values).max(0), np.finfo(np.float64).tiny)
        if not (change < STALL_RELATIVE_CHANGE).all():
            return None
        self.warned = True
        if self.settings.optimizer.name == "lbfgs":
            advice = ("--normalize-gradients makes L-BFGS's steps vanish: drop it"
                      if self.settings.loss.normalize_gradients else
                      "if the image is not finished, try --optimizer adam; else lower --num-steps")
        else:
            advice = "raise --learning-rate if the image is not finished; else lower --num-steps"
        return (f"warning: the loss has not moved (relative change < {STALL_RELATIVE_CHANGE:g}) from "
                f"step {first} to {last} ({float(values[-1].mean()):.4g}): {advice}")
