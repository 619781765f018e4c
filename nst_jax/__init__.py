"""nst-jax: neural style transfer (Gatys, Ecker & Bethge) in JAX with ported VGG-19 weights.

Data flows one way through the subpackages (docs/ARCHITECTURE.md):
weights (files -> params) -> model (VGG-19 features) -> loss (Objective) -> engine (the plan and
the compiled loop) -> cli (flags, files, progress); config holds the Settings every stage reads.

The names below load on first use, so `import nst_jax` (and parsing a command's flags) does not
import JAX or Flax until something needs them.
"""

import importlib
from typing import TYPE_CHECKING, Any, List

# Public name -> the module that defines it.
_API = {
    "stylize": "nst_jax.engine.stylize", "stylize_batch": "nst_jax.engine.stylize",
    "make_members": "nst_jax.engine.stylize", "Member": "nst_jax.engine.stylize",
    "RunOptions": "nst_jax.engine.stylize", "StylizeResult": "nst_jax.engine.stylize",
    "Regions": "nst_jax.engine.regions", "NotebookPreview": "nst_jax.preview.notebook",
    "Settings": "nst_jax.config.settings", "preset": "nst_jax.config.presets", "PRESETS": "nst_jax.config.presets",
    "Model": "nst_jax.weights.params_file", "load_params": "nst_jax.weights.params_file",
    "save_params": "nst_jax.weights.params_file", "ParamsMetadata": "nst_jax.weights.params_file",
    "features": "nst_jax.model.vgg", "VGG19": "nst_jax.model.vgg",
    "preprocess": "nst_jax.model.preprocess", "deprocess": "nst_jax.model.preprocess",
    "CONV_LAYERS": "nst_jax.model.layers", "LAYER_ORDER": "nst_jax.model.layers",
    "canonical_layer": "nst_jax.model.layers",
}
__all__ = list(_API)

if TYPE_CHECKING:  # what type checkers and editors see
    from nst_jax.config.presets import PRESETS, preset
    from nst_jax.config.settings import Settings
    from nst_jax.engine.regions import Regions
    from nst_jax.engine.stylize import Member, RunOptions, StylizeResult, make_members, stylize, stylize_batch
    from nst_jax.preview.notebook import NotebookPreview
    from nst_jax.model.layers import CONV_LAYERS, LAYER_ORDER, canonical_layer
    from nst_jax.model.preprocess import deprocess, preprocess
    from nst_jax.model.vgg import VGG19, features
    from nst_jax.weights.params_file import Model, ParamsMetadata, load_params, save_params


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'nst_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(list(globals()) + __all__)
