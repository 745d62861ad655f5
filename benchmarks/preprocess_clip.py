"""Time per clip of mer.preprocess.clip.process_clip, stage by stage, with the shipped defaults.

The clip: skimage's astronaut (512 x 512 JPEG frames, the face ~90 px wide), onset -> apex over 30 frames
(CASME II at 200 fps), the mouth moving by up to 1.5 px. N = 12 paths and the 10 alphas of
conf/magnification/lagrangian.yaml by default. Prints the mean seconds per stage over the repeats, and how
much of `magnify` the N optical flows take.

    PYTHONPATH=. python benchmarks/preprocess_clip.py [--frames 12] [--motion tvl1] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf
from skimage import data

from mer.preprocess.clip import load_frames, process_clip, select_frames
from mer.preprocess.face import crop_frames, detect_face, landmarks
from mer.preprocess.motion.flow import warp
from mer.preprocess.interpolation import get_interpolator, reads_whole_segment
from mer.preprocess.motion.maps import MotionSpec

CONF = Path(__file__).resolve().parents[1] / "conf"
ONSET, APEX = 1, 31


def write_clip(directory: Path) -> dict[int, Path]:
    image = data.astronaut()
    mouth = landmarks(image, detect_face(image))[48:68].mean(axis=0)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    bump = np.exp(-((xs - mouth[0]) ** 2 + (ys - mouth[1]) ** 2) / (2 * 12.0**2))
    paths = {}
    for number in range(ONSET, APEX + 1):
        shift = np.float32(1.5 * np.sin(np.pi / 2 * (number - ONSET) / (APEX - ONSET))) * bump
        frame = cv2.remap(image, xs - 0.3 * shift, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        paths[number] = directory / f"img{number}.jpg"
        cv2.imwrite(str(paths[number]), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--motion", default="tvl1")
    parser.add_argument("--interpolation", default="linear")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = as in one worker of 2 cores)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    cfg = OmegaConf.create(
        {
            "frames": args.frames,
            "rois": OmegaConf.load(CONF / "rois" / "eyebrow_mouth30.yaml"),
            "interpolation": OmegaConf.load(CONF / "interpolation" / f"{args.interpolation}.yaml"),
            "magnification": OmegaConf.load(CONF / "magnification" / "lagrangian.yaml"),
            "motion": OmegaConf.load(CONF / "motion" / f"{args.motion}.yaml"),
            "preprocess": OmegaConf.load(CONF / "preprocess" / "default.yaml"),
        }
    )
    sample = {"dataset": "bench", "subject": "s", "clip": "c", "onset": ONSET, "apex": APEX, "offset": APEX}
    with tempfile.TemporaryDirectory() as directory:
        paths = write_clip(Path(directory))
        result = process_clip(sample, paths, cfg)  # warm-up: loads dlib's models, builds the estimator
        cpu_start = time.process_time()
        runs = [process_clip(sample, paths, cfg).timings for _ in range(args.repeats)]
        cpu_seconds = (time.process_time() - cpu_start) / args.repeats
        # The magnify stage's parts, on the clip's own frames.
        stamps, numbers = select_frames(sample, np.array(sorted(paths)), args.frames, "apex", False,
                                        reads_whole_segment(cfg.interpolation))
        crops = crop_frames(load_frames(paths, numbers), result.crop, cfg.preprocess.face.crop_size)
        selected = get_interpolator(cfg.interpolation)(crops, numbers, stamps)
    motion = MotionSpec.from_config(cfg.motion, cfg.preprocess.map_size)
    gain = 1 + np.asarray(cfg.magnification.alphas, dtype=np.float32)[:, None, None, None, None]
    parts = {"flows": [], "maps": [], "warps": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        flows = motion.flows(selected[0], selected[1:])
        parts["flows"].append(time.perf_counter() - start)
        start = time.perf_counter()
        gain * motion.maps(flows)[None]
        parts["maps"].append(time.perf_counter() - start)
        start = time.perf_counter()
        warp(selected[0], -gain * flows[None])
        parts["warps"].append(time.perf_counter() - start)

    alphas = len(cfg.magnification.alphas)
    print(f"process_clip, N={args.frames}, {alphas} alphas, crop {cfg.preprocess.face.crop_size}, "
          f"motion={args.motion}, interpolation={args.interpolation}, patches {result.patches.shape}")
    for stage in runs[0]:
        print(f"  {stage:<12} {np.mean([run[stage] for run in runs]) * 1000:7.1f} ms")
    print(f"  CPU time per clip {cpu_seconds * 1000:.1f} ms (wall times above include waiting for a busy CPU)")
    print("  magnify, part by part:", ", ".join(f"{name} {np.mean(t) * 1000:.1f} ms" for name, t in parts.items()))


if __name__ == "__main__":
    main()
