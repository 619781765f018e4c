"""Every knob of a style-transfer run, in one frozen dataclass.

Presets (nst_jax/presets.py) are named Settings; the CLI maps flags onto a preset with
`dataclasses.replace`, so any flag overrides a preset's value.
"""

import dataclasses
from typing import Optional, Tuple

from nst_jax.errors import UserInputError
from nst_jax.layers import canonical_layer

CHOICES = {
    "pooling": ("max", "avg"),
    "compute_dtype": ("float32", "bfloat16"),
    "content_loss": ("half_sum", "sum", "mean"),
    "gram_normalization": ("raw", "hw", "chw"),
    "style_loss": ("gatys", "mse", "sum", "keras_example"),
    "tv_loss": ("l2", "l1", "power"),
    "optimizer": ("lbfgs", "adam", "sgd"),
    "lbfgs_linesearch": ("none", "zoom"),
    "init": ("content", "noise", "gray", "image"),
    "original_colors": ("none", "luminance", "recombine"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """A complete description of one style-transfer run (the defaults are neural-style's).

    Images are optimized as RGB pixels in [0, pixel_range]; that scale is what TV weights and
    learning rates refer to (255 for the Caffe-era tools, 1 for the TensorFlow/PyTorch tutorials).
    """

    # Sizes.
    image_size: int = 512  # long side of the output in pixels; the aspect ratio is kept
    scales: int = 1  # coarse-to-fine passes, each √2 larger, the last at image_size; num_steps each
    style_scale: float = 1.0  # style image long side = style_scale * image_size
    style_blend_weights: Optional[Tuple[float, ...]] = None  # one per style image; None = equal

    # Network.
    content_layers: Tuple[str, ...] = ("relu4_2",)
    content_layer_weights: Optional[Tuple[float, ...]] = None  # None = 1 each
    style_layers: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    style_layer_weights: Optional[Tuple[float, ...]] = None  # None = 1 each
    pooling: str = "max"
    compute_dtype: str = "float32"

    # Loss: total = content_weight * Σ_l w_l C_l + style_weight * Σ_l w_l E_l + tv_weight * TV.
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 1e-3
    content_loss: str = "mean"
    gram_normalization: str = "chw"
    style_loss: str = "mse"
    tv_loss: str = "l2"
    tv_beta: float = 2.5  # exponent of the "power" TV: Σ((Δx)² + (Δy)²)^(β/2)
    pixel_range: float = 255.0
    normalize_gradients: bool = False  # neural-style's -normalize_gradients (L1 per loss layer)

    # Optimizer.
    optimizer: str = "lbfgs"
    num_steps: int = 1000
    learning_rate: float = 10.0  # Adam and SGD
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.0
    lr_decay_rate: float = 1.0  # learning rate multiplied by this every lr_decay_steps (1 = constant)
    lr_decay_steps: int = 100
    lbfgs_memory: int = 100  # neural-style's default number of correction pairs
    # "none": torch.optim.LBFGS's fixed step 1, one evaluation per step (neural-style);
    # "zoom": optax's zoom line search (scipy-era tools), up to lbfgs_linesearch_steps evaluations.
    lbfgs_linesearch: str = "none"
    lbfgs_linesearch_steps: int = 20

    # Start image.
    init: str = "noise"
    init_image: Optional[str] = None  # path, with init="image"
    init_noise_std: float = 0.001 / 255.0  # std of the noise around the mean color, fraction of pixel_range
    seed: int = 0

    # Color.
    original_colors: str = "none"  # "luminance": Gatys et al. 2016; "recombine": YCbCr after the fact

    # Progress and output.
    print_every: int = 50
    save_every: int = 0  # 0: only the final image

    def __post_init__(self):
        for field, options in CHOICES.items():
            value = getattr(self, field)
            if value not in options:
                raise UserInputError(f"--{_flag(field)}: {value!r} is not one of {', '.join(options)}")
        for field in ("content_layers", "style_layers"):
            layers = getattr(self, field)
            if field == "content_layers" and not layers:
                raise UserInputError("--content-layers: at least one layer is needed")
            for name in layers:
                try:
                    canonical_layer(name)
                except ValueError as error:
                    raise UserInputError(f"--{_flag(field)}: {error}") from None
        for layers, weights in (("content_layers", "content_layer_weights"),
                                ("style_layers", "style_layer_weights")):
            given = getattr(self, weights)
            if given is not None and len(given) != len(getattr(self, layers)):
                raise UserInputError(f"--{_flag(weights)}: {len(given)} weights for "
                                     f"{len(getattr(self, layers))} {layers.replace('_', ' ')}")
        positive = ("image_size", "scales", "style_scale", "pixel_range", "num_steps", "lbfgs_memory",
                    "lbfgs_linesearch_steps", "lr_decay_steps", "tv_beta")
        for field in positive:
            if not getattr(self, field) > 0:
                raise UserInputError(f"--{_flag(field)}: must be positive, got {getattr(self, field)!r}")
        non_negative = ("content_weight", "style_weight", "tv_weight", "learning_rate",
                        "init_noise_std", "print_every", "save_every", "sgd_momentum")
        for field in non_negative:
            if getattr(self, field) < 0:
                raise UserInputError(f"--{_flag(field)}: must not be negative, got {getattr(self, field)!r}")
        if self.image_size < 16:
            raise UserInputError(f"--image-size: {self.image_size} px is too small (at least 16)")
        if self.init == "image" and not self.init_image:
            raise UserInputError("--init image needs --init-image FILE")
        if self.style_blend_weights is not None and any(w < 0 for w in self.style_blend_weights):
            raise UserInputError("--style-blend-weights: weights must not be negative")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


def _flag(field):
    return field.replace("_", "-")


def layer_weights(layers, weights):
    """Per-layer weights as a tuple of floats (1 each when not given)."""
    return tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(layers)
