"""Optical flow between video frames, warping along it, and where the warp can be trusted.

Ruder, Dosovitskiy & Brox (2016), "Artistic style transfer for videos": frame t starts from the
previous stylized frame warped along the flow, and a temporal loss pulls it towards that warp
wherever the flow is reliable. The flow is DIS (OpenCV's dense inverse search, fast on a CPU);
reliability is the paper's forward–backward consistency and motion-boundary test.

Conventions: a flow is (H, W, 2) float32 of (dx, dy) in pixels. `frame_flow(a, b)` is such that
a(p) ≈ b(p + flow(p)); so the flow from frame t back to frame t−1 tells, for each pixel of
frame t, where it was in frame t−1, and `warp(previous, that flow)` is frame t−1 moved onto t.
"""

import dataclasses
import types
from typing import List, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from nst_jax.errors import UserInputError

# The paper's thresholds (section 3.2), for flows in pixels.
CONSISTENCY_RELATIVE, CONSISTENCY_ABSOLUTE = 0.01, 0.5
BOUNDARY_RELATIVE, BOUNDARY_ABSOLUTE = 0.01, 0.002


def require_cv2() -> types.ModuleType:
    """OpenCV, or one line telling how to get it (it is an optional dependency)."""
    try:
        import cv2
    except ImportError:
        raise UserInputError("videos need OpenCV and PyAV: pip install 'nst-jax[video]'") from None
    return cv2


@dataclasses.dataclass(frozen=True)
class Motion:
    """How frame t relates to frame t−1, all in frame t's pixels.

    backward: (H, W, 2) flow from frame t to frame t−1 (where each pixel came from).
    mask: (H, W) float32 c of the temporal loss: 1 where the warped previous frame can be
      trusted, 0 at disocclusions (including what entered through the border) and motion
      boundaries.
    inside: (H, W) bool, the backward flow points inside frame t−1 (elsewhere the warp has
      nothing to bring and the start image is filled in from elsewhere).
    """

    backward: np.ndarray
    mask: np.ndarray
    inside: np.ndarray


def gray_uint8(rgb: npt.ArrayLike) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (H, W) uint8 luma, what DIS reads."""
    rgb = np.asarray(rgb, np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(luma * 255.0 + 0.5, 0, 255).astype(np.uint8)


def frame_flow(first: npt.ArrayLike, second: npt.ArrayLike) -> np.ndarray:
    """Dense flow with first(p) ≈ second(p + flow(p)); frames are RGB in [0, 1], same size."""
    cv2 = require_cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(gray_uint8(first), gray_uint8(second), None)
    return np.asarray(flow, np.float32)


def sample_positions(flow: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(x, y) sample positions p + flow(p), each (H, W) float32."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: npt.ArrayLike, flow: np.ndarray) -> np.ndarray:
    """image(p + flow(p)) for every pixel p: bilinear, edge pixels repeated outside the image.

    image: (H, W) or (H, W, C) float; flow: (H, W, 2) in the output's pixels.
    """
    cv2 = require_cv2()
    image = np.asarray(image, np.float32)
    map_x, map_y = sample_positions(flow)
    warped = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(image.shape)  # remap drops a trailing channel axis of size 1


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """Where p + flow(p) falls inside the image (bilinear sampling needs no made-up pixels)."""
    height, width = flow.shape[:2]
    xs, ys = sample_positions(flow)
    return (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """The temporal loss's c for frame t: 1 where the flow t → t−1 is trustworthy, else 0.

    forward: flow t−1 → t; backward: flow t → t−1 (both from `frame_flow`). Ruder et al.:
    disoccluded where the forward flow, fetched along the backward flow (w̃), does not undo it,
    |w̃ + ŵ|² > 0.01(|w̃|² + |ŵ|²) + 0.5; a motion boundary where the backward flow changes
    fast, |∇û|² + |∇v̂|² > 0.01|ŵ|² + 0.002; and nothing to fetch where ŵ leaves the image.
    """
    fetched = warp(forward, backward)
    squared = lambda flow: np.sum(flow * flow, axis=-1)
    disoccluded = squared(fetched + backward) > (
        CONSISTENCY_RELATIVE * (squared(fetched) + squared(backward)) + CONSISTENCY_ABSOLUTE)
    gradient = sum(np.square(g) for channel in (0, 1) for g in np.gradient(backward[..., channel]))
    boundary = gradient > BOUNDARY_RELATIVE * squared(backward) + BOUNDARY_ABSOLUTE
    trusted = ~disoccluded & ~boundary & inside_mask(backward)
    return trusted.astype(np.float32)


def motion(previous_frame: npt.ArrayLike, frame: npt.ArrayLike) -> Motion:
    """The Motion from previous_frame to frame (RGB in [0, 1]): two flows, computed once."""
    forward = frame_flow(previous_frame, frame)
    backward = frame_flow(frame, previous_frame)
    return Motion(backward=backward, mask=consistency_mask(forward, backward),
                  inside=inside_mask(backward))


def warped_start(previous: np.ndarray, motion_: Motion, fill: np.ndarray) -> np.ndarray:
    """The previous result moved onto this frame, `fill` where the flow leaves the image.

    previous, fill: (H, W, C) pixels (fill: the frame's own start image, e.g. its content).
    """
    warped = warp(previous, motion_.backward)
    return np.where(motion_.inside[..., None], warped, fill).astype(np.float32)


def long_term_masks(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Ruder et al.'s long-term weights from the masks c^(t−j,t), j = 1, 2, … (nearest first):
    c_long^j = max(c^j − Σ_{k<j} c^k, 0), so each pixel is pulled towards the nearest earlier
    frame that saw it, and frames further back only fill in what nearer ones could not."""
    weights, covered = [], np.zeros_like(masks[0])
    for mask in masks:
        weights.append(np.maximum(mask - covered, 0.0).astype(np.float32))
        covered = covered + mask
    return weights
