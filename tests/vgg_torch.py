"""A float64 PyTorch reference for the loss and its image gradient (neural-style's conventions,
an independent VGG-19 up to relu2_1 with the same weights): tests hold every path against it."""

import numpy as np
import torch

from nst_jax.config.presets import preset
from nst_jax.config.settings import Settings

CONTENT, STYLES = "relu2_1", ("relu1_1", "relu2_1")
HEIGHT, WIDTH = 32, 48  # column tiles: 4 of 12 columns; split by rows over 4 devices: 8 each
# float32 against float64 through three convolutions of random weights; measured: 1.5e-7
# relative for the loss, 8.7e-7 of the gradient's largest entry.
LOSS_RTOL, GRADIENT_ATOL = 1e-5, 1e-5  # the gradient's, as a share of its largest entry


def settings(**changes) -> Settings:
    """neural-style's loss on this reference's layers, without TV."""
    return preset("neural-style").replace(content_layers=(CONTENT,), style_layers=STYLES, tv_weight=0.0,
                                          **changes)


def reference_pictures():
    """Four (HEIGHT, WIDTH, 3) float32 RGB pictures in 0..255 (content, style, start, another)."""
    rng = np.random.default_rng(11)
    return [rng.uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32) for _ in range(4)]
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# VGG-19 up to relu2_1: (name, output channels) with "pool" for a 2×2 max pooling.
NETWORK = [("conv1_1", 64), ("relu1_1", 0), ("conv1_2", 64), ("relu1_2", 0), ("pool1", 0),
           ("conv2_1", 128), ("relu2_1", 0)]


def torch_features(params, rgb):
    """{layer: (C, H, W) float64} of RGB pixels in 0..255 (a torch tensor), neural-style's way:
    BGR minus the Caffe means, 3×3 convolutions padded by 1, ReLU, 2×2 max pooling."""
    x = rgb.flip(-1) - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64)
    x, found = x.permute(2, 0, 1)[None], {}
    for name, _ in NETWORK:
        if name.startswith("conv"):
            kernel = torch.from_numpy(np.transpose(np.asarray(params[name]["kernel"], np.float64), (3, 2, 0, 1)))
            bias = torch.from_numpy(np.asarray(params[name]["bias"], np.float64))
            x = torch.nn.functional.conv2d(x, kernel, bias, padding=1)
        elif name.startswith("relu"):
            x = torch.relu(x)
        else:
            x = torch.nn.functional.max_pool2d(x, 2)
        found[name] = x[0]
    return found


def torch_gram(features):
    channels, height, width = features.shape
    flat = features.reshape(channels, height * width)
    return flat @ flat.T / (channels * height * width)


def torch_loss_and_gradient(params, content, style, start, content_weight, style_weight):
    """(loss, its gradient with respect to the start image's RGB pixels), float64."""
    as_tensor = lambda picture: torch.from_numpy(np.asarray(picture, np.float64))  # noqa: E731
    target = torch_features(params, as_tensor(content))[CONTENT]
    style_features = torch_features(params, as_tensor(style))
    grams = {layer: torch_gram(style_features[layer]) for layer in STYLES}
    x = as_tensor(start).requires_grad_(True)
    found = torch_features(params, x)
    content_loss = torch.mean((found[CONTENT] - target) ** 2)
    style_loss = sum(torch.mean((torch_gram(found[layer]) - grams[layer]) ** 2) for layer in STYLES)
    loss = content_weight * content_loss + style_weight * style_loss
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


def assert_matches(ours, reference):
    (value, gradient), (reference_value, reference_gradient) = ours, reference
    np.testing.assert_allclose(float(value), reference_value, rtol=LOSS_RTOL)
    scale = np.abs(reference_gradient).max()
    np.testing.assert_allclose(np.asarray(gradient, np.float64) / scale, reference_gradient / scale,
                               rtol=0, atol=GRADIENT_ATOL)
