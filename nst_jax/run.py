"""python -m nst_jax.run content.jpg style.jpg [style2.jpg ...] [-o out.png] [--preset NAME] [flags]

Thin entry point: parse flags, build one Settings (a preset with the flags given on top), call
the library. Bad input ends with one line naming the file or flag, and exit status 2.
"""

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from nst_jax.cache import enable_compile_cache
from nst_jax.errors import UserInputError
from nst_jax.presets import DEFAULT_PRESET, PRESETS, preset
from nst_jax.settings import CHOICES, Settings
from nst_jax.timings import RunTimings

# Help for each Settings field; the flag is the field name with dashes.
FIELD_HELP = {
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
    "lbfgs_memory": "L-BFGS memory (correction pairs kept)",
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
    "print_every": "print the loss terms every N steps (0: never)",
    "save_every": "also save the image every N steps as OUT_<step>.png (0: only at the end)",
}


def _parse_list(text, item_type, flag):
    try:
        return tuple(item_type(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise UserInputError(f"--{flag}: {text!r} is not a comma-separated list of "
                             f"{item_type.__name__} values") from None


def _field_type(field):
    """(scalar type, is_list) of a Settings field: Optional[...] unwrapped, Tuple[X, ...] -> (X, True)."""
    annotation = field.type
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m nst_jax.run",
        description="Neural style transfer (Gatys et al.) with VGG-19 in JAX. Paints CONTENT in the "
                    "style of STYLE (several styles are blended). Every flag overrides the preset.",
        epilog="Settings flags default to the chosen preset's values; the values in brackets are the "
               f"default preset's ({DEFAULT_PRESET}).")
    parser.add_argument("content", help="content image (photo)")
    parser.add_argument("styles", nargs="+", metavar="style", help="style image(s) (painting)")
    parser.add_argument("-o", "--output", default="out.png",
                        help="output image (.png with the settings in its metadata, .jpg, .webp, .tif); "
                             "default: out.png")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help=f"named settings reproducing a reference system (see README); default: {DEFAULT_PRESET}")
    parser.add_argument("--weights", default=None,
                        help="params file (.npz from weights_tools.convert) or a public VGG-19 file; "
                             "default: $NST_JAX_WEIGHTS, else the Keras weights, downloaded once")
    parser.add_argument("--report", metavar="FILE.json",
                        help="also write where the time went (start-up, weights, compiling, steps, "
                             "writing) and the loss at each progress visit, as JSON")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every program afresh instead of keeping compiled programs "
                             "in the cache folder ($NST_JAX_CACHE/xla) for later runs")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="print how much device memory the run needs (XLA's analysis of the "
                             "compiled step, per device) and exit without running")
    batch = parser.add_argument_group(
        "many images in one compiled run (any of these makes the run batched; outputs are "
        "OUT_<style>_sw<weight>_cw<weight>_seed<n>.EXT, naming only what varies)")
    batch.add_argument("--batch", action="store_true",
                       help="one output per style image instead of one blended output")
    batch.add_argument("--sweep-style-weight", metavar="LIST", help="one output per style weight, e.g. 1e2,1e3,1e4")
    batch.add_argument("--sweep-content-weight", metavar="LIST", help="one output per content weight")
    batch.add_argument("--sweep-seed", metavar="LIST", help="one output per seed, e.g. 0,1,2,3")
    batch.add_argument("--devices", type=_number(int, "devices"), metavar="N",
                       help="shard the batch over N devices (default: all visible)")
    batch.add_argument("--distributed", action="store_true",
                       help="join a multi-host run with jax.distributed (cluster detected from the "
                            "environment: Slurm, MPI, TPU, JAX_COORDINATOR_ADDRESS); run the same "
                            "command on every host; the first host writes the outputs")
    batch.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host coordinator (implies --distributed)")
    batch.add_argument("--num-processes", type=_number(int, "num-processes"), metavar="N",
                       help="number of hosts (with --coordinator)")
    batch.add_argument("--process-id", type=_number(int, "process-id"), metavar="I",
                       help="this host's index, 0..N-1 (with --coordinator)")
    group = parser.add_argument_group("settings (default: the preset's value)")
    defaults = preset(DEFAULT_PRESET)
    for field in dataclasses.fields(Settings):
        scalar, is_list = _field_type(field)
        default = getattr(defaults, field.name)
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        text = FIELD_HELP.get(field.name, field.name.replace("_", " "))
        kwargs = {"default": None, "help": text if default is None else f"{text} [{shown}]"}
        if field.name in CHOICES and not is_list:
            kwargs["choices"] = CHOICES[field.name]
        elif scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif not is_list and scalar in (int, float):
            kwargs["type"] = _number(scalar, field.name)
        if "choices" not in kwargs and scalar is not bool:
            kwargs["metavar"] = "LIST" if is_list else {int: "N", float: "X"}.get(scalar, "VALUE")
        group.add_argument("--" + field.name.replace("_", "-"), **kwargs)
    return parser


def _number(kind, name):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
    parse.__name__ = kind.__name__
    return parse


def settings_from_args(args):
    """The preset's Settings with every given flag on top."""
    base = preset(args.preset)
    changes = {}
    for field in dataclasses.fields(Settings):
        value = getattr(args, field.name)
        if value is None:
            continue
        scalar, is_list = _field_type(field)
        if is_list:
            value = _parse_list(value, scalar, field.name.replace("_", "-"))
        changes[field.name] = value
    if "init_image" in changes and "init" not in changes:
        changes["init"] = "image"
    if "content_layers" in changes and "content_layer_weights" not in changes:
        changes["content_layer_weights"] = None  # the preset's weights were for its own layers
    if "style_layers" in changes and "style_layer_weights" not in changes:
        changes["style_layer_weights"] = None
    return dataclasses.replace(base, **changes)


def load_weights(weights_arg):
    """(params, metadata) from --weights, $NST_JAX_WEIGHTS or the default download."""
    from nst_jax.params_file import load_params
    from weights_tools import fetch
    if weights_arg:
        path = fetch.params_for_file(Path(weights_arg).expanduser(), origin="--weights")
    else:
        path = fetch.default_params_path()
    return load_params(path)


def memory_report(args, settings, sweeps):
    """One line: the output size, the members per device and the memory they need."""
    import math
    import jax
    from nst_jax import images
    from nst_jax.memory import estimate_memory
    height, width = images.load_image(args.content).shape[:2]
    height, width = images.long_side_shape(height, width, settings.image_size)
    members = (len(args.styles) if args.batch else 1) * math.prod(len(v) for v in sweeps.values())
    devices = args.devices or (jax.device_count() if members > 1 else 1)
    per_device = math.ceil(members / devices)
    estimate = estimate_memory(settings, height, width, batch_size=per_device,
                               batched=members > 1 or devices > 1)
    return (f"{height}x{width} px, {members} image(s) on {devices} device(s) ({per_device} per device), "
            f"{settings.optimizer}: about {estimate.total / 2**30:.2f} GiB per device "
            f"(inputs and optimizer state {estimate.arguments / 2**30:.2f} GiB, "
            f"temporaries {estimate.temporaries / 2**30:.2f} GiB)")


def _check_report_path(path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UserInputError(f"--report {path}: cannot write a file there")


def main(argv=None):
    timings = RunTimings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.report:
            _check_report_path(args.report)
        if not args.no_compile_cache:
            enable_compile_cache()
        settings = settings_from_args(args)
        if settings.style_blend_weights is not None and len(settings.style_blend_weights) != len(args.styles):
            raise UserInputError(f"--style-blend-weights: {len(settings.style_blend_weights)} weights for "
                                 f"{len(args.styles)} style images")
        sweeps = {name: _parse_list(getattr(args, "sweep_" + name), kind, "sweep-" + name.replace("_", "-"))
                  for name, kind in (("style_weight", float), ("content_weight", float), ("seed", int))
                  if getattr(args, "sweep_" + name)}
        if args.estimate_memory:
            print(memory_report(args, settings, sweeps))
            return 0
        distributed = args.distributed or args.coordinator is not None
        if distributed:
            from nst_jax.batch import join_cluster
            join_cluster(args.coordinator, args.num_processes, args.process_id)
        from nst_jax.stylize import BatchRequest, stylize_files
        batch = None
        if args.batch or sweeps or args.devices or distributed:
            batch = BatchRequest(per_style=args.batch, style_weights=sweeps.get("style_weight"),
                                 content_weights=sweeps.get("content_weight"), seeds=sweeps.get("seed"),
                                 num_devices=args.devices)
        outputs = stylize_files(args.content, args.styles, args.output, settings,
                                lambda: load_weights(args.weights), batch=batch, timings=timings)
        result = outputs[0][1]
        if args.report:
            timings.write(args.report)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before the first step; nothing written", file=sys.stderr)
        return 130
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
