"""Named settings, one per reference system, so recipes tuned in those tools carry over.

Each preset's docstring names its source and what a run costs. Flags override any value.
Costs are per step at 512 px (long side) for the step's forward + input-gradient pass through
VGG-19 up to the deepest layer used (see BENCHMARKS.md for measured times).
"""

from nst_jax.errors import UserInputError
from nst_jax.config.settings import Settings

_GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def gatys() -> Settings:
    """Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style" (2015) / CVPR 2016.

    Content ½·Σ(F−P)² at layer 4_2; raw Gram; E_l = Σ(G−A)²/(4N²M²) at layers 1_1…5_1 with
    w_l = 1/5; α/β = 1e-3; no TV; L-BFGS from white noise; average pooling (the paper found it
    gives slightly more appealing results). The paper writes "conv4_2", but its Caffe network
    rectifies conv outputs in place, so those responses are relu4_2 (Gatys' own PyTorch code
    uses r42 and r11…r51). The formulas are the paper's; its network was the "normalized"
    VGG-19 (each layer's activations rescaled to mean 1), which no public release we read
    matches, so with the Caffe-derived weights (the default download) α/β = 1e-3 weighs the
    terms somewhat differently than in the paper. L-BFGS with a line search, as scipy's.
    Cost: 500 L-BFGS steps, network up to conv5_1.
    """
    return Settings.from_flat(
        content_layers=("relu4_2",), style_layers=_GATYS_STYLE_LAYERS,
        style_layer_weights=(0.2,) * 5, content_weight=1.0, style_weight=1e3, tv_weight=0.0,
        content_loss="half_sum", gram_normalization="raw", style_loss="gatys",
        optimizer="lbfgs", lbfgs_linesearch="zoom", num_steps=500, lbfgs_memory=100, pooling="avg",
        init="noise", init_noise_std=0.1, pixel_range=255.0)


def neural_style() -> Settings:
    """jcjohnson/neural-style (Lua Torch) defaults and loss scaling (neural-style-pt shares them,
    except its TV, the L1 sum: add --tv-loss l1 there).

    content_weight 5 (MSE at relu4_2), style_weight 100 (MSE of Grams ÷ C·H·W at relu1_1…relu5_1,
    every layer weight 1), tv_weight 1e-3 (the L2 TV whose gradient neural-style computes),
    L-BFGS 1000 iterations with 100 correction pairs, torch's fixed step 1 without a line search
    (optim.lbfgs / torch.optim.LBFGS as both call it), init random ×0.001 in Caffe units around
    the mean color, max pooling, 512 px, Caffe weights (0..255 pixels). Adam (-optimizer adam)
    uses its learning rate 1e1. Cost: 1000 L-BFGS steps, network up to conv5_1.
    """
    return Settings()


def thesis() -> Settings:
    """McCafferty (2020) thesis conventions (Keras VGG-19, Caffe-derived weights).

    Content Σ(F−P)² at block5_conv3 (relu5_3); raw Gram; per layer Σ(G−A)², mean over the five
    layers block1_conv1…block5_conv1 (w_l = 1/5); no TV; content weight 100. The thesis sweeps the
    style weight from 1e-7 to 1e-2 (its figure 4.4); 1e-4, mid-sweep, is the default here.
    Cost: network up to conv5_3 (three more 512-channel convolutions than Gatys at 1/16 area).
    """
    return Settings.from_flat(
        content_layers=("relu5_3",), style_layers=_GATYS_STYLE_LAYERS,
        style_layer_weights=(0.2,) * 5, content_weight=100.0, style_weight=1e-4, tv_weight=0.0,
        content_loss="sum", gram_normalization="raw", style_loss="sum",
        optimizer="lbfgs", lbfgs_linesearch="zoom", num_steps=500, init="content", pixel_range=255.0)


def sandahl() -> Settings:
    """Sandahl et al. (2021) conventions (Keras VGG-19, Caffe-derived weights).

    Content Σ(F−P)² at block5_conv2 (relu5_2); raw Gram; E_l = Σ(G−A)²/(4N²M²) with w_l = 1/5;
    TV Σ((Δx)²+(Δy)²)^1.25 (β = 2.5). The paper tunes α, β, γ per image; the defaults here keep
    Gatys' α/β = 1e-3 and a TV weight that smooths without blurring at 512 px.
    Cost: network up to conv5_2.
    """
    return Settings.from_flat(
        content_layers=("relu5_2",), style_layers=_GATYS_STYLE_LAYERS,
        style_layer_weights=(0.2,) * 5, content_weight=1.0, style_weight=1e3, tv_weight=1e-3,
        content_loss="sum", gram_normalization="raw", style_loss="gatys", tv_loss="power",
        tv_beta=2.5, optimizer="lbfgs", lbfgs_linesearch="zoom", num_steps=500, init="content", pixel_range=255.0)


def keras_example() -> Settings:
    """fchollet's Keras example "Neural style transfer" (keras.io, Keras 3 version).

    Content Σ(F−P)² at block5_conv2 weight 2.5e-8; style Σ(G−A)²/(4·3²·(H·W)²) with H·W the
    image size (the example's constants), weight 1e-6 ÷ 5 per layer at block1_conv1…block5_conv1;
    TV Σ((Δx)²+(Δy)²)^1.25 weight 1e-6; SGD, learning rate 100·0.96^(step/100) (Keras'
    ExponentialDecay, smooth), 4000 iterations from the content image; 0..255 Caffe pixels, no clipping in the example
    (here: clipped each step, see README). The example sizes by height 400; here by long side.
    Cost: 4000 cheap SGD steps, network up to conv5_2.
    """
    return Settings.from_flat(
        content_layers=("relu5_2",), style_layers=_GATYS_STYLE_LAYERS,
        style_layer_weights=(0.2,) * 5, content_weight=2.5e-8, style_weight=1e-6, tv_weight=1e-6,
        content_loss="sum", gram_normalization="raw", style_loss="keras_example",
        tv_loss="power", tv_beta=2.5, optimizer="sgd", learning_rate=100.0, sgd_momentum=0.0,
        lr_decay_rate=0.96, lr_decay_steps=100, lr_decay_staircase=False, num_steps=4000, init="content",
        image_size=400, pixel_range=255.0, print_every=100)


def tf_tutorial() -> Settings:
    """TensorFlow's "Neural style transfer" tutorial (tensorflow.org/tutorials/generative/style_transfer).

    Pixels in [0, 1]; content mean (F−P)² at block5_conv2 × 1e4; Gram ÷ (H·W); style mean (G−A)²
    at block1_conv1…block5_conv1, × 1e-2 ÷ 5; TV tf.image.total_variation (L1 sum) × 30;
    Adam lr 0.02, β1 0.99, ε 0.1; 1000 steps (10 epochs × 100) from the content image, clipped to
    [0, 1] each step; 512 px. Cost: 1000 Adam steps, network up to conv5_2.
    """
    return Settings.from_flat(
        content_layers=("relu5_2",), style_layers=_GATYS_STYLE_LAYERS,
        style_layer_weights=(0.2,) * 5, content_weight=1e4, style_weight=1e-2, tv_weight=30.0,
        content_loss="mean", gram_normalization="hw", style_loss="mse", tv_loss="l1",
        optimizer="adam", learning_rate=0.02, adam_b1=0.99, adam_b2=0.999, adam_eps=0.1,
        num_steps=1000, init="content", pixel_range=1.0, print_every=100)


def pytorch_tutorial() -> Settings:
    """PyTorch's "Neural Transfer Using PyTorch" tutorial (pytorch.org/tutorials/advanced/neural_style_tutorial).

    Pixels in [0, 1], torchvision weights (ImageNet mean/std); losses taken before the ReLU:
    content MSE at conv_4 (= conv2_2) × 1, style MSE of Grams ÷ (C·H·W) at conv_1…conv_5
    (conv1_1, conv1_2, conv2_1, conv2_2, conv3_1) × 1e6; no TV; L-BFGS, 300 steps, from the
    content image, clamped to [0, 1]. Exact with torchvision's vgg19-dcbb9e9d.pth converted
    (`nst_jax.weights.convert`); with the Caffe weights the network differs. Cost: the cheapest
    preset, network only up to conv3_1.
    """
    return Settings.from_flat(
        content_layers=("conv2_2",),
        style_layers=("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"),
        content_weight=1.0, style_weight=1e6, tv_weight=0.0, content_loss="mean",
        gram_normalization="chw", style_loss="mse", optimizer="lbfgs", num_steps=300,
        lbfgs_memory=100, init="content", pixel_range=1.0, image_size=512)


PRESETS = {
    "gatys": gatys,
    "neural-style": neural_style,
    "thesis": thesis,
    "sandahl": sandahl,
    "keras-example": keras_example,
    "tf-tutorial": tf_tutorial,
    "pytorch-tutorial": pytorch_tutorial,
}

DEFAULT_PRESET = "neural-style"


def preset(name: str) -> Settings:
    """The Settings of a named preset."""
    if name not in PRESETS:
        raise UserInputError(f"--preset: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
