"""scikit-image's TV-L1 optical flow for many image pairs at once (``motion=tvl1_skimage``).

``skimage.registration.optical_flow_tvl1`` solves one pair per call. On the 128 x 128 maps of this
pipeline, with its few iterations (``conf/motion/tvl1_skimage.yaml``: 2 warps of 5 iterations on a
3-level pyramid), each call is hundreds of NumPy operations on arrays of a few thousand pixels, so
most of its time is Python and NumPy call overhead, paid again for each of the clip's N flows.

:func:`tvl1_flows` runs the same algorithm on a stack of K pairs: every element-wise step is the
same expression, evaluated on a ``(K, H, W)`` array instead of K ``(H, W)`` arrays, so each pixel
sees exactly the same floating-point operations in the same order, and the flows are those of K
separate calls, bit for bit (``tests/preprocess/motion/test_tvl1_batched.py``). What is kept per pair, because it
is defined per image: the pyramid (scikit-image's ``pyramid_reduce``), the warp (``skimage.transform.warp``,
which clips its output to each image's range), the flow resize between levels and the stopping test
after each warp (a pair that has converged leaves the stack, as its own call would return).

The solver (Zach, Pock and Bischof's duality-based TV-L1 as scikit-image implements it, data term by
thresholding, then ``reg_num_iter = 2`` Chambolle projection steps per flow component) keeps one
quirk of that implementation: in the first iteration after each warp the data-term update is also
applied in place to the flow the stopping test compares with.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import pyramid_reduce, warp

DOWNSCALE = 2.0
MAX_LEVELS = 10
MIN_SIZE = 16


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Coarse-to-fine pyramid of one (H, W) image, as scikit-image's coarse-to-fine driver builds it."""
    levels = [image]
    while len(levels) < MAX_LEVELS and min(levels[-1].shape) > DOWNSCALE * MIN_SIZE:
        levels.append(pyramid_reduce(levels[-1], DOWNSCALE, channel_axis=None))
    return levels[::-1]


def _resize_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(2, h, w) flow -> (2, *shape), nearest-neighbour resized and its values rescaled to the new grid."""
    scale = [n / o for n, o in zip(shape, flow.shape[1:])]
    factor = np.array(scale, dtype=flow.dtype)[:, None, None]
    return factor * ndi.zoom(flow, [1, *scale], order=0, mode="nearest", prefilter=False)


def _linearise(reference: np.ndarray, moving: np.ndarray, active: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp each active pair's moving image by its flow and linearise the data term around that flow.

    Args:
        reference: (A, H, W) reference images of the active pairs.
        moving: (K, H, W) moving images of every pair.
        active: the active pairs, as indices into ``moving``.
        rows, cols: (H, 1) and (1, W) pixel coordinates.
        flow: (2, A, H, W) current flows of the active pairs.

    Returns:
        ``grad`` (2, A, H, W) of the warped images, ``NI`` their squared norm (1 where it is 0) and ``rho_0`` the
        residual at zero flow.
    """
    warped = np.stack([
        warp(moving[pair], np.stack([rows + flow[0, k], cols + flow[1, k]]), mode="edge")
        for k, pair in enumerate(active)
    ])
    grad = np.array(np.gradient(warped, axis=(1, 2)))
    NI = (grad * grad).sum(0)
    NI[NI == 0] = 1
    rho_0 = warped - reference - (grad * flow).sum(0)
    return grad, NI, rho_0


def _data_step(flow: np.ndarray, grad: np.ndarray, NI: np.ndarray, rho_0: np.ndarray, f0: float) -> np.ndarray:
    """The data term's step on (2, A, H, W) ``flow``, in place (whatever else refers to it sees it too; the stopping
    test's reference flow does in the first iteration after a warp): rho / |grad|^2 where |rho| is small, else
    f0 sign(rho). Returns ``flow``."""
    rho = rho_0 + (grad * flow).sum(0)
    small = abs(rho) <= f0 * NI
    flow -= np.where(small, rho * grad / NI, (f0 * np.sign(rho)) * grad)
    return flow


def _regularise(flow_auxiliary: np.ndarray, g: np.ndarray, proj: np.ndarray, dt: float, f1: float) -> np.ndarray:
    """Chambolle's projection, ``reg_num_iter = 2`` steps per flow component.

    Args:
        flow_auxiliary: (2, A, H, W) flows after the data step.
        g: (2, A, H, W) gradient buffer, overwritten.
        proj: (2, 2, A, H, W) dual variables, updated in place.
        dt: the time step.
        f1: ``dt / tightness``.

    Returns:
        The regularised (2, A, H, W) flows (a new array).
    """
    reg_num_iter = 2
    flow_current = flow_auxiliary.copy()
    for component in range(2):
        for _ in range(reg_num_iter):
            g[0, :, :-1, :] = np.diff(flow_current[component], axis=1)
            g[1, :, :, :-1] = np.diff(flow_current[component], axis=2)
            norm = np.sqrt((g ** 2).sum(0))[np.newaxis, ...]
            norm *= f1
            norm += 1.0
            proj[component] -= dt * g
            proj[component] /= norm
            d = -proj[component].sum(0)  # minus the divergence of proj[component]
            d[:, 1:, :] += proj[component, 0, :, :-1, :]
            d[:, :, 1:] += proj[component, 1, :, :, :-1]
            flow_current[component] = flow_auxiliary[component] + d
    return flow_current


def _solve_level(reference: np.ndarray, moving: np.ndarray, flow0: np.ndarray, *, attachment: float,
                 tightness: float, num_warp: int, num_iter: int, tol: float, prefilter: bool) -> np.ndarray:
    """One pyramid level for a stack of pairs.

    Args:
        reference, moving: (K, H, W) float images.
        flow0: (K, 2, H, W) initial flows (row, column displacements).

    Returns:
        (K, 2, H, W) flows.
    """
    count, height, width = reference.shape
    dtype = reference.dtype
    rows = np.arange(height, dtype=dtype)[:, None]
    cols = np.arange(width, dtype=dtype)[None, :]
    dt = 0.5 / 2
    f0 = attachment * tightness
    f1 = dt / tightness
    tol = tol * (height * width)

    # Component-major layout (2, K, H, W): flow[c] is the c-th component of every pair.
    flow_current = flow_previous = np.ascontiguousarray(flow0.transpose(1, 0, 2, 3))
    g = np.zeros((2, count, height, width), dtype=dtype)
    proj = np.zeros((2, 2, count, height, width), dtype=dtype)
    active = np.arange(count)  # pairs still iterating, as indices into the inputs
    done = np.empty((count, 2, height, width), dtype=flow0.dtype)

    for _ in range(num_warp):
        if prefilter:
            flow_current = ndi.median_filter(flow_current, [1, 1, 3, 3])
        grad, NI, rho_0 = _linearise(reference[active], moving, active, rows, cols, flow_current)
        for _ in range(num_iter):
            flow_current = _regularise(_data_step(flow_current, grad, NI, rho_0, f0), g, proj, dt, f1)

        flow_previous -= flow_current  # the change over this warp, the stopping criterion
        converged = np.array([(flow_previous[:, k] * flow_previous[:, k]).sum() < tol for k in range(len(active))])
        if converged.any():
            done[active[converged]] = flow_current[:, converged].transpose(1, 0, 2, 3)
            keep = ~converged
            active = active[keep]
            if active.size == 0:
                return done
            flow_current = np.ascontiguousarray(flow_current[:, keep])
            g = np.ascontiguousarray(g[:, keep])
            proj = np.ascontiguousarray(proj[:, :, keep])
        flow_previous = flow_current
    done[active] = flow_current.transpose(1, 0, 2, 3)
    return done


def tvl1_flows(references: np.ndarray, movings: np.ndarray, *, attachment: float = 15.0, tightness: float = 0.3,
               num_warp: int = 5, num_iter: int = 10, tol: float = 1e-4, prefilter: bool = False) -> np.ndarray:
    """``optical_flow_tvl1(references[k], movings[k], dtype=float32, ...)`` for every k, computed together.

    Args:
        references, movings: (K, H, W) float gray images (float32 kept; float64 converted, as scikit-image does).
        attachment, tightness, num_warp, num_iter, tol, prefilter: ``optical_flow_tvl1``'s settings.

    Returns:
        (K, 2, H, W) float32 flows, (row, column) displacements, as ``optical_flow_tvl1`` returns them.
    """
    references = np.asarray(references)
    movings = np.asarray(movings)
    if references.shape != movings.shape or references.ndim != 3:
        raise ValueError(f"references and movings must both be (K, H, W), got {references.shape}, {movings.shape}")
    if not (np.issubdtype(references.dtype, np.floating) and np.issubdtype(movings.dtype, np.floating)):
        raise ValueError("tvl1_flows takes float images")
    references = references.astype(np.float32, copy=False)
    movings = movings.astype(np.float32, copy=False)
    count = len(references)
    if count == 0:
        return np.empty((0, 2, *references.shape[1:]), np.float32)
    # One pyramid per image; a reference shared by every pair (one onset for all frames) is reduced once.
    shared = all(np.array_equal(references[0], r) for r in references[1:])
    reference_levels = [_pyramid(references[0])] * count if shared else [_pyramid(r) for r in references]
    moving_levels = [_pyramid(m) for m in movings]
    settings = dict(attachment=attachment, tightness=tightness, num_warp=num_warp, num_iter=num_iter, tol=tol,
                    prefilter=prefilter)
    flows = None
    for level in range(len(moving_levels[0])):
        reference = np.stack([levels[level] for levels in reference_levels])
        moving = np.stack([levels[level] for levels in moving_levels])
        if flows is None:
            flows = np.zeros((count, 2, *reference.shape[1:]), dtype=np.float32)
        else:
            flows = np.stack([_resize_flow(flow, reference.shape[1:]) for flow in flows])
        flows = _solve_level(reference, moving, flows, **settings)
    return flows
