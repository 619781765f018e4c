"""nst-jax: neural style transfer (Gatys, Ecker & Bethge) in JAX with ported VGG-19 weights."""

from nst_jax.layers import CONV_LAYERS, LAYER_ORDER, canonical_layer
from nst_jax.params_file import ParamsMetadata, load_params, save_params
from nst_jax.preprocess import deprocess, preprocess
from nst_jax.vgg import VGG19, features

__all__ = ["CONV_LAYERS", "LAYER_ORDER", "canonical_layer", "ParamsMetadata", "load_params",
           "save_params", "preprocess", "deprocess", "VGG19", "features"]
