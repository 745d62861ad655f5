"""Dense optical flow (TV-L1 of OpenCV or of scikit-image, Farneback, DIS) and backward warping.

Convention used everywhere in ``mer.preprocess``: ``flow = estimate_flow(a, b)`` is an array ``(H, W, 2)``
holding ``(dx, dy)`` per pixel such that ``a[y, x] ≈ b[y + dy, x + dx]`` (OpenCV's convention), so
``warp(b, flow) ≈ a``. If the scene moves by ``+d`` from ``a`` to ``b``, the flow is ``≈ +d``.

Estimator objects are built once per process and per parameter set (OpenCV objects are cheap to reuse and
costly to create); this makes the module unsafe to share between threads, which the driver does not do.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from omegaconf import OmegaConf

from mer.preprocess.motion.tvl1_batched import tvl1_flows
from mer.settings import config_dir

FLOW_METHODS = ("tvl1", "tvl1_skimage", "farneback", "dis")


@lru_cache(maxsize=None)
def default_params(method: str) -> dict[str, Any]:
    """The parameters of a flow method when a run sets none: ``params`` of ``conf/motion/<method>.yaml``.

    The config file is the one place they are written (with why each was chosen); code that estimates flow without
    a ``motion`` config (flow-warp interpolation, stabilisation, apex spotting) reads them from there too.

    Raises:
        ValueError: An unknown method.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown optical-flow method {method!r}; choose one of {FLOW_METHODS}")
    params = OmegaConf.load(config_dir() / "motion" / f"{method}.yaml").get("params") or {}
    return dict(OmegaConf.to_container(params, resolve=True))


_TVL1_SETTERS = {
    "tau": "setTau",
    "lambda": "setLambda",
    "theta": "setTheta",
    "nscales": "setScalesNumber",
    "warps": "setWarpingsNumber",
    "epsilon": "setEpsilon",
    "inner_iterations": "setInnerIterations",
    "outer_iterations": "setOuterIterations",
    "scale_step": "setScaleStep",
    "gamma": "setGamma",
    "median_filtering": "setMedianFiltering",
}
_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_DIS_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "use_spatial_propagation": "setUseSpatialPropagation",
}
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, RGB order


def resolve_params(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full parameter set of ``method``: its defaults updated with ``params``.

    Raises:
        ValueError: An unknown method or parameter name.
    """
    defaults = default_params(method)
    allowed = set(defaults) | {"pad"}
    allowed |= {"tvl1": set(_TVL1_SETTERS), "dis": set(_DIS_SETTERS)}.get(method, set())
    unknown = set(params or {}) - allowed
    if unknown:
        raise ValueError(f"unknown {method} flow parameter(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return {"pad": 0, **defaults, **dict(params or {})}


@lru_cache(maxsize=8)
def _tvl1(params: tuple[tuple[str, Any], ...]) -> cv2.optflow.DualTVL1OpticalFlow:
    estimator = cv2.optflow.DualTVL1OpticalFlow_create()
    for name, value in params:
        getattr(estimator, _TVL1_SETTERS[name])(value)
    return estimator


@lru_cache(maxsize=8)
def _dis(params: tuple[tuple[str, Any], ...]) -> cv2.DISOpticalFlow:
    options = dict(params)
    estimator = cv2.DISOpticalFlow_create(_DIS_PRESETS[options.pop("preset")])
    for name, value in options.items():
        getattr(estimator, _DIS_SETTERS[name])(value)
    return estimator


def to_gray(images: np.ndarray) -> np.ndarray:
    """Grayscale float32 in [0, 1].

    Args:
        images: ``(..., H, W, 3)`` RGB or ``(..., H, W)`` gray, uint8 (0-255) or float (0-1).

    Returns:
        ``(..., H, W)`` float32. A 2-D input is taken as gray already.
    """
    images = np.asarray(images)
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    if images.ndim >= 3 and images.shape[-1] == 3:
        return (images.astype(np.float32) @ _GRAY_WEIGHTS) * np.float32(scale)
    return images.astype(np.float32) * np.float32(scale)


def estimate_flow(
    a: np.ndarray, b: np.ndarray, method: str = "tvl1", params: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Dense optical flow from ``a`` to ``b`` (see the module docstring for the convention).

    Args:
        a: ``(H, W)`` gray or ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        b: Same shape as ``a``.
        method: ``"tvl1"`` (opencv-contrib), ``"tvl1_skimage"`` (scikit-image; unbiased at sub-pixel
            motion, where OpenCV's TV-L1 reads 0.1-0.3 px 15-30 % short), ``"farneback"`` or ``"dis"``.
        params: Overrides of :func:`default_params` of ``method``.

    Returns:
        ``(H, W, 2)`` float32 ``(dx, dy)`` in pixels.
    """
    return estimate_flows(a, b[None], method, params)[0]


def estimate_flows(
    sources: np.ndarray, targets: np.ndarray, method: str = "tvl1", params: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Flows from each source to its target; one source may serve every target.

    The estimators take one pair per call, so this loops over pairs; the gray conversion and the padding are
    batched and the estimator object is reused.

    Args:
        sources: ``(H, W[, 3])`` one source for all targets, or ``(K, H, W[, 3])`` one per target.
        targets: ``(K, H, W[, 3])``; uint8 or float in [0, 1], like ``sources``.
        method: See :func:`estimate_flow`.
        params: See :func:`estimate_flow`.

    Returns:
        ``(K, H, W, 2)`` float32.
    """
    options = resolve_params(method, params)
    pad = int(options.pop("pad"))
    target_gray = to_gray(targets)
    source_gray = to_gray(sources)
    if source_gray.ndim == target_gray.ndim - 1:
        source_gray = np.broadcast_to(source_gray, target_gray.shape)
    if source_gray.shape != target_gray.shape:
        raise ValueError(f"flow sources {np.shape(sources)} do not match targets {np.shape(targets)}")
    if pad:
        # Mirror the images outward so that an estimator's border artefacts fall outside the kept flow.
        width = ((0, 0), (pad, pad), (pad, pad))
        source_gray = np.pad(source_gray, width, mode="reflect")
        target_gray = np.pad(target_gray, width, mode="reflect")
    flows = _pairwise_flows(source_gray, target_gray, method, options)
    return flows[:, pad:-pad, pad:-pad].copy() if pad else flows


def _pairwise_flows(sources: np.ndarray, targets: np.ndarray, method: str, options: dict[str, Any]) -> np.ndarray:
    """``(K, H, W, 2)`` flows between ``(K, H, W)`` gray float images in [0, 1]; OpenCV takes one pair a call."""
    if method == "tvl1":
        # DualTVL1 takes float images in [0, 1] (it rescales them to 0-255 itself) and keeps their precision.
        estimator = _tvl1(tuple(sorted(options.items())))
        return np.stack([estimator.calc(s, t, None) for s, t in zip(sources, targets)])
    if method == "tvl1_skimage":
        # scikit-image's algorithm on every pair at once, bit for bit the flows of one call per pair
        # (mer/preprocess/motion/tvl1_batched.py). It returns (row, col) = (dy, dx) displacements with the same
        # meaning as OpenCV's flow.
        flows = tvl1_flows(sources, targets, **options)
        return flows[:, ::-1].transpose(0, 2, 3, 1).copy()
    if method == "dis":
        # DIS accepts 8-bit images only.
        estimator = _dis(tuple(sorted(options.items())))
        sources_u8, targets_u8 = (np.clip(np.rint(g * 255), 0, 255).astype(np.uint8) for g in (sources, targets))
        return np.stack([estimator.calc(s, t, None) for s, t in zip(sources_u8, targets_u8)])
    # Farneback is stateless and takes float images, but its internal thresholds assume a 0-255 range.
    return np.stack(
        [
            cv2.calcOpticalFlowFarneback(
                s * np.float32(255), t * np.float32(255), None, options["pyr_scale"], options["levels"],
                options["winsize"], options["iterations"], options["poly_n"], options["poly_sigma"], 0,
            )
            for s, t in zip(sources, targets)
        ]
    )


def _sampling_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def warp(image: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Backward-warp one image by one or many flows: ``out[..., y, x] = image[y + dy, x + dx]``.

    Bilinear, borders replicated. Not OpenCV's bicubic: its kernel (Keys, a = -0.75) does not reproduce a
    linear ramp, so it misplaces content by up to ~0.05 px (a 0.2 px offset lands at 0.248 px), while
    bilinear sampling is exact in position (it only blurs slightly). All flows are sampled in one
    ``cv2.remap`` call on a tall map (one image, many displacement fields), which OpenCV evaluates at full
    float precision.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, float32 (or uint8).
        flows: ``(..., H, W, 2)`` float ``(dx, dy)``.

    Returns:
        ``(..., H, W)`` or ``(..., H, W, C)``, the dtype of ``image``.
    """
    height, width = image.shape[:2]
    if flows.shape[-3:] != (height, width, 2):
        raise ValueError(f"flows {flows.shape} do not match image {image.shape}")
    xs, ys = _sampling_grid(height, width)
    batch_shape = flows.shape[:-3]
    flat = flows.reshape(-1, height, width, 2)
    # Keep each remap's destination well below OpenCV's 32767-row limit.
    per_call = max(1, 16384 // height)
    chunks = []
    for start in range(0, len(flat), per_call):
        chunk = flat[start : start + per_call]
        map_x = (xs + chunk[..., 0]).reshape(-1, width)
        map_y = (ys + chunk[..., 1]).reshape(-1, width)
        chunks.append(cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    warped = np.concatenate(chunks, axis=0)
    return warped.reshape(*batch_shape, *image.shape)
