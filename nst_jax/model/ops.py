"""The network's custom-gradient operations: each computes what JAX's own would, with a backward
pass that XLA's CPU compiler runs faster or in less memory (BENCHMARKS.md has the measurements)."""

import dataclasses
import functools
from typing import Any, Callable, Dict, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def _conv3x3_same(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC_HWIO)


def adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """The HWIO kernel whose "same" correlation is the adjoint of correlating with `kernel`:
    rotated 180° with its input and output channels swapped (for a symmetric (1, 1) pad)."""
    return jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)


_TAPS = tuple((dy, dx) for dy in range(3) for dx in range(3))  # HWIO's (kh, kw) order
# Up to this many input channels (conv1_1 has 3) the input gradient is a matrix product and a
# scatter of its columns: XLA CPU's convolution with 3 output channels was 4-5x slower.
FEW_CHANNELS = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv3x3_same(x: jax.Array, kernel: jax.Array, adjoint: jax.Array,
                 few_channels: int = FEW_CHANNELS) -> jax.Array:
    """3×3, stride 1, "same" convolution (NHWC × HWIO) whose input gradient is NHWC × HWIO too.

    JAX's own input gradient swaps the kernel's feature dimensions through dimension numbers,
    which XLA's CPU compiler runs as naive loops inside a loop body; this one is a plain
    convolution with `adjoint` (`adjoint_kernel(kernel)`, made once per run by
    `with_adjoint_kernels`), or up to `few_channels` input channels a matrix product
    (`_few_channel_input_gradient`; 0: always the convolution). Same products, summed alike;
    `adjoint` gets no gradient; not forward-mode differentiable (custom_vjp).
    """
    return _conv3x3_same(x, kernel)


def _conv3x3_same_forward(x, kernel, adjoint, few_channels):
    return _conv3x3_same(x, kernel), (x, kernel, adjoint)


def _few_channel_input_gradient(cotangent, kernel):
    """Input gradient of a 3×3 "same" correlation with few input channels, without a convolution.

    Each output pixel's cotangent is spread back over its 3×3 neighbourhood: one product with
    the kernel as a (9·C_in, C_out) matrix gives every tap's share, then each share is added at
    its offset (the adjoint of extracting 3×3 patches).
    """
    height, width, channels = cotangent.shape[1], cotangent.shape[2], kernel.shape[2]
    shares = jnp.einsum("nhwo,ko->nhwk", cotangent, kernel.reshape(-1, kernel.shape[3]))
    padded = sum(jnp.pad(shares[..., tap * channels:(tap + 1) * channels],
                         ((0, 0), (dy, 2 - dy), (dx, 2 - dx), (0, 0)))
                 for tap, (dy, dx) in enumerate(_TAPS))
    return cast(jax.Array, padded)[:, 1:height + 1, 1:width + 1, :]  # a sum of nine taps, never sum's 0


def _conv3x3_same_backward(few_channels, residuals, cotangent):
    x, kernel, adjoint = residuals
    if kernel.shape[2] <= few_channels:
        x_gradient = _few_channel_input_gradient(cotangent, kernel)
    else:
        x_gradient = _conv3x3_same(cotangent, adjoint)
    # The kernel's cotangent, for completeness: XLA drops it when nobody asks (only the image
    # is differentiated in style transfer).
    _, kernel_vjp = jax.vjp(lambda k: _conv3x3_same(x, k), kernel)
    return x_gradient, kernel_vjp(cotangent)[0], None


conv3x3_same.defvjp(_conv3x3_same_forward, _conv3x3_same_backward)


@dataclasses.dataclass(frozen=True)
class ConvImpl:
    """How the network computes its 3×3 convolutions: the defaults are what nst_jax ships.

    The benchmarks pass other choices (bench/investigate.py: JAX's own differentiation of
    lax.conv_general_dilated, kernels rotated behind an optimization barrier, conv1_1's input
    gradient as a convolution) to measure what each is worth. Hashable, so it can be part of a
    static argument (`Objective.conv`).
    """

    # (x, HWIO kernel, adjoint kernel) -> y.
    convolve: Callable = conv3x3_same
    # HWIO kernel -> its adjoint, for layers whose params carry none (`with_adjoint_kernels`).
    rotate: Callable = adjoint_kernel


SHIPPED = ConvImpl()

ADJOINT = "adjoint_kernel"  # the params entry with_adjoint_kernels adds beside kernel and bias


def with_adjoint_kernels(params: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """`params` with each convolution's adjoint kernel added (params[layer]["adjoint_kernel"]).

    Do it once per run, outside the optimization loop: `features` then uses them instead of
    rotating every kernel again in each step. Made with numpy on the host, so preparing compiles
    nothing. The result is a new dict (numpy arrays); `params` is unchanged.
    """
    def adjoint(kernel):
        return np.ascontiguousarray(np.swapaxes(np.flip(np.asarray(kernel), (0, 1)), 2, 3))

    return {name: {**layer, ADJOINT: adjoint(layer["kernel"])} if "kernel" in layer else layer
            for name, layer in params.items()}


def _pool_windows(x):
    """(N, H, W, C) -> (N, H/2, 2, W/2, 2, C): each 2×2 window's four values ("VALID": an odd
    last row or column is dropped)."""
    n, height, width, channels = x.shape
    return x[:, : height // 2 * 2, : width // 2 * 2].reshape(n, height // 2, 2, width // 2, 2, channels)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2, stride-2 max pooling of NHWC ("VALID"), as nn.max_pool, with a cheaper gradient.

    XLA's CPU backend runs nn.max_pool's gradient (a select-and-scatter) slowly: 90 ms for
    256²×64 where this one's compares and multiplies take 13 (BENCHMARKS.md), 9–10 % of a step.
    The gradient goes to the first maximum of each window in row-major order, as
    select-and-scatter and torch's max_pool2d give it: the same numbers, also where a flat
    region of the image makes neighbouring activations tie. Not forward-mode differentiable.
    """
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_forward(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, cotangent):
    x, pooled = residuals
    is_max = _pool_windows(x) == pooled[:, :, None, :, None, :]
    taken = jnp.zeros(pooled.shape, bool)
    firsts = {}
    for dy in range(2):  # row-major: the first maximum claims the window
        for dx in range(2):
            firsts[dy, dx] = is_max[:, :, dy, :, dx, :] & ~taken
            taken = taken | firsts[dy, dx]
    mask = jnp.stack([jnp.stack([firsts[dy, dx] for dx in range(2)], axis=3) for dy in range(2)], axis=2)
    gradient = (mask * cotangent[:, :, None, :, None, :]).astype(x.dtype)
    n, height, width, channels = x.shape
    gradient = gradient.reshape(n, height // 2 * 2, width // 2 * 2, channels)
    return (jnp.pad(gradient, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


@jax.custom_vjp
def relu_keeping_bits(x: jax.Array) -> jax.Array:
    """max(x, 0) whose backward pass keeps one bit per activation, not the float32 activation.

    Only the image is differentiated, so a convolution's backward pass needs its kernel, never
    its input: what the plain network keeps per layer is the ReLU's input, for the mask x > 0.
    XLA fuses that comparison into the backward pass, so even a boolean residual becomes the
    float one again; packed bits (a reduction over channels, which XLA does not move) stay
    bits: 1/32 of the memory. Same gradient as jax.nn.relu (0 where x <= 0 or x is NaN).
    """
    return jnp.maximum(x, 0)


def _relu_bits_forward(x):
    return jnp.maximum(x, 0), jnp.packbits(x > 0, axis=-1)


def _relu_bits_backward(bits, cotangent):
    positive = jnp.unpackbits(bits, axis=-1, count=cotangent.shape[-1]).astype(bool)
    return (jnp.where(positive, cotangent, 0).astype(cotangent.dtype),)


relu_keeping_bits.defvjp(_relu_bits_forward, _relu_bits_backward)

def recomputed_in_backward(fn: Callable[[Any, jax.Array], Any]) -> Callable[[Any, jax.Array], Any]:
    """`fn(params, x)` whose backward pass recomputes fn's activations from x instead of keeping them.

    What jax.checkpoint does, written by hand because XLA's CPU compiler undoes jax.checkpoint:
    it drops the optimization barriers and common-subexpression elimination then merges the
    recomputation with the forward pass, which keeps every activation after all. Here the
    recomputation starts from x + 0·c, c one element of the incoming cotangent, which no pass can
    merge with the forward (it depends on the backward's data) and which equals x exactly for a
    finite c (a non-finite cotangent makes the gradient non-finite either way): the gradient is
    bit-identical to the plain one. Only x's cotangent is used; XLA drops the params' unused one.
    """
    @jax.custom_vjp
    def run(params, x):
        return fn(params, x)

    def forward(params, x):
        return fn(params, x), (params, x)

    def backward(saved, cotangent):
        params, x = saved
        anchor = jax.tree_util.tree_leaves(cotangent)[0].ravel()[0] * 0
        return jax.vjp(fn, params, x + anchor.astype(x.dtype))[1](cotangent)

    run.defvjp(forward, backward)
    return run
