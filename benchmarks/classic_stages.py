"""Time per clip of the weight-free interpolators and magnifiers on 128 x 128 face crops.

The clip: skimage's astronaut's face cropped to 128 x 128, the mouth moving by up to 0.6 px from onset to
end. Interpolation: the N + 1 stamps of an onset..end segment of T recorded frames (TIM reads all T, the
others two per stamp; frame loading and face cropping are not counted). Magnification: the N frames after
the onset, every alpha of conf/magnification/*.yaml, motion maps included (Eulerian measures the flow of
every magnified frame, A x N flows; Lagrangian the flow of every frame, N flows). Prints the mean wall
seconds over the repeats.

    PYTHONPATH=. python benchmarks/classic_stages.py [--frames 12] [--motion tvl1] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf
from skimage import data

from mer.preprocess.face import detect_face, landmarks
from mer.preprocess.interpolation import get_interpolator, time_stamps
from mer.preprocess.magnification import get_magnifier
from mer.preprocess.motion.maps import MotionSpec

CONF = Path(__file__).resolve().parents[1] / "conf"
CROP = 128
SEGMENTS = (15, 31, 64, 120)  # recorded frames, onset to end (200 fps: 31 = 150 ms); no stamp falls on a frame


def face_clip(num_frames: int) -> np.ndarray:
    """``(T, CROP, CROP, 3)`` float32: the astronaut's face, the mouth moving by up to 0.6 px at the end."""
    image = data.astronaut()
    face = detect_face(image)
    mouth = landmarks(image, face)[48:68].mean(axis=0)
    side = face.right - face.left
    x0, y0 = int(face.left - 0.25 * side), int(face.top - 0.25 * side)
    crop_side = int(1.5 * side)
    scale = CROP / crop_side
    ys, xs = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
    mouth_x, mouth_y = (mouth[0] - x0) * scale, (mouth[1] - y0) * scale
    bump = np.exp(-((xs - mouth_x) ** 2 + (ys - mouth_y) ** 2) / (2 * 6.0**2))
    still = cv2.resize(image[y0 : y0 + crop_side, x0 : x0 + crop_side], (CROP, CROP), interpolation=cv2.INTER_AREA)
    still = still.astype(np.float32) / 255
    frames = []
    for index in range(num_frames):
        shift = np.float32(0.6 * np.sin(np.pi / 2 * index / max(num_frames - 1, 1))) * bump
        frames.append(cv2.remap(still, xs - 0.3 * shift, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def mean_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: builds estimators, imports modules
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="N, the paths")
    parser.add_argument("--motion", default="tvl1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = as in one worker of 2 cores)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    print(f"interpolation of N + 1 = {args.frames + 1} stamps, crop {CROP} (ms per clip)")
    interpolators = {name: get_interpolator(OmegaConf.load(CONF / "interpolation" / f"{name}.yaml"))
                     for name in ("linear", "flow_warp", "tim")}
    for num_frames in SEGMENTS:
        frames = face_clip(num_frames)
        numbers = np.arange(100, 100 + num_frames)
        stamps = time_stamps(numbers[0], numbers[-1], args.frames)
        timings = []
        for name, interpolate in interpolators.items():
            # The others read only the neighbours of the stamps; TIM reads the whole segment.
            seconds = mean_seconds(lambda: interpolate(frames, numbers, stamps), args.repeats)
            timings.append(f"{name} {seconds * 1000:7.1f}")
        print(f"  T = {num_frames:3d} recorded frames: " + ", ".join(timings))

    frames = face_clip(31)
    selected = frames[np.rint(np.linspace(0, 30, args.frames + 1)).astype(int)]
    motion = MotionSpec.from_config(OmegaConf.load(CONF / "motion" / f"{args.motion}.yaml"), CROP)
    print(f"magnification of N = {args.frames} frames, crop {CROP}, motion={args.motion} (ms per clip)")
    for name in ("lagrangian", "eulerian"):
        cfg = OmegaConf.load(CONF / "magnification" / f"{name}.yaml")
        magnify = get_magnifier(cfg)
        alphas = list(cfg.alphas)
        total = mean_seconds(lambda: magnify(selected[0], selected[1:], alphas, motion), args.repeats)
        print(f"  {name:<10} {len(alphas)} alphas: {total * 1000:8.1f}")
    no_flow = MotionSpec("dis", "magnitude", CROP)  # the cheapest estimator, to see the rendering alone
    eulerian_cfg = OmegaConf.load(CONF / "magnification" / "eulerian.yaml")
    seconds = mean_seconds(lambda: get_magnifier(eulerian_cfg)(selected[0], selected[1:], list(eulerian_cfg.alphas),
                                                               no_flow), args.repeats)
    flows = mean_seconds(lambda: no_flow.flows(selected[0], np.repeat(selected[1:], len(eulerian_cfg.alphas), 0)),
                         args.repeats)
    print(f"  eulerian rendering alone (pyramid bands, weighted sums): {(seconds - flows) * 1000:.1f}")


if __name__ == "__main__":
    main()
