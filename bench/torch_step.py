"""The same step in plain PyTorch: the yardstick the issue measures our step against.

Same layers (VGG-19 up to the deepest layer the loss reads), same weights (HWIO -> OIHW), same
preprocessing (Caffe: RGB -> BGR, 0..255, minus the means), same Gatys losses (½·Σ(F−P)² content,
raw Gram, E_l = Σ(G−A)²/(4N²M²)), a gradient for the image only (weights do not require grad),
then one Adam update and the clamp to [0, pixel_range]: what one JAX Adam step computes.
Written from the formulas with torch.nn.functional; it shares no code with nst_jax's losses.
"""

import dataclasses
from typing import Any

import numpy as np

from bench import machine
from bench.timing import stopwatch, summarize
from nst_jax.model.layers import LAYER_ORDER
from nst_jax.model.preprocess import CAFFE_MEAN_BGR

# The settings this reference implements: the Gatys preset's loss conventions.
GATYS_CONVENTIONS = {"content_loss": "half_sum", "gram_normalization": "raw", "style_loss": "gatys",
                     "tv_weight": 0.0}


def available():
    """True when torch can be imported (it is an optional extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def device_for(jax_backend):
    """The torch device that matches JAX's backend, or None when torch cannot run there."""
    import torch

    if jax_backend == "cpu":
        return "cpu"
    if jax_backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


@dataclasses.dataclass
class TorchProblem:
    """Weights, targets and the image being optimized, as torch tensors on one device."""

    kernels: dict  # {conv name: (O, I, 3, 3)}
    biases: dict
    content_layers: tuple
    content_layer_weights: tuple
    style_layers: tuple
    style_layer_weights: tuple
    pooling: str
    content_weight: float
    style_weight: float
    pixel_range: float
    pixels: Any  # (1, 3, H, W) RGB in [0, pixel_range], requires_grad
    channels_last: bool
    content_targets: dict = dataclasses.field(default_factory=dict)
    style_targets: dict = dataclasses.field(default_factory=dict)


def _nchw(torch, pixels_hwc, channels_last, device):
    tensor = torch.from_numpy(np.array(pixels_hwc, np.float32)).permute(2, 0, 1)[None].contiguous()
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor.to(device)


def _features(torch, problem, pixels, wanted):
    """{layer: activation (1, C, h, w)} of RGB pixels in [0, pixel_range]."""
    functional = torch.nn.functional
    mean_bgr = torch.tensor(CAFFE_MEAN_BGR, device=pixels.device).view(1, 3, 1, 1)
    x = (pixels / problem.pixel_range).flip(1) * 255.0 - mean_bgr  # RGB -> BGR first, then the means
    activations = {}
    last = max(LAYER_ORDER.index(name) for name in wanted)
    for name in LAYER_ORDER[: last + 1]:
        if name.startswith("conv"):
            x = functional.conv2d(x, problem.kernels[name], problem.biases[name], padding=1)
        elif name.startswith("relu"):
            x = functional.relu(x)
        elif problem.pooling == "max":
            x = functional.max_pool2d(x, 2, 2)
        else:
            x = functional.avg_pool2d(x, 2, 2)
        if name in wanted:
            activations[name] = x
    return activations


def _gram(activation):
    """Raw Gram matrix FᵀF of a (1, C, h, w) activation, F being (h·w, C)."""
    channels = activation.shape[1]
    matrix = activation.reshape(channels, -1)
    return matrix @ matrix.T


def loss(torch, problem, pixels):
    """α·Σ_l c_l·½·Σ(F−P)² + β·Σ_l w_l·Σ((G−A)/(2·N·M))², a torch scalar."""
    activations = _features(torch, problem, pixels, set(problem.content_layers + problem.style_layers))
    content = sum(weight * 0.5 * torch.sum((activations[layer] - problem.content_targets[layer]) ** 2)
                  for layer, weight in zip(problem.content_layers, problem.content_layer_weights))
    style = 0.0
    for layer, weight in zip(problem.style_layers, problem.style_layer_weights):
        _, channels, height, width = activations[layer].shape
        # Divided before squaring, like E_l = Σ(G−A)²/(4N²M²) but without float32 overflow.
        difference = _gram(activations[layer]) - problem.style_targets[layer]
        style = style + weight * torch.sum((difference / (2.0 * channels * height * width)) ** 2)
    return problem.content_weight * content + problem.style_weight * style


def build_problem(jax_problem, *, channels_last=False, device="cpu"):
    """The torch twin of a bench.jax_step.Problem: same weights, images, losses and start image.

    The targets come from torch's own forward pass over the same content and style pixels.
    """
    import torch

    settings, objective = jax_problem.settings, jax_problem.objective
    for field, expected in GATYS_CONVENTIONS.items():
        if settings.value(field) != expected:
            raise ValueError(f"the PyTorch reference implements the Gatys losses only: settings."
                             f"{field} is {settings.value(field)!r}, not {expected!r}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    kernels = {name: torch.from_numpy(np.transpose(np.asarray(layer["kernel"]), (3, 2, 0, 1)).copy())
               .contiguous(memory_format=memory_format).to(device)
               for name, layer in jax_problem.params.items()}
    biases = {name: torch.from_numpy(np.array(layer["bias"])).to(device)
              for name, layer in jax_problem.params.items()}
    problem = TorchProblem(
        kernels=kernels, biases=biases, content_layers=objective.content_layers,
        content_layer_weights=objective.content_layer_weights, style_layers=objective.style_layers,
        style_layer_weights=objective.style_layer_weights, pooling=objective.pooling,
        content_weight=settings.loss.content_weight, style_weight=settings.loss.style_weight,
        pixel_range=settings.loss.pixel_range,
        pixels=_nchw(torch, np.asarray(jax_problem.pixels), channels_last, device).requires_grad_(True),
        channels_last=channels_last)
    content = _nchw(torch, jax_problem.content_pixels, channels_last, device)
    style = _nchw(torch, jax_problem.style_pixels, channels_last, device)
    with torch.no_grad():
        problem.content_targets = _features(torch, problem, content, set(problem.content_layers))
        style_activations = _features(torch, problem, style, set(problem.style_layers))
        problem.style_targets = {layer: _gram(style_activations[layer]) for layer in problem.style_layers}
    return problem


def loss_and_gradient(problem):
    """(loss, ∂loss/∂pixels as an (H, W, 3) numpy array) at the problem's current image."""
    import torch

    problem.pixels.grad = None
    value = loss(torch, problem, problem.pixels)
    value.backward()
    return value.item(), problem.pixels.grad[0].permute(1, 2, 0).cpu().numpy()


def time_step(problem, settings, *, warmup_steps, timed_steps, threads):
    """Per-step time of forward + input gradient + Adam update + clamp, one step per sample."""
    import torch

    torch.set_num_threads(threads)
    adam = torch.optim.Adam([problem.pixels], lr=settings.optimizer.learning_rate,
                            betas=(settings.optimizer.adam_b1, settings.optimizer.adam_b2),
                            eps=settings.optimizer.adam_eps)

    def step():
        adam.zero_grad(set_to_none=True)
        value = loss(torch, problem, problem.pixels)
        value.backward()
        adam.step()
        with torch.no_grad():
            problem.pixels.clamp_(0.0, problem.pixel_range)
        return value.item()  # a host read: waits for the device, so the step is really done

    machine.reset_host_peak()
    if problem.pixels.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    _, first_call_s = stopwatch(step)
    for _ in range(max(0, warmup_steps - 1)):
        step()
    seconds = []
    for _ in range(timed_steps):
        value, elapsed = stopwatch(step)
        seconds.append(elapsed)
    device_peak = ({"peak_bytes_in_use": int(torch.cuda.max_memory_allocated())}
                   if problem.pixels.is_cuda else None)
    return {"compile": {"first_call_s": first_call_s}, "chunk_steps": 1,
            "step_s": summarize(seconds), "loss": value, "threads": threads,
            "channels_last": problem.channels_last,
            "memory": {"host_peak_rss_bytes": machine.host_peak_rss(), "device": device_peak}}
