"""python -m nst_jax.run content.jpg style.jpg [style2.jpg ...] [-o out.png] [--preset NAME] [flags]

Thin entry point: parse and check flags, build one Settings (a preset with the flags given on
top), call the library. Bad input ends with one line `error: <flag or file>: <what is wrong>` and
exit status 2; bad flag values are caught here, before any file is read or anything compiled.
"""

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Dict, Optional, Sequence, Tuple, cast

import jax

from nst_jax.cache import COMPILE_CACHE_SUBDIR, cache_dir, enable_compile_cache
from nst_jax.cli.files import BatchRequest, CheckpointRequest, request_layout, request_members, stylize_files
from nst_jax.cli.flags import OneLineParser, add_field_flag, comma_list, keep_negative_values, number, same_path
from nst_jax.cli.interrupt import exit_status
from nst_jax.cli.memory_report import memory_report
from nst_jax.cli.precompile import COMMON_ASPECTS, aspect_list, precompile
from nst_jax.cli.preview import PREVIEW_HELP, preview_address, preview_session, run_title
from nst_jax.cli.regions import load_regions, region_paths
from nst_jax.config.presets import DEFAULT_PRESET, PRESETS, preset
from nst_jax.config.settings import (AUTO_NUMBERS, CHOICES, FIELDS, FILE_FIELDS, FILE_LIST_FIELDS, GROUP_TITLES, HELP,
                                     INT32_MAX, RANGES, Range, Settings, flag)
from nst_jax.engine.checkpoint import Every
from nst_jax.engine.devices import join_cluster
from nst_jax.engine.plan import RunPlan, plan_run
from nst_jax.engine.stages import InputShapes
from nst_jax.engine.stylize import StylizeResult
from nst_jax.engine.timings import RunTimings
from nst_jax.errors import UserInputError, reason
from nst_jax.imaging import images
from nst_jax.model.preprocess import PREPROCESSINGS
from nst_jax.weights.fetch import load_weights
from nst_jax.weights.params_file import Model

USAGE = "python -m nst_jax.run CONTENT STYLE [STYLE ...] [-o OUT] [--preset NAME] [flags]"
# Ranges of the flags that are not Settings fields (theirs are in settings.RANGES).
CLI_RANGES = {"devices": Range(1, INT32_MAX), "num_processes": Range(1, INT32_MAX),
              "process_id": Range(0, INT32_MAX)}  # and below --num-processes
# Sweepable Settings fields and their item type; a sweep's values have the field's range.
SWEEPS = {"style_weight": float, "content_weight": float, "seed": int}
# The values of each sweep flag given, by field: floats or ints as SWEEPS says.
Sweeps = Dict[str, Tuple[Any, ...]]
# An init image whose aspect ratio differs from the content's by more than this is visibly stretched.
STRETCH_TOLERANCE = 0.01



@dataclasses.dataclass(frozen=True)
class Command:
    """What distinguishes a command line built on the image command's flags (the video command's)."""

    prog: str = "python -m nst_jax.run"
    usage: str = USAGE
    description: str = ("Neural style transfer (Gatys et al.) with VGG-19 in JAX. Paints CONTENT in the "
                        "style of STYLE (several styles are blended). Every flag overrides the preset.")
    content: Tuple[str, str] = ("content", "content image (photo)")  # metavar, help
    output: Tuple[str, str] = ("out.png", "output image (.png with the settings in its metadata, .jpg, "
                                          ".webp, .tif); default: out.png")  # default, help
    hidden: Tuple[str, ...] = ()  # flags (by dest) parsed, so that the command can refuse them, but not shown
    field_help: Tuple[Tuple[str, str], ...] = ()  # settings.HELP entries this command words otherwise
    choices: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # CHOICES this command narrows
    precompiles: bool = True  # offers --precompile


def build_parser(command: Command = Command()) -> OneLineParser:
    parser = OneLineParser(
        prog=command.prog, usage=command.usage, description=command.description,
        epilog="Settings flags default to the chosen preset's values; the values in brackets are the "
               f"default preset's ({DEFAULT_PRESET}).")
    # Optional to argparse so that --precompile needs no pictures; parse_and_validate asks for them.
    parser.add_argument("content", nargs="?", metavar=command.content[0], help=command.content[1])
    parser.add_argument("styles", nargs="*", metavar="style", help="style image(s) (painting)")
    parser.add_argument("-o", "--output", default=command.output[0], help=command.output[1])
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help=f"named settings reproducing a reference system (see README); default: {DEFAULT_PRESET}")
    parser.add_argument("--weights", default=None,
                        help="params file (.npz from python -m weights_tools.convert) or a public VGG-19 file; "
                             "default: $NST_JAX_WEIGHTS, else the Keras weights, downloaded once")
    parser.add_argument("--report", metavar="FILE.json",
                        help="also write where the time went (start-up, images, weights, compiling, steps, "
                             "writing), the compiled programs, peak memory and the loss at each progress "
                             "visit, as JSON")
    parser.add_argument("--preview", type=preview_address, metavar="[HOST:]PORT", help=PREVIEW_HELP)
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every program afresh instead of keeping compiled programs "
                             "in the cache folder ($NST_JAX_CACHE/xla) for later runs")
    parser.add_argument("--preprocessing", choices=PREPROCESSINGS,
                        help="input convention of the weights: caffe (BGR, 0..255 minus means) or torch "
                             "(RGB, mean/std); needed to convert a .pth of unknown origin, overrides what "
                             "a file says; default: from the file")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="print how much memory the run needs per device (counted from the "
                             "shapes, nothing compiled) against what is available, with a table of "
                             "remat, storage and L-BFGS memory choices, and exit without running")
    if command.precompiles:
        parser.add_argument("--precompile", nargs="?", const=COMMON_ASPECTS, type=aspect_list, metavar="W:H,...",
                            help="compile this run's programs for the shape buckets of these aspect ratios "
                                 "(default: 1:1,5:4,4:3,3:2,16:9,2:1), landscape and upright, at --image-size "
                                 "into the cache folder and exit: later runs of such photos with the same "
                                 "flags start without compiling (no CONTENT or STYLE needed; STYLEs given "
                                 "set how many styles to expect)")
    long_runs = parser.add_argument_group("long runs (stop, resume)")
    long_runs.add_argument("--checkpoint-every", metavar="N|TIME",
                           help="keep the run's whole state (pixels, optimizer, step, scale) in OUT.checkpoint "
                                "every N steps or every TIME (30s, 10m, 2h) and when stopped (Ctrl-C, "
                                "SIGTERM); the same command resumes from it, equal to an uninterrupted run; "
                                "removed once the images are written")
    long_runs.add_argument("--keep-checkpoint", action="store_true",
                           help="keep OUT.checkpoint after a finished run, at its last step: the same command "
                                "with a higher --num-steps runs on from there (with --checkpoint-every)")
    batch = parser.add_argument_group(
        "many images in one compiled run (any of these makes the run batched; outputs are "
        "OUT_<style>_sw<weight>_cw<weight>_seed<n>.EXT, naming only what varies)")
    batch.add_argument("--batch", action="store_true",
                       help="one output per style image instead of one blended output")
    batch.add_argument("--sweep-style-weight", metavar="LIST", type=comma_list(float),
                       help=f"one output per style weight, e.g. 1e2,1e3,1e4 (each {RANGES['style_weight']})")
    batch.add_argument("--sweep-content-weight", metavar="LIST", type=comma_list(float),
                       help=f"one output per content weight (each {RANGES['content_weight']})")
    batch.add_argument("--sweep-seed", metavar="LIST", type=comma_list(int),
                       help=f"one output per seed, e.g. 0,1,2,3 (each {RANGES['seed']})")
    batch.add_argument("--devices", type=number(int), metavar="N",
                       help=f"shard the batch over N devices ({CLI_RANGES['devices']}; default: all visible)")
    batch.add_argument("--shard", choices=("batch", "image"),
                       help="split the members over the devices (batch) or each image's rows (image: "
                            "one image too large for one device); default: image when --devices N "
                            "exceeds the number of outputs, else batch")
    batch.add_argument("--distributed", action="store_true",
                       help="join a multi-host run with jax.distributed (cluster detected from the "
                            "environment: Slurm, MPI, TPU, JAX_COORDINATOR_ADDRESS); run the same "
                            "command on every host; the first host writes the outputs")
    batch.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host coordinator (implies --distributed)")
    batch.add_argument("--num-processes", type=number(int), metavar="N",
                       help=f"number of hosts (with --coordinator; {CLI_RANGES['num_processes']})")
    batch.add_argument("--process-id", type=number(int), metavar="I",
                       help=f"this host's index (with --coordinator; {CLI_RANGES['process_id']}, below N)")
    defaults = preset(DEFAULT_PRESET)
    help_texts, choices = {**HELP, **dict(command.field_help)}, {**CHOICES, **dict(command.choices)}
    groups: Dict[str, Any] = {}
    for name, where in FIELDS.items():  # one flag per field, group by group
        if where.group not in groups:
            groups[where.group] = parser.add_argument_group(
                f"settings: {GROUP_TITLES[where.group]} (default: the preset's value)")
        add_field_flag(groups[where.group], name, where.field, defaults.value(name), help_texts.get(name),
                       RANGES.get(name), choices.get(name), takes_auto=name in AUTO_NUMBERS,
                       metavar="FILE" if name in FILE_FIELDS else "FILES" if name in FILE_LIST_FIELDS else None)
    for action in parser._actions:
        if action.dest in command.hidden:
            action.help = argparse.SUPPRESS
    return parser


def require_pictures(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The content and style positionals, which the parser leaves optional (--precompile needs
    none): argparse's own one-line error when one is missing."""
    metavars = {action.dest: str(action.metavar) for action in parser._actions}
    missing = [metavars[dest] for dest in ("content", "styles") if not getattr(args, dest)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The preset's Settings with every given flag on top."""
    base = preset(args.preset)
    changes = {}
    for name in FIELDS:
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if "init_image" in changes and "init" not in changes:
        changes["init"] = "image"
    if "content_layers" in changes and "content_layer_weights" not in changes:
        changes["content_layer_weights"] = None  # the preset's weights were for its own layers
    if "style_layers" in changes and "style_layer_weights" not in changes:
        changes["style_layer_weights"] = None
    return base.replace(**changes)


def parse_and_validate(argv: Optional[Sequence[Any]] = None) -> Tuple[argparse.Namespace, Settings, Sweeps]:
    """Flags -> (args, Settings, sweeps {field: values}), every value checked.

    Reads no file, so a bad value fails before any image or weight is read. Raises
    UserInputError (one line naming the flag); --help prints the help and exits.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = parser.parse_args(keep_negative_values(parser, argv))
    if not args.precompile:
        require_pictures(parser, args)
    for name, allowed in CLI_RANGES.items():
        if getattr(args, name) is not None:
            allowed.check(flag(name), getattr(args, name))
    if args.num_processes is not None and args.process_id is not None and args.process_id >= args.num_processes:
        raise UserInputError(f"--process-id: must be below --num-processes {args.num_processes}, "
                             f"got {args.process_id}")
    if args.coordinator is not None and not re.fullmatch(r"\[?[^\s\[\]]+\]?:\d{1,5}", args.coordinator):
        raise UserInputError(f"--coordinator: expected HOST:PORT such as 10.0.0.1:1234, got {args.coordinator!r}")
    joins = args.distributed or args.coordinator is not None
    cluster_flag = next((flag for flag, value in (("--num-processes", args.num_processes),
                                                  ("--process-id", args.process_id)) if value is not None), None)
    if cluster_flag is not None and not joins:
        raise UserInputError(f"{cluster_flag}: only for a multi-host run (--coordinator HOST:PORT or --distributed)")
    if args.checkpoint_every is not None:
        try:
            args.checkpoint_every = Every.parse(args.checkpoint_every)
        except ValueError as error:
            raise UserInputError(f"--checkpoint-every: {error}") from None
    elif args.keep_checkpoint:
        raise UserInputError("--keep-checkpoint: only with --checkpoint-every N|TIME")
    if args.preview is not None and (args.estimate_memory or args.precompile):
        mode = "--estimate-memory" if args.estimate_memory else "--precompile"
        raise UserInputError(f"--preview: shows a run as it goes; {mode} runs no steps")
    if args.weights is not None and not str(args.weights).strip():
        raise UserInputError("--weights: an empty path (leave the flag out for the default weights)")
    settings = settings_from_args(args)
    if not args.precompile:
        _refuse_outputs_over_inputs(args, settings)
    if args.batch and args.style_blend_weights is not None:
        raise UserInputError("--style-blend-weights: does not apply with --batch (each style image is an "
                             "output of its own)")
    # The engine makes the same check (stylize_batch); here it fails before any file is read.
    settings.image.check_style_count(len(args.styles) or 1)
    sweeps = {}
    for name, kind in SWEEPS.items():
        values, sweep = getattr(args, "sweep_" + name), "sweep-" + flag(name)
        if values is None:
            continue
        if not values:
            raise UserInputError(f"--{sweep}: no values")
        for value in values:
            RANGES[name].check(sweep, value, whole=kind is int)
        # Outputs are named by value (batch labels weights with :g), so a repeat would overwrite one.
        labels = [f"{value:g}" if kind is float else str(value) for value in values]
        repeated = next((index for index, label in enumerate(labels) if label in labels[:index]), None)
        if repeated is not None:
            first = labels.index(labels[repeated])
            if values[first] == values[repeated]:
                raise UserInputError(f"--{sweep}: {labels[repeated]} is listed twice (both outputs would have "
                                     f"one name)")
            raise UserInputError(f"--{sweep}: {values[first]!r} and {values[repeated]!r} would both be named "
                                 f"{labels[repeated]} (outputs are named to 6 significant digits)")
        sweeps[name] = values
    if settings.loss.tv_weight == 0:
        zero_in = [name for name in ("style_weight", "content_weight")
                   if 0 in sweeps.get(name, (settings.value(name),))]
        if len(zero_in) == 2:  # Settings caught the case without sweeps
            swept = next(name for name in zero_in if name in sweeps)
            raise UserInputError(f"--sweep-{flag(swept)}: 0 with the other weights 0 leaves nothing "
                                 f"to optimize")
    return args, settings, sweeps


def _refuse_outputs_over_inputs(args: argparse.Namespace, settings: Settings) -> None:
    """An output written over an input of the run (or over the other output) would destroy it:
    `-o content.jpg`, or `--report` naming the image, is refused before anything is read."""
    if args.report is not None and same_path(args.report, args.output):
        raise UserInputError(f"--report {args.report}: is also the -o output; name another file")
    inputs = [args.content, *args.styles, settings.image.init_image, args.weights, *region_paths(settings)]
    for option, output in (("-o", args.output), ("--report", args.report)):
        if output is None:
            continue
        clash = next((path for path in inputs if path is not None and same_path(output, path)), None)
        if clash is not None:
            raise UserInputError(f"{option} {output}: is an input of this run ({clash}); writing it would "
                                 f"destroy it, name another file")


def stretch_warning(content_path: str, init_path: str) -> Optional[str]:
    """A warning line if the init image's aspect ratio is not the content's (it gets stretched)."""
    try:
        content_height, content_width = images.header_shape(content_path)
        init_height, init_width = images.header_shape(init_path)
    except Exception:  # an unreadable image gets its own one-line error from the image loader
        return None
    difference = (init_width / init_height) / (content_width / content_height) - 1
    if abs(difference) <= STRETCH_TOLERANCE:
        return None
    return (f"warning: --init-image: {init_path} is {init_width}x{init_height} px, the content "
            f"{content_width}x{content_height}: it will be stretched to the content's aspect ratio "
            f"({difference:+.0%})")


def header_plan(args: argparse.Namespace, settings: Settings, sweeps: Sweeps) -> RunPlan:
    """The run's plan from the images' headers (nothing decoded): what --estimate-memory shows."""
    batch = batch_request(args, sweeps)
    members = len(request_members(settings, args.styles, batch))
    regions = load_regions(settings, len(args.styles))
    inputs = InputShapes(images.header_shape(args.content), tuple(images.header_shape(path) for path in args.styles),
                         0 if regions is None else regions.count)
    return plan_run(settings, inputs, request_layout(batch, members))


def batch_request(args: argparse.Namespace, sweeps: Sweeps) -> Optional[BatchRequest]:
    """The BatchRequest the flags make (any batch, sweep, device or multi-host flag), or None: a
    single output."""
    distributed = args.distributed or args.coordinator is not None
    if not (args.batch or sweeps or args.devices or distributed or args.shard):
        return None
    return BatchRequest(per_style=args.batch, style_weights=sweeps.get("style_weight"),
                        content_weights=sweeps.get("content_weight"), seeds=sweeps.get("seed"),
                        num_devices=args.devices, shard=args.shard)


def _check_report_path(path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UserInputError(f"--report {path}: cannot write a file there")


def _precompile(args: argparse.Namespace, settings: Settings, sweeps: Sweeps) -> None:
    """--precompile: the run's programs for every common bucket, into the cache folder."""
    if args.no_compile_cache:
        raise UserInputError("--precompile: fills the compile cache, which --no-compile-cache turns off")
    styles = args.styles or ["style"]
    batch = batch_request(args, sweeps)
    members = request_members(settings, styles, batch)

    def load_model():
        params, metadata = load_weights(args.weights, args.preprocessing)
        return Model(params, metadata.preprocessing)

    regions = load_regions(settings, len(styles))  # a map or mask given: runs with as many regions
    buckets, programs, seconds = precompile(settings, load_model, members, request_layout(batch, len(members)),
                                            len(styles), args.precompile, sys.stderr, regions)
    print(f"precompiled {buckets} buckets at {settings.image.image_size} px: {programs} programs in "
          f"{seconds:.1f} s, kept in {cache_dir() / COMPILE_CACHE_SUBDIR}")


def main(argv: Optional[Sequence[Any]] = None) -> int:
    timings = RunTimings()
    return exit_status(lambda: _run(argv, timings), "interrupted before the first step; nothing written")


def _run(argv: Optional[Sequence[Any]], timings: RunTimings) -> Optional[StylizeResult]:
    """The image command: the run's result, or None for --estimate-memory."""
    args, settings, sweeps = parse_and_validate(argv)
    if args.report:
        _check_report_path(args.report)
    if not args.no_compile_cache:
        enable_compile_cache()
    if args.estimate_memory:
        print(memory_report(header_plan(args, settings, sweeps)))
        return None
    if args.precompile:
        _precompile(args, settings, sweeps)
        return None
    # Settings: init "image" comes with an init_image.
    warning = (stretch_warning(args.content, cast(str, settings.image.init_image))
               if settings.image.init == "image" else None)

    def load_checked_weights():
        # Called once the images are known good: only then is the warning worth a line.
        if warning:
            print(warning, file=sys.stderr)
        params, metadata = load_weights(args.weights, args.preprocessing)
        if args.preset == "pytorch-tutorial" and metadata.preprocessing == "caffe":
            # Its pre-ReLU layers and 1e6 style weight were tuned on torchvision's network.
            print("warning: --preset pytorch-tutorial expects torchvision's VGG-19 (--weights "
                  "vgg19-dcbb9e9d.pth); these weights are Caffe-convention, so its loss weights "
                  "may not suit them", file=sys.stderr)
        return params, metadata

    distributed = args.distributed or args.coordinator is not None
    if distributed:
        option = f"--coordinator {args.coordinator}" if args.coordinator is not None else "--distributed"
        try:
            join_cluster(args.coordinator, args.num_processes, args.process_id)
        except (ValueError, IndexError, RuntimeError) as error:  # jax.distributed's own checks
            raise UserInputError(f"{option}: cannot join the cluster ({reason(error, first_line=True)})") from None
    checkpoint = (CheckpointRequest(args.checkpoint_every, args.keep_checkpoint)
                  if args.checkpoint_every is not None else None)
    # Bound before the images are read: a port in use ends the run here. The first host serves.
    with preview_session(args.preview, run_title(args.content, args.styles),
                         serve=jax.process_index() == 0) as live:
        outputs = stylize_files(args.content, args.styles, args.output, settings, load_checked_weights,
                                batch=batch_request(args, sweeps), checkpoint=checkpoint, timings=timings,
                                preview=live)
    if args.report:
        try:
            timings.write(args.report)
        except OSError as error:  # checked at the start; the file can still refuse (a full disk)
            raise UserInputError(f"--report {args.report}: cannot write it ({reason(error)}); the images "
                                 f"were written") from None
    return outputs[0][1]


if __name__ == "__main__":
    sys.exit(main())
