"""`python -m nst_jax.run --precompile [flags]`: fill the compile cache for a size's shape buckets.

A machine image, a container or a notebook warmed once then runs any photo of the common aspect
ratios without compiling: its bucket's programs load from the cache folder. Each bucket is warmed
by the engine itself, one step on a flat gray picture of the bucket's shape, so what lands in the
cache is what a run compiles (the same programs, the same flags), not a copy of it.
"""

import argparse
import dataclasses
import time
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import jax
import numpy as np

from nst_jax.config.settings import Settings
from nst_jax.engine.buckets import COMPILE_SECONDS, bucket_shape
from nst_jax.engine.devices import Layout
from nst_jax.engine.plan import plan_run
from nst_jax.engine.regions import Regions
from nst_jax.engine.stages import InputShapes, scale_sizes, style_side
from nst_jax.engine.stylize import Member, RunOptions, run_plan
from nst_jax.engine.timings import CompileCounter
from nst_jax.errors import UserInputError
from nst_jax.imaging.images import long_side_shape
from nst_jax.weights.params_file import Model

# Width:height of the pictures people stylize (phones 4:3, cameras 3:2, video 16:9, square and
# 5:4 prints, 2:1 panoramas), each also upright. At any size they fall in 11 buckets.
COMMON_ASPECTS = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 9), (2, 1))


def aspect_shapes(aspects: Sequence[Tuple[int, int]] = COMMON_ASPECTS) -> List[Tuple[int, int]]:
    """(height, width) of a picture of each aspect ratio, landscape and portrait (1000 px long)."""
    shapes = []
    for width, height in (sorted(aspect, reverse=True) for aspect in aspects):  # 3:4 is 4:3 upright
        for shape in ((round(1000 * height / width), 1000), (1000, round(1000 * height / width))):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def warm_inputs(settings: Settings, styles: int,
                aspects: Sequence[Tuple[int, int]] = COMMON_ASPECTS) -> List[InputShapes]:
    """The pictures whose runs compile every bucket of `aspects` at settings' sizes: one per
    content bucket (the largest scale's; coarser scales and the style passes come along), with
    `styles` paintings of the same aspect ratio."""
    largest, seen, inputs = scale_sizes(settings)[-1], set(), []
    for shape in aspect_shapes(aspects):
        buckets = tuple(bucket_shape(*long_side_shape(*shape, size)) for size in scale_sizes(settings))
        buckets += (bucket_shape(*long_side_shape(*shape, style_side(settings.replace(image_size=largest)))),)
        if buckets not in seen:
            seen.add(buckets)
            inputs.append(InputShapes(shape, (shape,) * styles))
    return inputs


def aspect_list(text: str) -> Tuple[Tuple[int, int], ...]:
    """"4:3,3:2" -> ((4, 3), (3, 2)): --precompile's value (argparse's error names what is wrong)."""
    aspects = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise argparse.ArgumentTypeError(f"expected aspect ratios such as 4:3,16:9, got {item.strip()!r}")
        aspects.append((int(parts[0]), int(parts[1])))
    return tuple(aspects)


def like_regions(regions: Regions, shape: Tuple[int, int]) -> Regions:
    """Regions that compile what `regions` (checked) compile, for a picture of `shape`: as many,
    as horizontal bands, every one styled, the same per-region terms weighed."""
    bands = np.zeros((regions.count,) + tuple(shape), np.float32)
    for index, rows in enumerate(np.array_split(np.arange(shape[0]), regions.count)):
        bands[index, rows] = 1.0
    ones = None if regions.content_weights is None else [1.0] * regions.count
    return Regions(bands, styles_of=np.ones((regions.count, len(regions.styles)), np.float32), content_weights=ones,
                   tv_weights=None if regions.tv_weights is None else [1.0] * regions.count)


def precompile(settings: Settings, load_model: Callable[[], Model], members: Sequence[Member], layout: Layout,
               styles: int = 1, aspects: Sequence[Tuple[int, int]] = COMMON_ASPECTS,
               stream: Optional[TextIO] = None, regions: Optional[Regions] = None) -> Tuple[int, int, float]:
    """Run one step of `settings` on a gray picture per bucket of `aspects` (`warm_inputs`),
    compiling what those runs compile into the cache. With `regions` (checked), runs with as many
    regions, as the run's map or mask makes. Returns (buckets, programs compiled, seconds)."""
    if settings.network.shape_buckets == "off":
        raise UserInputError("--precompile: fills the cache for shape buckets; --shape-buckets off "
                             "compiles for each photo's own size")
    warm = settings.replace(shape_buckets="on", num_steps=1, print_every=0, save_every=0)
    model = load_model()
    began, programs = time.perf_counter(), 0
    inputs = warm_inputs(warm, styles, aspects)
    for index, shapes in enumerate(inputs, start=1):
        region_options = None if regions is None else like_regions(regions, shapes.content)
        shapes = dataclasses.replace(shapes, regions=0 if regions is None else regions.count)
        plan = plan_run(warm, shapes, layout)
        content = np.full(shapes.content + (3,), 0.5, np.float32)
        paintings = [np.full(shape + (3,), 0.5, np.float32) for shape in shapes.styles]
        with CompileCounter() as compiled:
            run_plan(plan, content, paintings, model, members, RunOptions(regions=region_options))
        programs += len(compiled.programs)
        height, width = bucket_shape(*plan.working_shape)
        if stream is not None:
            print(f"bucket {index}/{len(inputs)}: {width}x{height} px, {len(compiled.programs)} programs "
                  f"({time.perf_counter() - began:.1f} s)", file=stream, flush=True)
    platform = jax.devices()[0].platform
    if stream is not None and settings.network.shape_buckets != "on" and platform in COMPILE_SECONDS:
        print(f"note: on a {platform.upper()}, runs with these flags use a bucket only where the photo's padding "
              f"costs less than the compile it saves; --shape-buckets on uses them for every photo", file=stream)
    return len(inputs), programs, time.perf_counter() - began
