"""--content-seg, --style-seg, --mask and their flags -> engine.regions.Regions, every problem a
one-line UserInputError naming the file or flag, before anything compiles."""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from nst_jax.atomic import PathLike
from nst_jax.config.settings import Settings, flag
from nst_jax.engine.regions import Regions
from nst_jax.errors import UserInputError
from nst_jax.imaging import images
from nst_jax.imaging.regions import Color, color_guides, color_name, find_colors, mask_guide, parse_color

NO_STYLE = "none"


def region_paths(settings: Settings) -> List[str]:
    """The maps and masks a run reads (their clashes with outputs and digests are checked)."""
    regions = settings.regions
    return [path for path in (regions.content_seg, regions.mask, *(regions.style_seg or ())) if path is not None]


def load_regions(settings: Settings, style_count: int, content_map: Optional[np.ndarray] = None) -> Optional[Regions]:
    """The run's Regions from its maps or mask (None: no regions). `content_map`: the content's
    map or mask as RGB, read already (a clip's first of a folder of per-frame maps)."""
    flags = settings.regions
    if not flags.given:
        return None
    if flags.style_seg is not None and len(flags.style_seg) != style_count:
        raise UserInputError(f"--style-seg: {len(flags.style_seg)} map(s) for {style_count} style images (one each)")
    if flags.mask is not None:
        mask = mask_guide(images.load_image(flags.mask) if content_map is None else content_map)
        if mask.max() - mask.min() < 1 / 255:
            raise UserInputError(f"--mask {flags.mask}: is all one value ({mask.flat[0]:.2f}): nothing tells "
                                 f"the styled inside (white) from the kept outside (black)")
        guides, names = np.stack([mask, 1.0 - mask]), ["inside the mask", "outside the mask"]
        default = np.stack([np.ones(style_count), np.zeros(style_count)])
        style_guides: List[Optional[np.ndarray]] = [None] * style_count
    else:
        guides, names, colors = _content_map(settings, content_map)
        style_guides = [_style_map(settings, path, colors) for path in (flags.style_seg or ())] or [None] * style_count
        default = _default_mix(settings, names, style_guides, style_count)
    mix = default if flags.region_styles is None else _region_styles(flags.region_styles, names, style_count)
    for region, name in enumerate(names):
        for style, map_guides in enumerate(style_guides):
            if mix[region, style] > 0 and map_guides is not None and not map_guides[region].any():
                raise UserInputError(f"--style-seg {flags.style_seg[style]}: has no {name} pixel, "  # type: ignore[index]
                                     f"and that region takes style {style + 1}")
    if not (mix.sum(axis=1) > 0).any():
        raise UserInputError(f"--region-styles: every region is {NO_STYLE}: no style would be used")
    for field in ("region_weights", "region_content_weights", "region_tv_weights"):
        given = getattr(flags, field)
        if given is not None and len(given) != len(names):
            raise UserInputError(f"--{flag(field)}: {len(given)} weights for {len(names)} regions ({', '.join(names)})")
    regions = Regions(guides, tuple(style_guides), mix, flags.region_weights, flags.mask_feather,
                      flags.region_content_weights, flags.region_tv_weights)
    return regions.checked(style_count)


def map_colors(settings: Settings, seg: np.ndarray) -> List[Color]:
    """The regions' colors: --seg-colors, or those `seg` (the content's map) paints."""
    flags = settings.regions
    if flags.seg_colors is None:
        return find_colors(seg, flags.seg_tolerance)
    colors: List[Color] = []
    for text in flags.seg_colors:
        try:
            colors.append(parse_color(text))
        except ValueError as error:
            raise UserInputError(f"--seg-colors: {error}") from None
    if len(set(colors)) != len(colors):
        raise UserInputError("--seg-colors: a color is listed twice")
    return colors


def frame_guides(settings: Settings, maps: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Each frame's (R, H, W) guides from its own map or mask (RGB), in the regions the first
    map made (`load_regions`): the mask and its outside, or the first map's colors."""
    flags = settings.regions
    if flags.mask is not None:
        return [np.stack([mask, 1.0 - mask]) for mask in map(mask_guide, maps)]
    colors = map_colors(settings, maps[0])
    return [color_guides(seg, colors, flags.seg_tolerance) for seg in maps]


def _content_map(settings: Settings, seg: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[str], List[Color]]:
    """(guides, region names, colors) of --content-seg (`seg`: read already)."""
    flags = settings.regions
    path = str(flags.content_seg)
    seg = images.load_image(path) if seg is None else seg
    colors = map_colors(settings, seg)
    if flags.seg_colors is None and len(colors) < 2:
        raise UserInputError(f"--content-seg {path}: is all one color ({color_name(colors[0])}): a map needs "
                             f"two regions or more (--mask styles part of a picture)")
    guides = color_guides(seg, colors, flags.seg_tolerance)
    names = [color_name(color) for color in colors]
    for name, guide in zip(names, guides):
        if not guide.any():
            raise UserInputError(f"--content-seg {path}: has no {name} pixel (--seg-colors lists it; within "
                                 f"--seg-tolerance {flags.seg_tolerance:g})")
    return guides, names, colors


def _style_map(settings: Settings, path: PathLike, colors: Sequence[Color]) -> np.ndarray:
    return color_guides(images.load_image(path), colors, settings.regions.seg_tolerance)


def _default_mix(settings: Settings, names: Sequence[str], style_guides: Sequence[Optional[np.ndarray]],
                 style_count: int) -> np.ndarray:
    """Who takes what without --region-styles: with style maps, every painting that has the
    region's color; without, region k takes painting k when the counts match, else all."""
    count = len(names)
    if all(guides is None for guides in style_guides):
        return np.eye(count, style_count) if count == style_count else np.ones((count, style_count))
    mix = np.stack([[1.0 if guides is None or guides[region].any() else 0.0 for guides in style_guides]
                    for region in range(count)])
    for region, name in enumerate(names):
        if not mix[region].any():
            raise UserInputError(f"--style-seg: no style map has {name} pixels, which --content-seg paints "
                                 f"(say which style it takes with --region-styles, or {NO_STYLE})")
    return mix


def _region_styles(entries: Sequence[str], names: Sequence[str], style_count: int) -> np.ndarray:
    """--region-styles 1,2+3,none -> the (R, S) mix."""
    if len(entries) != len(names):
        raise UserInputError(f"--region-styles: {len(entries)} entries for {len(names)} regions ({', '.join(names)})")
    mix = np.zeros((len(names), style_count))
    for region, entry in enumerate(entries):
        if entry.lower() == NO_STYLE:
            continue
        for part in entry.split("+"):
            if not part.strip().isdigit() or not 1 <= int(part) <= style_count:
                raise UserInputError(f"--region-styles: {entry!r} is not {NO_STYLE} or style numbers 1 to "
                                     f"{style_count} joined by + (e.g. 1+2)")
            mix[region, int(part) - 1] = 1.0
    return mix
