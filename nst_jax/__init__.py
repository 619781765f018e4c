"""nst-jax: neural style transfer (Gatys, Ecker & Bethge) in JAX with ported VGG-19 weights."""

from nst_jax.batch import Member, StylizeResult, make_members, stylize_batch
from nst_jax.layers import CONV_LAYERS, LAYER_ORDER, canonical_layer
from nst_jax.params_file import ParamsMetadata, load_params, save_params
from nst_jax.preprocess import deprocess, preprocess
from nst_jax.presets import PRESETS, preset
from nst_jax.settings import Settings
from nst_jax.vgg import VGG19, features

# `stylize` itself stays in nst_jax.stylize for now: exporting it here would shadow that module's
# name (`import nst_jax.stylize as m` would then give the function), until the module is renamed.
__all__ = ["stylize_batch", "make_members", "Member", "StylizeResult", "Settings", "preset",
           "PRESETS", "load_params", "save_params", "ParamsMetadata", "features", "VGG19", "preprocess",
           "deprocess", "CONV_LAYERS", "LAYER_ORDER", "canonical_layer"]
