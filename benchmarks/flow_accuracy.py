"""Accuracy and speed of the optical-flow estimators on 128 x 128 face crops with known sub-pixel motion.

The motion is rendered the way a camera sees it: the face is warped at 4x the crop's resolution (bilinear,
which is exact in position) and area-downsampled. Motion made with OpenCV's bicubic interpolation would
flatter OpenCV's TV-L1, which warps with the same kernel: that kernel misplaces sub-pixel positions (a 0.2 px
offset lands at 0.248 px), so TV-L1 "recovers" such shifts exactly while reading true ones short. Two motions:
a uniform shift (mean flow over the crop's interior) and a Gaussian bump of local motion the size of a mouth
corner (mean end-point error inside the bump relative to the true motion, and the ratio of estimated to true
mean magnitude; 1.00 = unbiased), and the largest flow the estimator invents where nothing moves (true motion
below 0.001 px).

    PYTHONPATH=. python benchmarks/flow_accuracy.py
"""

from __future__ import annotations

import time

import cv2
import numpy as np
from skimage import data

from mer.preprocess.motion.flow import default_params, estimate_flow

SIZE, SUPERSAMPLE = 128, 4
PEAKS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.5)
TVL1_VARIANTS = {
    "mer default": {},
    "opencv defaults": dict(
        tau=0.25, theta=0.3, nscales=5, warps=5, epsilon=0.01, inner_iterations=30, outer_iterations=10,
        scale_step=0.8, median_filtering=5, pad=0, **{"lambda": 0.15},
    ),
    "no border padding: pad 0": dict(pad=0),
    "faster: 2 warps": dict(warps=2),
    "finer: epsilon 0.01": dict(epsilon=0.01),
}


class Renderer:
    """The astronaut's face, moved by a displacement field given in crop pixels, seen at crop resolution."""

    def __init__(self):
        gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)[:256, 120:376].astype(np.float32) / 255
        self.side = SIZE * SUPERSAMPLE
        self.fine = cv2.resize(gray, (self.side, self.side), interpolation=cv2.INTER_CUBIC)
        self.ys, self.xs = np.mgrid[0 : self.side, 0 : self.side].astype(np.float32)

    def __call__(self, flow: np.ndarray) -> np.ndarray:
        """The image whose content moved by ``flow`` ``(SIZE, SIZE, 2)`` (first order: sampled at x - flow)."""
        fine_flow = cv2.resize(flow, (self.side, self.side), interpolation=cv2.INTER_LINEAR) * SUPERSAMPLE
        moved = cv2.remap(self.fine, self.xs - fine_flow[..., 0], self.ys - fine_flow[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
        return cv2.resize(moved, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def bump(peak: float) -> np.ndarray:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    shape = np.exp(-((xs - 0.62 * SIZE) ** 2 + (ys - 0.7 * SIZE) ** 2) / (2 * (0.1 * SIZE) ** 2))
    return np.stack([peak * shape, -0.5 * peak * shape], axis=-1)


def evaluate(render: Renderer, method: str, params) -> str:
    still = render(np.zeros((SIZE, SIZE, 2), np.float32))
    uniform, local, seconds, invented = [], [], 0.0, 0.0
    for peak in PEAKS:
        shift = np.zeros((SIZE, SIZE, 2), np.float32)
        shift[..., 0] = peak
        flow = estimate_flow(still, render(shift), method, params)
        uniform.append(f"{flow[16:-16, 16:-16, 0].mean():5.2f}")
        true_flow = bump(peak)
        start = time.perf_counter()
        flow = estimate_flow(still, render(true_flow), method, params)
        seconds += time.perf_counter() - start
        inside = np.linalg.norm(true_flow, axis=-1) > 0.5 * np.linalg.norm(true_flow, axis=-1).max()
        true_mag = np.linalg.norm(true_flow, axis=-1)[inside].mean()
        error = np.linalg.norm(flow - true_flow, axis=-1)[inside].mean() / true_mag
        ratio = np.linalg.norm(flow, axis=-1)[inside].mean() / true_mag
        local.append(f"{error:4.2f} x{ratio:4.2f}")
        still_region = np.linalg.norm(true_flow, axis=-1) < 1e-3
        invented = max(invented, float(np.linalg.norm(flow, axis=-1)[still_region].max()))
    timing = f"{seconds / len(PEAKS) * 1000:6.1f} ms"
    return f"{timing} | " + " ".join(uniform) + " | " + " | ".join(local) + f" | {invented:4.2f}"


def main() -> None:
    render = Renderer()
    estimate_flow(render.fine[:SIZE, :SIZE], render.fine[:SIZE, :SIZE], "tvl1")  # build before timing
    print("uniform shift of", ", ".join(map(str, PEAKS)), "px: mean flow")
    print("local bump peaking at the same: mean end-point error / true motion, x estimated / true magnitude;")
    print("largest invented flow where nothing moves (px)")
    for name, params in TVL1_VARIANTS.items():
        print(f"tvl1 {name:<31}", evaluate(render, "tvl1", params))
    for method in ("tvl1_skimage", "farneback", "dis"):
        print(f"{method:<36}", evaluate(render, method, None))
    print("mer tvl1 defaults:", default_params("tvl1"))
    print("mer tvl1_skimage defaults:", default_params("tvl1_skimage"))


if __name__ == "__main__":
    main()
