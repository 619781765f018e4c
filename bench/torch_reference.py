"""The PyTorch way of the same job, as a whole program: what nst-jax's CLI is timed against.

    python -m bench.torch_reference CONTENT STYLE --weights vgg19.pth -o out.png \\
        --num-iterations 100 [--optimizer lbfgs|adam] [--report run.json]

Written the way jcjohnson/neural-style and neural-style-pt run (it shares no code with nst_jax and
never imports JAX, so its start-up is PyTorch's alone): a Caffe-converted VGG-19 state dict
(features.N.weight / .bias) loaded with torch.load into an nn.Sequential cut after the deepest
loss layer; images as given (the benchmark resizes them beforehand), RGB -> BGR, 0..255, minus
the Caffe means; neural-style's losses: content MSE at relu4_2 × content weight, style MSE of
Gram matrices ÷ (C·H·W) at relu1_1…relu5_1 × style weight, no TV; the image starts as the
content. L-BFGS: torch.optim.LBFGS(history_size=100, lr=1, tolerance_change=-1,
tolerance_grad=-1, max_iter=N), one optimizer.step call with one evaluation per iteration, as
neural-style-pt. Adam: torch.optim.Adam(lr) stepped N times. The image is clamped once at the end.

--report writes the same JSON shape as `python -m nst_jax.run --report` (phases, the loss at
each iteration with its time), so bench.e2e reads both alike.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# VGG-19's feature extractor: channels per conv, "M" for a 2×2 max pool (torchvision's "E").
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")
CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


# These two readers repeat nst_jax.engine.timings' on purpose: importing nst_jax would import JAX and
# put its start-up into PyTorch's timing.
def _process_age():
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _peak_rss_bytes():
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, ValueError, StopIteration):
        return None


def layer_names():
    """relu names at each nn.Sequential index (conv layers named by the ReLU after them)."""
    names, block, number = [], 1, 1
    for entry in VGG19:
        if entry == "M":
            names.append(f"pool{block}")
            block, number = block + 1, 1
        else:
            names += [f"conv{block}_{number}", f"relu{block}_{number}"]
            number += 1
    return names


def build_network(state_dict, last_layer):
    """nn.Sequential of VGG-19's features up to `last_layer`, weights from the state dict."""
    layers, channels = [], 3
    for entry in VGG19:
        if entry == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(channels, entry, 3, padding=1), torch.nn.ReLU(inplace=False)]
            channels = entry
    network = torch.nn.Sequential(*layers)
    features = {key[len("features."):]: value for key, value in state_dict.items()
                if key.startswith("features.")}
    network.load_state_dict(features)
    network = network[: layer_names().index(last_layer) + 1]
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval()


def load_pixels(path):
    """(1, 3, H, W) BGR, 0..255 minus the Caffe means: neural-style's preprocessing."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])).permute(2, 0, 1)[None]
    return (bgr - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)).contiguous()


def save_pixels(pixels, path):
    bgr = (pixels.detach()[0].float() + torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)).clamp(0, 255)
    rgb = bgr.flip(0).permute(1, 2, 0).numpy()
    temporary = Path(path).with_name(Path(path).name + ".partial.png")
    Image.fromarray(np.round(rgb).astype(np.uint8)).save(temporary)
    os.replace(temporary, path)


def activations(network, pixels, wanted):
    names, found, x = layer_names(), {}, pixels
    for index, module in enumerate(network):
        x = module(x)
        if names[index] in wanted:
            found[names[index]] = x
    return found


def gram(features):
    _, channels, height, width = features.shape
    flat = features.view(channels, height * width)
    return flat @ flat.t() / (channels * height * width)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.torch_reference", description=__doc__.split("\n")[0])
    parser.add_argument("content")
    parser.add_argument("style")
    parser.add_argument("--weights", required=True, help="Caffe-converted VGG-19 .pth state dict")
    parser.add_argument("-o", "--output", default="out.png")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    parser.add_argument("--num-iterations", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=10.0, help="Adam's (L-BFGS uses 1)")
    parser.add_argument("--content-weight", type=float, default=5.0)
    parser.add_argument("--style-weight", type=float, default=100.0)
    parser.add_argument("--lbfgs-memory", type=int, default=100)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (the cores)")
    parser.add_argument("--report", help="JSON with the phases and the loss at each iteration")
    args = parser.parse_args(argv)
    startup, started_at = _process_age(), time.time()
    main_start = time.perf_counter()
    phases, visits = {}, []

    def now():
        return time.perf_counter() - main_start

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def synchronize():  # CUDA runs asynchronously: a phase ends when its work has
        if device.type == "cuda":
            torch.cuda.synchronize()

    began = now()
    content, style = load_pixels(args.content).to(device), load_pixels(args.style).to(device)
    phases["images"] = now() - began
    began = now()
    network = build_network(torch.load(args.weights, map_location="cpu", weights_only=True),
                            max(CONTENT_LAYERS + STYLE_LAYERS, key=layer_names().index)).to(device)
    if args.channels_last:
        network = network.to(memory_format=torch.channels_last)
        content, style = (t.contiguous(memory_format=torch.channels_last) for t in (content, style))
    phases["weights"] = now() - began

    began = now()
    with torch.no_grad():
        content_targets = {name: a.detach() for name, a in
                           activations(network, content, set(CONTENT_LAYERS)).items()}
        style_targets = {name: gram(a).detach() for name, a in
                         activations(network, style, set(STYLE_LAYERS)).items()}
    image = content.clone().requires_grad_(True)
    wanted = set(CONTENT_LAYERS + STYLE_LAYERS)
    evaluations = [0]

    def closure():
        optimizer.zero_grad()
        found = activations(network, image, wanted)
        loss = sum(args.content_weight * torch.nn.functional.mse_loss(found[name], content_targets[name])
                   for name in CONTENT_LAYERS)
        loss = loss + sum(args.style_weight * torch.nn.functional.mse_loss(gram(found[name]), style_targets[name])
                          for name in STYLE_LAYERS)
        loss.backward()
        evaluations[0] += 1
        visits.append({"seconds": round(now(), 4), "step": evaluations[0], "losses": [loss.item()]})
        return loss

    if args.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS([image], lr=1, max_iter=args.num_iterations,
                                      history_size=args.lbfgs_memory, tolerance_change=-1,
                                      tolerance_grad=-1)
        optimizer.step(closure)
    else:
        optimizer = torch.optim.Adam([image], lr=args.learning_rate)
        for _ in range(args.num_iterations):
            optimizer.step(closure)
    synchronize()
    phases["run"] = now() - began
    began = now()
    save_pixels(image.cpu(), args.output)
    phases["write"] = now() - began
    print(f"done after {evaluations[0]} evaluations, loss {visits[-1]['losses'][0]:.6g}; wrote {args.output}",
          file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps({
            "started_at": started_at, "startup_seconds": startup, "main_seconds": round(now(), 4),
            "phases": {k: round(v, 4) for k, v in phases.items()}, "compile_seconds": 0.0,
            "compiled_programs": [], "peak_rss_bytes": _peak_rss_bytes(), "visits": visits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
