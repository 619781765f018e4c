"""Spatial control (Gatys et al. 2017): guided Gram losses against a float64 transcription, guides
carried down the network against brute-force receptive fields, regions that do what they say,
everywhere a run goes, and one-line refusals of bad maps."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from datafiles import IMAGES
from test_cli import _main
from nst_jax.config.presets import preset
from nst_jax.engine.regions import Regions
from nst_jax.errors import UserInputError
from nst_jax.engine.memory import estimate_memory, estimate_run
from nst_jax.engine.stages import InputShapes
from nst_jax.engine.stylize import RunOptions, make_members, stylize, stylize_batch
from nst_jax.imaging import images
from nst_jax.imaging.regions import color_guides, find_colors, parse_color
from nst_jax.loss import terms as losses
from nst_jax.loss.objective import (Objective, RegionGuides, Targets, content_targets, loss_terms, loss_weights,
                                    style_grams, total_loss, vgg_features)
from nst_jax.model.guides import layer_guides
from nst_jax.model.layers import LAYER_ORDER
from nst_jax.weights.params_file import Model
from weights_tools.synthetic import synthetic_params


# --- the loss -----------------------------------------------------------------------------------

def _reference_guided_loss(features, guides, targets, weights, gram_normalization, style_loss, image_positions):
    """The paper's guided style loss in float64 numpy: F_r = F ∘ t_r, G_r = F_rᵀ F_r divided as
    the convention divides, M_r = Σ t_r² standing for H·W; Σ_r λ_r E_r."""
    f = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    channels = f.shape[1]
    total = 0.0
    for region, guide in enumerate(np.asarray(guides, np.float64)):
        weighted = f * guide.reshape(-1, 1)
        gram = weighted.T @ weighted
        mass = np.sum(guide ** 2)
        gram = {"raw": gram, "hw": gram / mass, "chw": gram / (channels * mass)}[gram_normalization]
        difference = gram - np.asarray(targets[region], np.float64)
        distance = {"mse": lambda: np.mean(difference ** 2), "sum": lambda: np.sum(difference ** 2),
                    "gatys": lambda: np.sum(difference ** 2) / (4 * channels ** 2 * mass ** 2),
                    "keras_example": lambda: np.sum(difference ** 2) / (4 * 9 * image_positions ** 2)}[style_loss]()
        total += weights[region] * distance
    return total


@pytest.mark.parametrize("gram_normalization,style_loss",
                         list(itertools.product(losses.GRAM_NORMALIZATIONS, losses.STYLE_LOSSES)))
def test_guided_style_loss_equals_a_float64_transcription_of_the_paper(gram_normalization, style_loss):
    rng = np.random.default_rng(1)
    features = rng.uniform(0, 3, (9, 11, 16)).astype(np.float32)
    guides = rng.uniform(0, 1, (3, 9, 11)).astype(np.float32)
    guides[2, :, :5] = 0  # a region with part of the layer outside it
    targets = rng.uniform(0, 2, (3, 16, 16)).astype(np.float32)
    weights = np.array([0.5, 0.25, 0.0], np.float32)  # a region left out weighs nothing
    ours = losses.guided_gram_distance(
        losses.normalized_guided_grams(losses.guided_gram_products(features, guides), losses.guide_mass(guides),
                                       gram_normalization),
        targets, losses.guide_mass(guides), weights, style_loss, image_positions=99)
    expected = _reference_guided_loss(features, guides, targets, weights, gram_normalization, style_loss, 99)
    np.testing.assert_allclose(float(ours), expected, rtol=2e-5)


@pytest.mark.parametrize("convention", losses.CONTENT_LOSSES)
def test_weighted_content_loss_equals_a_float64_transcription(convention):
    rng = np.random.default_rng(5)
    features, target = (rng.normal(size=(7, 9, 4)).astype(np.float32) for _ in range(2))
    weights = rng.uniform(0, 3, (7, 9)).astype(np.float32)
    squared = weights[..., None].astype(np.float64) * (features.astype(np.float64) - target) ** 2
    expected = {"half_sum": 0.5 * squared.sum(), "sum": squared.sum(), "mean": squared.sum() / squared.size}[convention]
    ours = losses.content_loss(features, target, convention, position_weights=weights)
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)


@pytest.mark.parametrize("tv_loss", losses.TV_LOSSES)
def test_weighted_total_variation_equals_a_float64_transcription(tv_loss):
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (6, 8, 3))
    weights = rng.uniform(0, 2, (6, 8))
    down, right = x[1:] - x[:-1], x[:, 1:] - x[:, :-1]  # each term weighed at its top-left pixel
    if tv_loss == "l1":
        expected = (weights[:-1, :, None] * np.abs(down)).sum() + (weights[:, :-1, None] * np.abs(right)).sum()
    else:
        squared = down[:, :-1] ** 2 + right[:-1] ** 2
        expected = (weights[:-1, :-1, None] * (0.5 * squared if tv_loss == "l2" else squared ** 1.25)).sum()
    ours = losses.total_variation(x.astype(np.float32), tv_loss, 2.5, position_weights=weights.astype(np.float32))
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def small_images():
    rng = np.random.default_rng(0)
    return tuple(jnp.asarray(rng.uniform(0, 255, (20, 26, 3)).astype(np.float32)) for _ in range(3))


@pytest.mark.parametrize("name,remat", [("neural-style", "none"), ("gatys", "tiles"), ("keras-example", "blocks"),
                                        ("tf-tutorial", "none")])
def test_one_region_covering_everything_is_the_unguided_loss(params, small_images, name, remat):
    settings = preset(name).replace(style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",),
                                    style_layer_weights=None, content_layer_weights=None, remat=remat)
    objective = Objective.from_settings(settings, "caffe")
    content, style, start = small_images
    whole = layer_guides(np.ones((1, 20, 26)), objective.style_layers)
    plain = Targets(content_targets(objective, params, content), style_grams(objective, params, style))
    ones = {layer: np.ones(layer_guides(np.ones((1, 20, 26)), [layer])[layer].shape[1:], np.float32)
            for layer in objective.content_layers}  # content and TV weighed 1 everywhere
    guided = Targets(plain.content, style_grams(objective, params, style, guides=whole),
                     guides=RegionGuides(whole, {layer: np.ones(1, np.float32) for layer in objective.style_layers},
                                         ones, np.ones((20, 26), np.float32)))
    weights = loss_weights(1.0, 1e3, 1e-3)
    for layer in objective.style_layers:
        np.testing.assert_array_equal(guided.style[layer][0], plain.style[layer])
    # Jitted with everything but the objective as arguments (an eager gradient dispatches each op:
    # eagerly the loss is equal bit for bit, 4× slower to test).
    terms = jax.jit(loss_terms, static_argnums=0)
    guided_terms, plain_terms = (terms(objective, params, start, targets, weights) for targets in (guided, plain))
    for term in ("style", "content", "tv"):  # two programs, fused apart: float32 rounding
        np.testing.assert_allclose(guided_terms[term], plain_terms[term], rtol=2e-7, err_msg=term)
    gradient = jax.jit(jax.grad(total_loss, argnums=2), static_argnums=0)
    gradients = [gradient(objective, params, start, targets, weights) for targets in (plain, guided)]
    np.testing.assert_allclose(gradients[1], gradients[0], rtol=0, atol=2e-6 * float(jnp.abs(gradients[0]).max()))


# --- guides down the network --------------------------------------------------------------------

def _receptive_fields(size, layer):
    """[(first, last)] input rows each unit of `layer` sees, walking the network: a 3×3
    convolution joins the fields of a unit and its two neighbours (the zero padding sees no
    pixel), a 2×2 pooling joins two fields."""
    fields = [(i, i) for i in range(size)]
    for name in LAYER_ORDER[:LAYER_ORDER.index(layer) + 1]:
        if name.startswith("conv"):
            last = len(fields) - 1
            fields = [(fields[max(i - 1, 0)][0], fields[min(i + 1, last)][1]) for i in range(len(fields))]
        elif name.startswith("pool"):
            fields = [(fields[2 * i][0], fields[2 * i + 1][1]) for i in range(len(fields) // 2)]
    return fields


@pytest.mark.parametrize("propagation", ["all", "inside"])
def test_all_and_inside_are_the_units_whose_receptive_field_touches_or_lies_in_the_region(propagation):
    rng = np.random.default_rng(2)
    region = np.zeros((37, 45), bool)
    region[5:30, 8:40] = True
    region |= rng.uniform(size=region.shape) < 0.05  # specks: single pixels count for "all"
    soft = np.where(region, rng.uniform(0.5, 1.0, region.shape), rng.uniform(0.0, 0.49, region.shape))
    layers = ("relu1_1", "relu2_1", "relu3_1", "pool3")
    found = layer_guides(soft[None], layers, propagation)
    for layer in layers:
        rows, columns = _receptive_fields(37, layer), _receptive_fields(45, layer)
        expected = np.zeros((len(rows), len(columns)))
        for (i, (r0, r1)), (j, (c0, c1)) in itertools.product(enumerate(rows), enumerate(columns)):
            seen = region[r0:r1 + 1, c0:c1 + 1]
            expected[i, j] = seen.any() if propagation == "all" else seen.all()
        np.testing.assert_array_equal(found[layer][0], expected, err_msg=layer)


def test_simple_is_the_area_average_on_the_pooling_grid_and_grow_dilates():
    rng = np.random.default_rng(3)
    guide = rng.uniform(0, 1, (2, 21, 34))
    found = layer_guides(guide, ("relu3_1",), "simple")["relu3_1"]
    expected = guide[:, :20, :32].reshape(2, 5, 4, 8, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    dot = np.zeros((1, 16, 16))
    dot[0, 6, 9] = 1
    grown = layer_guides(dot, ("relu1_1",), "simple", grow=2)["relu1_1"][0]
    assert grown.sum() == 25 and grown[4:9, 7:12].all()
    shrunk = layer_guides(np.pad(np.ones((1, 8, 8)), ((0, 0), (4, 4), (4, 4))), ("relu1_1",), "simple", grow=-1)
    assert shrunk["relu1_1"].sum() == 36


def test_maps_read_named_colors_with_a_tolerance_for_anti_aliased_edges():
    seg = np.zeros((10, 20, 3), np.float32)
    seg[:, 12:] = (0, 0, 1)
    seg[:, :12] = (1, 0, 0)
    seg[:, 11] = (0.8, 0.05, 0.15)  # an anti-aliased seam, nearer red
    seg[:, 12] = (0.5, 0.0, 0.5)  # halfway (purple): a seam, no region within the tolerance
    assert find_colors(seg, 48) == [(255, 0, 0), (0, 0, 255)]  # the most common first, no seams
    guides = color_guides(seg, [parse_color("red"), parse_color("#0000ff")], 64)
    assert guides[0, :, :12].all() and guides[1, :, 13:].all() and not guides[:, :, 12].any()
    assert parse_color("0/128/255") == (0, 128, 255)
    with pytest.raises(ValueError, match="not a color"):
        parse_color("redd")


# --- regions do what they say -------------------------------------------------------------------

def _region_gram(objective, params, pixels, guides, layer):
    return np.asarray(style_grams(objective, params, jnp.asarray(pixels), guides=guides)[layer])


def test_each_region_takes_its_own_paintings_statistics(params):
    """A content of two halves, two paintings of clearly different statistics (bright warm noise,
    dark blue noise): each half of the output is at least 5× nearer (Gram distance, at every
    style layer) its own painting than the other."""
    settings = preset("neural-style").replace(image_size=48, num_steps=300, content_weight=0.0, tv_weight=0.0,
                                              style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",),
                                              style_layer_weights=None, init="gray", print_every=0)
    rng = np.random.default_rng(4)
    content = np.full((32, 48, 3), 0.5, np.float32)
    warm = np.clip(rng.normal(0.8, 0.15, (40, 40, 3)), 0, 1).astype(np.float32) * np.array([1, 0.7, 0.2], np.float32)
    dark = np.clip(rng.normal(0.15, 0.05, (40, 40, 3)), 0, 1).astype(np.float32) * np.array([0.3, 0.5, 1], np.float32)
    halves = np.zeros((2, 32, 48), np.float32)
    halves[0, :, :24], halves[1, :, 24:] = 1, 1
    model = Model(jax.tree_util.tree_map(np.asarray, params), "caffe")
    result = stylize(content, [warm, dark], settings, model, RunOptions(regions=Regions(halves)))
    objective = Objective.from_settings(settings, "caffe")
    pixels = result.image * 255.0
    output_regions = layer_guides(halves, objective.style_layers)
    whole = layer_guides(np.ones((2, 40, 40)), objective.style_layers)
    for layer in objective.style_layers:
        ours = _region_gram(objective, params, pixels, output_regions, layer)
        paintings = [_region_gram(objective, params, style * 255.0, whole, layer)[0] for style in (warm, dark)]
        for region, (own, other) in enumerate(((0, 1), (1, 0))):
            near, far = (np.sum((ours[region] - paintings[k]) ** 2) for k in (own, other))
            assert far >= 5 * near, (layer, region, near, far)


@pytest.fixture(scope="module")
def region_run_inputs(photo):
    content = photo("tubingen.jpg", 40)
    styles = [photo("starry_night.jpg", 36), photo("the_scream.jpg", 36)]
    height, width = content.shape[:2]
    seg = np.zeros((2, height * 2, width * 2), np.float32)  # a map of another size: resized
    seg[0, : height], seg[1, height:] = 1, 1
    style_map = np.zeros((2,) + styles[1].shape[:2], np.float32)
    style_map[0, :, :10], style_map[1, :, 10:] = 1, 1
    return content, styles, Regions(seg, (None, style_map), styles_of=[[1, 1], [0, 0]], feather=1.5)


def test_regions_run_alike_in_buckets_tiles_scales_and_batches(params, region_run_inputs):
    """One batch (a blend and the first painting's member) at two scales: padded to shape buckets with
    tiles, the same images as the exact-shape run without remat; where no painting was asked
    (region 2 of member "a"), the output is the content."""
    content, styles, regions = region_run_inputs
    settings = preset("neural-style").replace(image_size=40, scales=2, num_steps=3, print_every=0, optimizer="adam",
                                              learning_rate=4.0, style_layers=("relu1_1", "relu2_1"),
                                              content_layers=("relu2_1",))
    model = Model(jax.tree_util.tree_map(np.asarray, params), "caffe")
    members = make_members(settings, ["a", "b"])[:1] + make_members(settings, ["a", "b"], per_style=False)
    runs = [stylize_batch(content, styles, settings.replace(shape_buckets=buckets, remat=remat), model, members,
                          RunOptions(regions=regions))
            for buckets, remat in (("off", "none"), ("on", "tiles"))]
    for exact, bucketed in zip(*runs):
        np.testing.assert_allclose(bucketed.image, exact.image, atol=2 / 255)
        np.testing.assert_allclose(bucketed.loss, exact.loss, rtol=1e-4)
    first = runs[0][0].image
    half = first.shape[0] // 2
    np.testing.assert_allclose(first[half + 6:], np.clip(content[half + 6:], 0, 1), atol=1e-6)  # past the feather
    assert np.abs(first[: half - 3] - content[: half - 3]).max() > 0.05  # styled where asked


def test_a_region_that_weighs_the_content_more_keeps_closer_to_it(params, photo):
    content = photo("tubingen.jpg", 48)
    halves = np.zeros((2,) + content.shape[:2], np.float32)
    halves[0, :, :24], halves[1, :, 24:] = 1, 1
    settings = preset("neural-style").replace(image_size=48, num_steps=20, init="content", print_every=0,
                                              style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",),
                                              style_layer_weights=None, content_layer_weights=None)
    result = stylize(content, [photo("starry_night.jpg", 48)], settings,
                     Model(jax.tree_util.tree_map(np.asarray, params), "caffe"),
                     RunOptions(regions=Regions(halves, styles_of=[[1], [1]], content_weights=[20, 0.05])))
    held, loose = (np.abs(result.image[:, columns] - content[:, columns]).mean()
                   for columns in (slice(0, 20), slice(28, 48)))
    assert held * 2 < loose, (held, loose)


def test_the_memory_estimate_counts_the_guides_and_covers_xla():
    settings = preset("neural-style").replace(image_size=96, shape_buckets="off", lbfgs_memory=7)
    plain, guided = (estimate_run(settings, InputShapes((64, 96), ((64, 96),), regions)) for regions in (0, 3))
    assert guided.state > plain.state and guided.loop > plain.loop
    xla_plain, xla = (estimate_memory(settings, 64, 96, regions=regions) for regions in (0, 3))
    assert xla.temporaries > xla_plain.temporaries  # the guided products are there to count
    assert guided.params + guided.state + guided.loop >= xla.total


# --- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    seg = np.zeros((30, 40, 3), np.uint8)
    seg[:15] = (255, 0, 0)
    seg[15:] = (0, 0, 255)
    Image.fromarray(seg).save(folder / "seg.png")
    Image.fromarray(np.full((30, 40, 3), (255, 0, 0), np.uint8)).save(folder / "red-only.png")
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(folder / "white.png")
    Image.fromarray(np.where(np.arange(40)[None] < 20, 255, 0).repeat(30, 0).astype(np.uint8)).save(folder / "half.png")
    return folder


@pytest.mark.parametrize("flags,message", [
    (["--mask", "{maps}/white.png"], "--mask {maps}/white.png: is all one value"),
    (["--content-seg", "{maps}/seg.png", "--seg-colors", "red,green"], "--content-seg {maps}/seg.png: has no green pixel"),
    (["--content-seg", "{maps}/seg.png", "--style-seg", "{maps}/seg.png,{maps}/seg.png"],
     "--style-seg: 2 map(s) for 1 style images"),
    (["--content-seg", "{maps}/seg.png", "--style-seg", "{maps}/red-only.png"], "--style-seg: no style map has blue"),
    (["--content-seg", "{maps}/seg.png", "--region-styles", "1,2"], "--region-styles: '2' is not none or style"),
    (["--content-seg", "{maps}/seg.png", "--region-styles", "none,none"], "--region-styles: every region is none"),
    (["--content-seg", "{maps}/seg.png", "--region-weights", "1"], "--region-weights: 1 weights for 2 regions"),
    (["--mask", "{maps}/half.png", "--region-content-weights", "1,2,3"],
     "--region-content-weights: 3 weights for 2 regions (inside the mask, outside the mask)"),
    (["--region-tv-weights", "1,2"], "--region-tv-weights: needs --content-seg or --mask"),
    (["--content-seg", "{maps}/white.png"], "--content-seg {maps}/white.png: is all one color"),
    (["--content-seg", "{maps}/missing.png"], "{maps}/missing.png"),
    (["--mask", "{maps}/seg.png", "--content-seg", "{maps}/seg.png"], "--mask: conflicts with --content-seg"),
    (["--style-seg", "{maps}/seg.png"], "--style-seg: needs --content-seg"),
    (["--content-seg", "{maps}/seg.png", "-o", "{maps}/seg.png"], "-o {maps}/seg.png: is an input of this run"),
])
def test_bad_maps_are_one_line_naming_the_flag_before_anything_runs(maps, tmp_path, flags, message):
    output = tmp_path / "out.png"
    argv = [IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", "-o", output, "--weights", tmp_path / "none.npz",
            *[flag.format(maps=maps) for flag in flags]]
    if "-o" in flags:
        argv = argv[:2] + argv[4:]
    status, stderr = _main(argv)
    assert status == 2 and stderr.count("\n") == 1 and message.format(maps=maps) in stderr, stderr
    assert not output.exists()


def test_a_mask_styles_its_inside_and_keeps_the_content_outside(maps, tmp_path, synthetic_params_path):
    mask = np.zeros((60, 80), np.uint8)
    mask[:, :40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    output = tmp_path / "out.png"
    status, stderr = _main([IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", "-o", output,
                            "--weights", synthetic_params_path, "--mask", tmp_path / "mask.png", "--image-size", "48",
                            "--num-steps", "4", "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1"])
    assert status == 0, stderr
    result = np.asarray(Image.open(output), np.float32) / 255
    content = images.resize_long_side(images.load_image(IMAGES / "tubingen.jpg"), 48)
    width = result.shape[1]
    assert np.abs(result[:, width // 2 + 2:] - content[:, width // 2 + 2:]).max() <= 2 / 255
    assert np.abs(result[:, : width // 2 - 2] - content[:, : width // 2 - 2]).mean() > 0.02


def test_a_clips_mask_follows_the_flow_and_keeps_the_content_outside(params):
    """A square mask on the first frame of a clip that moves 2 px right and 1 px down per frame:
    with regions_follow_flow the third frame's styled square has moved with it, and outside it
    the frame is kept as it is."""
    pytest.importorskip("cv2")
    from test_video import CHEAP, texture, translating
    from nst_jax.video.transfer import FrameOptions, VideoSettings, stylize_frames

    frames = translating(3)
    mask = np.zeros((48, 48), np.float32)
    mask[12:28, 12:28] = 1
    regions = Regions(np.stack([mask, 1 - mask]), styles_of=[[1], [0]])
    settings = preset("neural-style").replace(optimizer="adam", learning_rate=8.0, num_steps=6, print_every=0,
                                              **CHEAP)
    outputs = []
    stylize_frames(frames, [texture(48, 48, seed=3)], settings, VideoSettings(frame_steps=4, regions_follow_flow=True),
                   Model(jax.tree_util.tree_map(np.asarray, params), "caffe"),
                   FrameOptions(on_frame=lambda result: outputs.append(result.image), regions=regions))
    last, frame = outputs[2], frames[2]
    changed = np.abs(last - frame).max(axis=-1) > 1e-6
    assert changed[15:29, 17:31].all()  # styled inside the square moved 2 px down, 4 px right
    outside = np.ones((48, 48), bool)
    outside[12:32, 14:34] = False  # the moved square and a 2 px margin for the warp's soft edge
    assert not changed[outside].any()
    assert changed[14:28, 28:31].all()  # where the first frame's square was not: it moved


def test_precompile_with_a_mask_warms_what_a_masked_run_compiles(params, photo):
    from nst_jax.cli.precompile import precompile
    from nst_jax.engine.devices import Layout
    from nst_jax.engine.timings import CompileCounter

    settings = preset("neural-style").replace(image_size=48, num_steps=2, shape_buckets="on", print_every=0,
                                              content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    model = Model(jax.tree_util.tree_map(np.asarray, params), "caffe")
    content = photo("tubingen.jpg", 48)[:, :-2]  # 36×46: another photo of 4:3's bucket
    inside = np.zeros((2,) + content.shape[:2], np.float32)
    inside[0, 5:30, 10:40] = 1
    inside[1] = 1 - inside[0]
    regions = Regions(inside, styles_of=[[1], [0]], feather=1.0)
    (member,) = make_members(settings, ["style"], per_style=False)
    precompile(settings, lambda: model, [member], Layout(), 1, [(4, 3)], regions=regions.checked(1))
    with CompileCounter() as compiled:
        stylize(content, [photo("starry_night.jpg", 48)], settings, model, RunOptions(regions=regions))
    assert compiled.programs == [], compiled.programs


def test_a_sweep_of_masks_runs_as_one_batch_each_member_as_it_would_alone(params, photo):
    """One Regions per member (a sweep of masks, the second with a painting's map too): the batch
    equals each member run on its own."""
    content, style = photo("tubingen.jpg", 40), photo("starry_night.jpg", 40)
    settings = preset("neural-style").replace(image_size=40, num_steps=4, optimizer="adam", learning_rate=4.0,
                                              print_every=0, style_layers=("relu1_1", "relu2_1"),
                                              content_layers=("relu2_1",), shape_buckets="off")
    left, top = np.zeros((2,) + content.shape[:2], np.float32), np.zeros((2,) + content.shape[:2], np.float32)
    left[0, :, :20], top[0, :15] = 1, 1
    left[1], top[1] = 1 - left[0], 1 - top[0]
    painting_map = np.zeros((2,) + style.shape[:2], np.float32)
    painting_map[0, :, :25], painting_map[1, :, 25:] = 1, 1
    sweep = [Regions(left, styles_of=[[1], [0]], content_weights=[1.0, 1.0]),
             Regions(top, (painting_map,), content_weights=[2.0, 1.0])]
    model = Model(jax.tree_util.tree_map(np.asarray, params), "caffe")
    members = make_members(settings, ["style"], per_style=False, seeds=[0, 1])
    batch = stylize_batch(content, [style], settings, model, members, RunOptions(regions=sweep))
    for member, regions, together in zip(members, sweep, batch):
        alone = stylize_batch(content, [style], settings, model, [member], RunOptions(regions=regions))[0]
        np.testing.assert_allclose(together.image, alone.image, atol=2e-5)
        np.testing.assert_allclose(together.loss, alone.loss, rtol=1e-5)
    np.testing.assert_array_equal(batch[0].image[:, 24:], np.clip(content[:, 24:], 0, 1))  # kept: outside its mask
    three = Regions(np.stack([left[0], top[0], 1 - np.maximum(left[0], top[0])]))
    with pytest.raises(UserInputError, match="as many regions"):
        stylize_batch(content, [style], settings, model, members, RunOptions(regions=[sweep[0], three]))


def test_a_folder_of_per_frame_masks_styles_each_frame_inside_its_own(tmp_path, synthetic_params_path):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    from test_video import CHEAP_FLAGS, texture, translating, write_folder
    from nst_jax.cli.video import main as video_main

    frames = translating(3)
    clip = write_folder(tmp_path / "clip", frames)
    masks = []
    for index in range(3):  # a square 6 px further right in each frame
        mask = np.zeros((48, 48, 3), np.float32)
        mask[10:30, 6 + 6 * index:26 + 6 * index] = 1.0
        masks.append(mask)
    mask_folder = write_folder(tmp_path / "masks", masks)
    images.save_image(tmp_path / "style.png", texture(64, 64, seed=3))
    common = [clip, tmp_path / "style.png", "--weights", synthetic_params_path, *CHEAP_FLAGS]
    assert video_main([*common, "--mask", mask_folder, "-o", tmp_path / "out"]) == 0
    outputs = [images.load_image(path) for path in sorted((tmp_path / "out").glob("*.png"))]
    assert len(outputs) == 3
    for output, frame, mask in zip(outputs, frames, masks):
        changed = np.abs(output - frame).max(axis=-1) > 1.5 / 255  # the PNG's 8 bits aside
        inside = mask[..., 0] > 0
        assert changed[inside].mean() > 0.9 and not changed[~inside].any()
    fewer = write_folder(tmp_path / "fewer", masks[:2])
    assert video_main([*common, "--mask", fewer, "-o", tmp_path / "other"]) == 2  # 2 masks for 3 frames
    assert not (tmp_path / "other").exists()
