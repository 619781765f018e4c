"""nst-jax: neural style transfer (Gatys, Ecker & Bethge) in JAX with ported VGG-19 weights.

Data flows one way through the subpackages (docs/ARCHITECTURE.md):
weights (files -> params) -> model (VGG-19 features) -> loss (Objective) -> engine (the compiled
loop) -> cli (flags, files, progress); config holds the Settings every stage reads.
"""

from nst_jax.config.presets import PRESETS, preset
from nst_jax.config.settings import Settings
from nst_jax.engine.stylize import Member, StylizeResult, make_members, stylize, stylize_batch
from nst_jax.model.layers import CONV_LAYERS, LAYER_ORDER, canonical_layer
from nst_jax.model.preprocess import deprocess, preprocess
from nst_jax.model.vgg import VGG19, features
from nst_jax.weights.params_file import ParamsMetadata, load_params, save_params

__all__ = ["stylize", "stylize_batch", "make_members", "Member", "StylizeResult", "Settings", "preset",
           "PRESETS", "load_params", "save_params", "ParamsMetadata", "features", "VGG19", "preprocess",
           "deprocess", "CONV_LAYERS", "LAYER_ORDER", "canonical_layer"]
