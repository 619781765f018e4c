"""Every knob of a style-transfer run: a frozen `Settings` of six frozen groups.

    settings.image      sizes, styles, start image, colours    (host, around the loop)
    settings.loss       layers, α β γ, the loss options         (-> loss.objective.Objective)
    settings.regions    maps, masks, a style per region         (host: the loss's guides)
    settings.network    pooling, compute dtype, remat           (-> Objective)
    settings.optimizer  optimizer, steps and its constants      (-> engine.optimize.OptimizerSpec)
    settings.output     print and save intervals                (host)

Each group checks its own fields when it is made (choices, ranges, counts), so the Python API is
checked as the CLI is, with the same one-line `UserInputError` naming the flag. Every field has a
flat name, unique across the groups: the CLI flag (dashes for underscores), the key of
`Settings.to_dict()` (PNG metadata, the video manifest) and the keyword of `Settings.replace` and
`Settings.from_flat`. It is the field's own name, except the optimizer group's `name`, whose flat
name is `optimizer`. Presets (config/presets.py) are named Settings; the CLI replaces a preset's
fields with the flags given, so any flag overrides a preset's value.
"""

import dataclasses
import difflib
import math
import numbers
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union, cast

from nst_jax.errors import UserInputError
from nst_jax.loss.objective import COMPUTE_DTYPES, REMATS
from nst_jax.loss.terms import CONTENT_LOSSES, GRAM_NORMALIZATIONS, STYLE_LOSSES, TV_LOSSES
from nst_jax.model.guides import PROPAGATIONS
from nst_jax.model.layers import canonical_layer
from nst_jax.model.vgg import POOLINGS

# The options of what the engine does around the network (the engine reads them from Settings).
OPTIMIZERS = ("lbfgs", "adam", "sgd")  # engine.optimize.make_optimizer
LINESEARCHES = ("none", "zoom")  # L-BFGS: fixed step (engine.lbfgs) or optax's zoom
STORAGE_DTYPES = ("float32", "bfloat16")  # the optimizer's image-sized history
INITS = ("content", "noise", "gray", "image")  # engine.stages.initial_pixels
ORIGINAL_COLORS = ("none", "luminance", "recombine")  # engine.stages.prepare_images, finish_image
# "auto" (--remat auto, --lbfgs-memory auto): chosen for each run by its plan (engine.plan.plan_run)
# from the images' shapes and the free memory; Objective and OptimizerSpec refuse it unresolved.
AUTO = "auto"
REMAT_CHOICES = REMATS + (AUTO,)
# --shape-buckets: pad to a bucket shared by close working sizes (engine/buckets.py); auto: where
# the compile it saves outweighs the padding (on accelerators; on a CPU for few steps).
SHAPE_BUCKETS = ("on", "off", AUTO)

# Each field's options, declared once: those of the loss and the network beside the code that
# implements them (loss/, model/), the engine's above.
CHOICES = {
    "pooling": POOLINGS,
    "compute_dtype": COMPUTE_DTYPES,
    "remat": REMAT_CHOICES,
    "shape_buckets": SHAPE_BUCKETS,
    "storage_dtype": STORAGE_DTYPES,
    "content_loss": CONTENT_LOSSES,
    "gram_normalization": GRAM_NORMALIZATIONS,
    "style_loss": STYLE_LOSSES,
    "tv_loss": TV_LOSSES,
    "optimizer": OPTIMIZERS,
    "lbfgs_linesearch": LINESEARCHES,
    "init": INITS,
    "original_colors": ORIGINAL_COLORS,
    "guide_propagation": PROPAGATIONS,
}

# Long side of the output, in pixels: 16384² RGB pixels (805 M values) keep every size and index
# well inside int32, which XLA uses for shapes and loop counters.
MAX_IMAGE_SIDE = 16384
MAX_SCALES = 10  # the first of 10 passes is 1/22.6 of the last: coarser adds nothing
MAX_STEPS = 10**8  # num_steps × scales (at most 10**9) is counted in int32
MAX_LBFGS_MEMORY = 1000  # L-BFGS keeps 2 × memory copies of the image
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1  # seeds: jax.random.PRNGKey takes any uint32
MAX_GUIDE_GROW = 16  # units of a layer's grid: relu5_1's 16 px each


@dataclasses.dataclass(frozen=True)
class Range:
    """The finite numbers from `low` to `high`; an open end excludes its bound."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        return (math.isfinite(value)
                and (value > self.low if self.low_open else value >= self.low)
                and (value < self.high if self.high_open else value <= self.high))

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, flag: str, value: Any, whole: bool = False) -> None:
        """Raise UserInputError naming `flag` unless `value` is a number in this range."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserInputError(f"--{flag}: must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserInputError(f"--{flag}: must be a finite number, got {value!r}")
        if whole and value != int(value):  # type: ignore[call-overload]  # typeshed's Real has no __int__
            raise UserInputError(f"--{flag}: must be a whole number, got {value!r}")
        if value not in self:
            raise UserInputError(f"--{flag}: must be {self}, got {value!r}")


# Whole-number fields that also take AUTO.
AUTO_NUMBERS = ("lbfgs_memory",)

_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_FRACTION_BELOW_1 = Range(0, 1, high_open=True)

# The allowed values of every numeric field (each element of a list field), in one place: checked
# by Settings (so the Python API is checked too) and shown in the CLI's help.
RANGES = {
    "image_size": Range(16, MAX_IMAGE_SIDE),
    "scales": Range(1, MAX_SCALES),
    "style_scale": Range(0, 16, low_open=True),
    "style_blend_weights": _NON_NEGATIVE,  # and a positive sum
    "content_layer_weights": _NON_NEGATIVE,
    "style_layer_weights": _NON_NEGATIVE,
    "content_weight": _NON_NEGATIVE,  # the three weights: not all 0
    "style_weight": _NON_NEGATIVE,
    "tv_weight": _NON_NEGATIVE,
    "tv_beta": _POSITIVE,
    "pixel_range": _POSITIVE,
    "num_steps": Range(1, MAX_STEPS),
    "learning_rate": _POSITIVE,
    "adam_b1": _FRACTION_BELOW_1,
    "adam_b2": _FRACTION_BELOW_1,
    "adam_eps": _POSITIVE,
    "sgd_momentum": _FRACTION_BELOW_1,
    "lr_decay_rate": Range(0, 1, low_open=True),
    "lr_decay_steps": Range(1, INT32_MAX),
    "lbfgs_memory": Range(1, MAX_LBFGS_MEMORY),
    "lbfgs_linesearch_steps": Range(1, 1000),
    "init_noise_std": _NON_NEGATIVE,
    "seed": Range(0, UINT32_MAX),
    "print_every": Range(0, INT32_MAX),
    "save_every": Range(0, INT32_MAX),
    "seg_tolerance": Range(0, 255),
    "mask_feather": Range(0, 1000),
    "guide_grow": Range(-MAX_GUIDE_GROW, MAX_GUIDE_GROW),
    "region_weights": _NON_NEGATIVE,  # and a positive sum
    "region_content_weights": _NON_NEGATIVE,
    "region_tv_weights": _NON_NEGATIVE,
}


# Each group's heading in --help.
GROUP_TITLES = {"image": "sizes, styles, start image and colours", "loss": "loss",
                "regions": "regions (a style per region, or only inside a mask)", "network": "network",
                "optimizer": "optimizer", "output": "progress and output"}
# Settings that name a file (their metavar), and lists of files.
FILE_FIELDS = ("init_image", "content_seg", "mask")
FILE_LIST_FIELDS = ("style_seg",)
# What each field means, by flat name, as --help says it (the CLI adds its range and default).
HELP = {
    "image_size": "long side of the output in pixels (aspect ratio kept)",
    "scales": "coarse-to-fine passes, each √2 larger, the last at --image-size; --num-steps each",
    "style_scale": "style image size relative to the output size",
    "style_blend_weights": "comma-separated weight per style image (default: equal)",
    "content_layers": "comma-separated layers for the content loss, e.g. relu4_2 (Keras names work too)",
    "content_layer_weights": "comma-separated weight per content layer (default: 1 each)",
    "style_layers": "comma-separated layers for the style loss",
    "style_layer_weights": "comma-separated weight per style layer (default: 1 each)",
    "pooling": "VGG pooling",
    "compute_dtype": "dtype of the network's arithmetic (bfloat16: faster on accelerators)",
    "remat": "what the backward pass keeps of the network's activations: blocks recomputes each "
             "VGG block (about 0.65× the loop's temporaries, 1.45-1.55× the step time); tiles computes "
             "blocks 1-2 in column tiles and recomputes them (about 0.3×, 1.2-1.25×); auto: none when "
             "the run fits, else tiles (blocks with --normalize-gradients)",
    "shape_buckets": "pad each image to a bucket of close working sizes that share one compiled program "
                     "(the short side rounded up to 1/8 of the long side, at most 1/12 more pixels; "
                     "the result equals the unpadded run's): a new photo compiles nothing; auto: on "
                     "accelerators, and on a CPU where the compile saved outweighs the padding",
    "storage_dtype": "dtype of the L-BFGS history and Adam's first moment (bfloat16 halves them)",
    "content_weight": "α, weight of the content loss",
    "style_weight": "β, weight of the style loss",
    "tv_weight": "γ, weight of the total-variation loss (0: none)",
    "content_loss": "content reduction: ½Σ(F−P)² (paper), Σ, or mean",
    "gram_normalization": "Gram matrix divided by 1, H·W or C·H·W",
    "style_loss": "per-layer style loss: Σ(G−A)²/(4N²M²) (paper), MSE, Σ, or the Keras example's",
    "tv_loss": "TV: l2 (neural-style), l1 (TF tutorial), power Σ((Δx)²+(Δy)²)^(β/2)",
    "tv_beta": "β of the power TV",
    "pixel_range": "pixels are optimized in [0, this]: 255 (Caffe-era tools) or 1 (TF/PyTorch tutorials)",
    "optimizer": "optimizer",
    "num_steps": "number of optimizer steps",
    "learning_rate": "learning rate of Adam and SGD",
    "adam_b1": "Adam β1", "adam_b2": "Adam β2", "adam_eps": "Adam ε",
    "sgd_momentum": "SGD momentum (0: plain SGD)",
    "lr_decay_rate": "multiply the learning rate by this every --lr-decay-steps (1: constant)",
    "lr_decay_steps": "steps between learning-rate decays",
    "lr_decay_staircase": "drop the rate at each multiple of --lr-decay-steps (--no-lr-decay-staircase: "
                          "decay smoothly, rate × decay^(step/steps), as Keras' ExponentialDecay)",
    "lbfgs_memory": "L-BFGS memory (correction pairs kept); auto: the largest up to 100 that fits",
    "lbfgs_linesearch": "L-BFGS step: none = fixed step 1, one evaluation per step (torch.optim.LBFGS, "
                        "neural-style); zoom = optax's zoom line search (scipy-era tools)",
    "lbfgs_linesearch_steps": "most zoom line-search evaluations per L-BFGS step",
    "init": "start image: the content, noise around the mean color, flat gray, or --init-image",
    "init_image": "start image file (implies --init image)",
    "init_noise_std": "noise standard deviation for --init noise, as a fraction of the pixel range",
    "seed": "random seed for the noise init",
    "original_colors": "keep the content's colors: luminance-only transfer (Gatys et al. 2016) "
                       "or recombine YCbCr chroma after the run",
    "normalize_gradients": "divide each loss layer's gradient by its L1 norm (neural-style's -normalize_gradients)",
    "content_seg": "color-coded map of the content's regions (any size; resized to the output): region k "
                   "takes the style statistics of region k of the style images (videos: a folder of one "
                   "per input frame)",
    "style_seg": "comma-separated color-coded map per style image, in the content map's colors (default: "
                 "each painting is whole for every region it serves)",
    "seg_colors": "the regions' colors in the maps, in order: names (red, blue, ...), #rrggbb or r/g/b "
                  "(default: those the content map paints, most common first)",
    "seg_tolerance": "a map's pixel belongs to the nearest listed color if no channel differs by more "
                     "than this (0..255: anti-aliased edges)",
    "mask": "style only inside this mask (white: styled, black: the content kept; gray: partly); "
            "the output is the content outside it (videos: a folder of one per input frame)",
    "mask_feather": "soften the edge where the stylized inside meets the kept content, Gaussian radius in px",
    "region_styles": "per region, in color order: the style image(s) it takes (1, 2, 1+2 blends) or none "
                     "(the content kept); default: region k takes style k when counts match, else every style",
    "region_weights": "weight λ of each region's style loss (default: 1/n for the n regions with a style)",
    "region_content_weights": "per region, a multiplier of the content loss at its positions (e.g. 4,1: the "
                               "first region holds the photo's structure 4× as tightly; default: 1 each)",
    "region_tv_weights": "per region, a multiplier of the TV loss at its pixels (default: 1 each)",
    "guide_propagation": "how a region reaches each loss layer: simple (resized; soft edges), all (units "
                         "seeing any of it) or inside (units seeing only it), Gatys et al. 2017",
    "guide_grow": "grow (>0) or shrink (<0) each region by N units on every loss layer's grid",
    "print_every": "print the loss terms every N steps (0: never)",
    "save_every": "also save the image every N steps before the last, as OUT_<step> in OUT's format "
                  "(0: only at the end)",
}


def _flat(field: dataclasses.Field) -> str:
    """A group field's flat name (its flag without dashes)."""
    return field.metadata.get("flat", field.name)


def flag(name: str) -> str:
    """A field's flag without its dashes: image_size -> image-size."""
    return name.replace("_", "-")


def _check_choices(group: Any) -> None:
    for field in dataclasses.fields(group):
        options = CHOICES.get(_flat(field))
        value = getattr(group, field.name)
        if options is not None and value not in options:
            raise UserInputError(f"--{flag(_flat(field))}: {value!r} is not one of {', '.join(options)}")


def _check_ranges(group: Any) -> None:
    for field in dataclasses.fields(group):
        allowed = RANGES.get(_flat(field))
        if allowed is None:
            continue
        value = getattr(group, field.name)
        if value == AUTO and _flat(field) in AUTO_NUMBERS:
            continue
        for item in (value if isinstance(value, tuple) else () if value is None else (value,)):
            allowed.check(flag(_flat(field)), item, whole=field.type is int or _flat(field) in AUTO_NUMBERS)


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """Sizes, style images, the start image and colours: used on the host around the loop."""

    image_size: int = 512  # long side of the output in pixels; the aspect ratio is kept
    scales: int = 1  # coarse-to-fine passes, each √2 larger, the last at image_size; num_steps each
    style_scale: float = 1.0  # style image long side = style_scale * image_size
    style_blend_weights: Optional[Tuple[float, ...]] = None  # one per style image; None = equal
    init: str = "noise"
    init_image: Optional[str] = None  # path, with init="image"
    init_noise_std: float = 0.001 / 255.0  # std of the noise around the mean color, fraction of pixel_range
    seed: int = 0
    original_colors: str = "none"  # "luminance": Gatys et al. 2016; "recombine": YCbCr after the fact

    def __post_init__(self):
        _check_choices(self)
        _check_ranges(self)
        if self.style_blend_weights is not None and not sum(self.style_blend_weights) > 0:
            raise UserInputError("--style-blend-weights: must have a positive sum (every weight is 0)")
        if self.style_scale * self.image_size > MAX_IMAGE_SIDE:
            raise UserInputError(f"--style-scale: {self.style_scale:g} × {self.image_size} px is more "
                                 f"than {MAX_IMAGE_SIDE} px")
        if self.init == "image" and not self.init_image:
            raise UserInputError("--init image needs --init-image FILE")
        if self.init != "image" and self.init_image:
            raise UserInputError(f"--init-image: conflicts with --init {self.init}, which does not use "
                                 f"a start image (--init-image alone implies --init image)")

    def check_style_count(self, count: int) -> None:
        """Raise UserInputError unless the blend weights (if given) are one per style image."""
        if self.style_blend_weights is not None and len(self.style_blend_weights) != count:
            raise UserInputError(f"--style-blend-weights: {len(self.style_blend_weights)} weights for "
                                 f"{count} style images")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss: total = content_weight * Σ_l w_l C_l + style_weight * Σ_l w_l E_l + tv_weight * TV.

    Images are optimized as RGB pixels in [0, pixel_range]; that scale is what TV weights and
    learning rates refer to (255 for the Caffe-era tools, 1 for the TensorFlow/PyTorch tutorials).
    The three weights are traced (one per batch member); the rest is the static Objective.
    """

    content_layers: Tuple[str, ...] = ("relu4_2",)
    content_layer_weights: Optional[Tuple[float, ...]] = None  # None = 1 each
    style_layers: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    style_layer_weights: Optional[Tuple[float, ...]] = None  # None = 1 each
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

    def __post_init__(self):
        _check_choices(self)
        if not self.content_layers:
            raise UserInputError("--content-layers: at least one layer is needed")
        if not self.style_layers:
            raise UserInputError("--style-layers: at least one layer is needed (--style-weight 0 turns "
                                 "the style loss off)")
        for field in ("content_layers", "style_layers"):
            seen = []
            for name in getattr(self, field):
                try:
                    seen.append(canonical_layer(name))
                except ValueError as error:
                    raise UserInputError(f"--{flag(field)}: {error}") from None
                if seen[-1] in seen[:-1]:  # a layer twice would count its loss twice
                    raise UserInputError(f"--{flag(field)}: {name} is listed twice")
        for layers, weights in (("content_layers", "content_layer_weights"),
                                ("style_layers", "style_layer_weights")):
            given = getattr(self, weights)
            if given is not None and len(given) != len(getattr(self, layers)):
                raise UserInputError(f"--{flag(weights)}: {len(given)} weights for "
                                     f"{len(getattr(self, layers))} {layers.replace('_', ' ')}")
        _check_ranges(self)
        if self.content_weight == self.style_weight == self.tv_weight == 0:
            raise UserInputError("--content-weight, --style-weight, --tv-weight: all three are 0, "
                                 "so there is nothing to optimize")


@dataclasses.dataclass(frozen=True)
class RegionSettings:
    """Spatial control (Gatys et al. 2017): which part of the picture takes which style. The
    files are read by the CLI (cli/regions.py); the Python API passes arrays (engine.regions.Regions)
    and reads only guide_propagation and guide_grow from here."""

    content_seg: Optional[str] = None
    style_seg: Optional[Tuple[str, ...]] = None
    seg_colors: Optional[Tuple[str, ...]] = None
    seg_tolerance: float = 48.0
    mask: Optional[str] = None
    mask_feather: float = 0.0
    region_styles: Optional[Tuple[str, ...]] = None
    region_weights: Optional[Tuple[float, ...]] = None
    region_content_weights: Optional[Tuple[float, ...]] = None
    region_tv_weights: Optional[Tuple[float, ...]] = None
    guide_propagation: str = "simple"
    guide_grow: int = 0

    def __post_init__(self):
        _check_choices(self)
        _check_ranges(self)
        if self.mask is not None and self.content_seg is not None:
            raise UserInputError("--mask: conflicts with --content-seg (a mask is the two-region case of a map)")
        for field in ("style_seg", "seg_colors"):
            if getattr(self, field) is not None and self.content_seg is None:
                raise UserInputError(f"--{flag(field)}: needs --content-seg, the content's map")
        if self.mask_feather and self.mask is None and self.content_seg is None:
            raise UserInputError("--mask-feather: needs --mask or --content-seg")
        for field in ("region_styles", "region_weights", "region_content_weights", "region_tv_weights"):
            if getattr(self, field) is not None and self.content_seg is None and self.mask is None:
                raise UserInputError(f"--{flag(field)}: needs --content-seg or --mask")
        if self.region_weights is not None and not sum(self.region_weights) > 0:
            raise UserInputError("--region-weights: must have a positive sum (every weight is 0)")

    @property
    def given(self) -> bool:
        """Whether the run has regions (a map or a mask)."""
        return self.content_seg is not None or self.mask is not None


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
    """Which network the loss reads and how it is computed (part of the static Objective)."""

    pooling: str = "max"
    compute_dtype: str = "float32"
    # "blocks": recompute each VGG block's activations in the backward pass (less memory, one
    # more forward pass per step: ops.recomputed_in_backward); "tiles": blocks 1-2 computed and
    # recomputed in column tiles, the rest keeping ReLU bits (least memory: tiles.features_in_tiles);
    # "auto": none when the run fits, else tiles (blocks where tiles cannot go: engine.plan).
    remat: str = "none"
    # "on": images padded to their bucket (engine/buckets.py), one program per bucket; "auto":
    # the run's plan decides (engine/buckets.buckets_pay).
    shape_buckets: str = AUTO

    def __post_init__(self):
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and its step count (all but num_steps make the OptimizerSpec)."""

    name: str = dataclasses.field(default="lbfgs", metadata={"flat": "optimizer"})  # --optimizer
    num_steps: int = 1000
    learning_rate: float = 10.0  # Adam and SGD
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.0
    lr_decay_rate: float = 1.0  # learning rate multiplied by this every lr_decay_steps (1 = constant)
    lr_decay_steps: int = 100
    # True: the rate drops by lr_decay_rate at each multiple of lr_decay_steps; False: it decays
    # smoothly, rate × decay^(step / lr_decay_steps) (Keras' ExponentialDecay default).
    lr_decay_staircase: bool = True
    # neural-style's default number of correction pairs; "auto": the largest up to 100 that fits.
    lbfgs_memory: Union[int, str] = 100
    # "none": torch.optim.LBFGS's fixed step 1, one evaluation per step (neural-style);
    # "zoom": optax's zoom line search (scipy-era tools), up to lbfgs_linesearch_steps evaluations.
    lbfgs_linesearch: str = "none"
    lbfgs_linesearch_steps: int = 20
    # dtype of the optimizer's image-sized history: fixed-step L-BFGS's (s, y) pairs and
    # Adam's first moment; arithmetic stays float32.
    storage_dtype: str = "float32"

    def __post_init__(self):
        _check_choices(self)
        _check_ranges(self)


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Progress lines and intermediate images."""

    print_every: int = 50
    save_every: int = 0  # 0: only the final image

    def __post_init__(self):
        _check_ranges(self)


@dataclasses.dataclass(frozen=True)
class Settings:
    """A complete description of one style-transfer run (the defaults are neural-style's).

    Build one from a preset (`preset("gatys").replace(num_steps=300)`), from flat names
    (`Settings.from_flat(style_weight=1e3)`) or from groups (`Settings(loss=LossSettings(...))`);
    read fields through their group (`settings.loss.style_weight`).
    """

    image: ImageSettings = dataclasses.field(default_factory=ImageSettings)
    loss: LossSettings = dataclasses.field(default_factory=LossSettings)
    regions: RegionSettings = dataclasses.field(default_factory=RegionSettings)
    network: NetworkSettings = dataclasses.field(default_factory=NetworkSettings)
    optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)
    output: OutputSettings = dataclasses.field(default_factory=OutputSettings)

    def __post_init__(self):
        # Each group checked its own fields; the checks that span two groups are here.
        for field in dataclasses.fields(self):
            group = cast(type, field.type)  # a group's class: this module has no string annotations
            if not isinstance(getattr(self, field.name), group):
                raise TypeError(f"Settings.{field.name} must be a {group.__name__}, got "
                                f"{getattr(self, field.name)!r}")
        if self.network.remat == "tiles" and self.loss.normalize_gradients:
            raise UserInputError("--remat tiles: cannot be combined with --normalize-gradients (its norm "
                                 "spans the whole image, tiles see a part); use --remat blocks")

    @classmethod
    def from_flat(cls, **fields: Any) -> "Settings":
        """The defaults with `fields` (flat names, as `replace` takes them) on top."""
        return cls().replace(**fields)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with fields changed by flat name (`replace(style_weight=1e3, seed=2)`): each
        changed group is made again, so it is checked again."""
        by_group: Dict[str, Dict[str, Any]] = {}
        for name, value in changes.items():
            where = _field(name)
            by_group.setdefault(where.group, {})[where.attribute] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **values)
                                            for group, values in by_group.items()})

    def value(self, name: str) -> Any:
        """A field's value by flat name (`value("style_weight")` is `self.loss.style_weight`)."""
        where = _field(name)
        return getattr(getattr(self, where.group), where.attribute)

    def to_dict(self) -> Dict[str, Any]:
        """{flat name: value} of every field, group by group (PNG metadata, video manifests)."""
        return {name: self.value(name) for name in FIELDS}


class SettingsField(NamedTuple):
    """Where a flat name lives: settings.<group>.<attribute>."""

    name: str  # flat name: the flag with underscores, to_dict's key, replace's keyword
    group: str  # the Settings attribute holding the group
    attribute: str  # the field's name in its group (the flat name, but optimizer -> name)
    field: dataclasses.Field


def _fields_table() -> Dict[str, SettingsField]:
    table: Dict[str, SettingsField] = {}
    for group in dataclasses.fields(Settings):
        for field in dataclasses.fields(cast(Any, group.type)):
            if _flat(field) in table:
                raise RuntimeError(f"two Settings fields are named {_flat(field)!r}")
            table[_flat(field)] = SettingsField(_flat(field), group.name, field.name, field)
    unknown = (set(CHOICES) | set(RANGES) | set(HELP)) - set(table)
    if unknown:
        raise RuntimeError(f"CHOICES, RANGES or HELP name no Settings field: {sorted(unknown)}")
    return table


# Every field by flat name, group by group, derived from the dataclasses above.
FIELDS = _fields_table()


def _field(name: str) -> SettingsField:
    if name not in FIELDS:
        close = difflib.get_close_matches(name, list(FIELDS), n=1)
        raise TypeError(f"Settings has no field {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return FIELDS[name]


def _number_text(value):
    return str(value) if isinstance(value, int) else f"{value:g}"  # whole bounds in full
