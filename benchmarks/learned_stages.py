"""Throughput of the learned stages (RIFE + MagNet) on one clip: batched vs the published loop.

The published pipeline interpolates one stamp at a time (bisection with one network call per
level) and magnifies one (frame, alpha) pair at a time, re-encoding the onset and frame k for
every pair. The batched path bisects all stamps of the clip together, encodes each frame once
and sends (frame, alpha) pairs through the manipulator + decoder in channels-last batches.
Both run in the same process on the same weights (the published ones where present, else
seeded random ones: the cost does not depend on the values), and the script checks that they
agree. Stages are timed interleaved (loop, batched, loop, batched, ...) and the fastest of
``--repeats`` runs is kept, which damps the noise of a shared machine.

Two batched schedules are timed: every (frame, alpha) pair decoded into a frame, and what
preprocessing does with ``motion=magnet``: the motion maps need only the encoder and the
manipulator, and the decoder (most of a MagNet call) runs only for the frame that is read
(frame N at the test alpha, the landmark frame; ``MagnetMagnifier.magnify_clip(render="on_demand")``).

The script also counts each schedule's arithmetic (matmuls and convolutions, ``torch.utils.flop_counter``)
and times a 2048² fp32 matmul on the same threads: their ratio is the least time any schedule of the same
network calls could take at the machine's fp32 rate, hence the largest speed-up over the one-call schedule
that batching alone could give.

The speed-up depends on the thread count: with several intra-op threads every single-pair
call pays thread synchronisation that batches amortise; with ``--threads 1`` what remains is
the arithmetic saved (each frame encoded once instead of twice per alpha) and better kernels
for batches, since the decoder, most of the work, runs once per (frame, alpha) either way.

    python benchmarks/learned_stages.py [--size 256] [--frames 12] [--alphas 10] [--repeats 2] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from mer.preprocess.magnification.magnet import MagNet, MagnetMagnifier, load_magnet, motion_map  # noqa: E402
from mer.preprocess.interpolation.rife import (  # noqa: E402
    IFNet,
    RifeInterpolator,
    interpolate,
    load_rife,
    to_nchw_tensor,
)
from mer.preprocess.interpolation import bracket  # noqa: E402
from mer.weights import rife_weights_path  # noqa: E402
from train_step import matmul_gflops  # noqa: E402  (benchmarks/train_step.py: sys.path[0] is this folder)


def synthetic_clip(size: int, span: int) -> np.ndarray:
    """(span + 1, size, size, 3) float32 in [0, 1]: a real face drifting by sub-pixel steps."""
    face = cv2.resize(data.astronaut()[0:300, 100:400], (size, size), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(span + 1):
        shift = np.float32([[1, 0, 0.05 * index], [0, 1, 0.03 * index]])
        frames.append(cv2.warpAffine(face, shift, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames).astype(np.float32) / 255.0


def rife_loop(model: IFNet, frames: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """(K, H, W, 3): one stamp at a time, each bisected with single-pair network calls."""
    single = RifeInterpolator(model)
    previous, following, ratios = bracket(np.arange(len(frames)), stamps)
    interpolated = []
    for prev, nxt, ratio in zip(previous, following, ratios):
        if ratio == 0:
            interpolated.append(frames[prev])
            continue
        device = single.device
        frame = single.interpolate(to_nchw_tensor(frames[prev], device), to_nchw_tensor(frames[nxt], device),
                                   torch.tensor([ratio]))
        interpolated.append(frame[0].permute(1, 2, 0).cpu().numpy())
    return np.stack(interpolated)


def rife_batched(model: IFNet, frames: np.ndarray, stamps: np.ndarray, batch_size: int) -> np.ndarray:
    """(K, H, W, 3): all stamps bisected together."""
    interpolator = RifeInterpolator(model, batch_size=batch_size)
    return interpolate(frames, np.arange(len(frames)), stamps, interpolator=interpolator)


def magnet_loop(model: MagNet, frames: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnified frames (K*N, H, W, 3) and motion maps (K*N, H/2, W/2), one (alpha, frame) pair per call."""
    magnified, maps = [], []
    device = next(model.parameters()).device
    with torch.inference_mode():
        onset = to_nchw_tensor(frames[0], device) * 2 - 1
        for alpha in alphas:
            for frame in frames[1:]:
                output = model(onset, to_nchw_tensor(frame, device) * 2 - 1, float(alpha))
                magnified.append(((output.frame[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).cpu().numpy())
                maps.append(motion_map(output.shape)[0].cpu().numpy())
    return np.stack(magnified), np.stack(maps)


def magnet_batched(model: MagNet, frames: np.ndarray, alphas: np.ndarray,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Same outputs as :func:`magnet_loop` (alpha-major order), batched, every frame decoded."""
    result = MagnetMagnifier(model, batch_size=batch_size).magnify_clip(frames, alphas)
    return (result.frames.reshape(-1, *result.frames.shape[2:]),
            result.motion_maps.reshape(-1, *result.motion_maps.shape[2:]))


def magnet_looked_at(model: MagNet, frames: np.ndarray, alphas: np.ndarray, batch_size: int,
                     test_index: int) -> tuple[np.ndarray, np.ndarray]:
    """What preprocessing computes: every motion map, and the one frame it reads (frame N at the test alpha, the
    landmark frame); the decoder runs for that frame only (``render="on_demand"``)."""
    result = MagnetMagnifier(model, batch_size=batch_size).magnify_clip(frames, alphas, render="on_demand")
    return result.frames[test_index, -1], result.motion_maps.reshape(-1, *result.motion_maps.shape[2:])


def timed(function: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()  # every stage returns arrays on the host: the device has finished
    return result, time.perf_counter() - start


def gflop(function: Callable[[], object]) -> float:
    """GFLOP of the matmuls and convolutions that ``function`` runs (``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="frame side (MagNet's 256 in the paper)")
    parser.add_argument("--frames", type=int, default=12, help="N: stamps after the onset")
    parser.add_argument("--span", type=int, default=40, help="onset-to-apex distance in recorded frames")
    parser.add_argument("--alphas", type=int, default=10, help="how many of 1.2, 1.4, ... 3.0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="keep the fastest of this many interleaved runs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rife-weights", default=str(rife_weights_path()))
    parser.add_argument("--magnet-weights", default=None)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:K")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    if Path(args.rife_weights).is_file():
        rife_model, rife_source = load_rife(args.rife_weights), f"published ({args.rife_weights})"
    else:
        rife_model, rife_source = IFNet().eval(), "random (published weights absent)"
    if args.magnet_weights:
        magnet_model, magnet_source = load_magnet(args.magnet_weights), args.magnet_weights
    else:
        magnet_model, magnet_source = MagNet().eval(), "random (no checkpoint given)"
    rife_model, magnet_model = rife_model.to(args.device), magnet_model.to(args.device)
    alphas = np.round(1.2 + 0.2 * np.arange(args.alphas), 1)
    frames = synthetic_clip(args.size, args.span)
    stamps = np.arange(args.frames + 1) * args.span / args.frames
    ratios = bracket(np.arange(len(frames)), stamps)[2]
    print(f"clip: {args.frames + 1} stamps over {args.span} frames ({int((ratios > 0).sum())} interpolated), "
          f"{args.size}x{args.size}, {len(alphas)} alphas -> {args.frames * len(alphas)} MagNet pairs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch size {args.batch_size}, "
          f"device {args.device}")
    print(f"weights: RIFE {rife_source}; MagNet {magnet_source}")

    # Warm-up on a short version of the clip: oneDNN builds its kernels on first use of a shape.
    warm = rife_batched(rife_model, frames, stamps[:3], args.batch_size)
    rife_loop(rife_model, frames, stamps[:3])
    magnet_batched(magnet_model, warm, alphas[:2], args.batch_size)
    magnet_loop(magnet_model, warm, alphas[:1])

    stages = {
        "RIFE loop": lambda: rife_loop(rife_model, frames, stamps),
        "RIFE batched": lambda: rife_batched(rife_model, frames, stamps, args.batch_size),
    }
    test_index = int(np.argmin(np.abs(alphas - 2.0)))  # the test alpha, 2.0
    names = ("RIFE loop", "RIFE batched", "MagNet loop", "MagNet batched", "MagNet looked-at")
    seconds = {name: float("inf") for name in names}
    outputs = {}
    for _ in range(args.repeats):
        for name, stage in stages.items():
            outputs[name], elapsed = timed(stage)
            seconds[name] = min(seconds[name], elapsed)
        # Both MagNet paths magnify the same (batched) interpolation.
        interpolated = outputs["RIFE batched"]
        for name, stage in (("MagNet loop", lambda: magnet_loop(magnet_model, interpolated, alphas)),
                            ("MagNet batched", lambda: magnet_batched(magnet_model, interpolated, alphas,
                                                                      args.batch_size)),
                            ("MagNet looked-at", lambda: magnet_looked_at(magnet_model, interpolated, alphas,
                                                                          args.batch_size, test_index))):
            outputs[name], elapsed = timed(stage)
            seconds[name] = min(seconds[name], elapsed)

    rows = {"one call at a time": ("RIFE loop", "MagNet loop"),
            "batched, every frame decoded": ("RIFE batched", "MagNet batched"),
            "batched, frames looked at": ("RIFE batched", "MagNet looked-at")}
    loop_total = seconds["RIFE loop"] + seconds["MagNet loop"]
    print(f"per clip ({torch.get_num_threads()} threads; load {open('/proc/loadavg').read().split()[0]}):")
    for label, (rife_name, magnet_name) in rows.items():
        total = seconds[rife_name] + seconds[magnet_name]
        print(f"  {label:>29}: RIFE {seconds[rife_name]:7.2f} s  MagNet {seconds[magnet_name]:7.2f} s  "
              f"total {total:7.2f} s  = {loop_total / total:5.2f}x the one-call schedule")
    print(f"speed-up: RIFE {seconds['RIFE loop'] / seconds['RIFE batched']:.2f}x, "
          f"MagNet {seconds['MagNet loop'] / seconds['MagNet batched']:.2f}x (every frame decoded), "
          f"{seconds['MagNet loop'] / seconds['MagNet looked-at']:.2f}x (frames looked at)")
    # The arithmetic of each schedule, and the least time it could take at the machine's fp32 matmul rate.
    device = torch.device(args.device)
    rate = matmul_gflops(device)
    interpolated = outputs["RIFE batched"]
    rife_gflop = gflop(lambda: rife_batched(rife_model, frames, stamps, args.batch_size))  # = the loop's calls
    pair_gflop = gflop(lambda: magnet_loop(magnet_model, interpolated[:2], alphas[:1]))  # one (frame, alpha) pair
    magnet_loop_gflop = pair_gflop * args.frames * len(alphas)
    magnet_looked_gflop = gflop(lambda: magnet_looked_at(magnet_model, interpolated, alphas, args.batch_size,
                                                         test_index))
    least = (rife_gflop + magnet_looked_gflop) / rate
    print(f"arithmetic per clip (matmuls + convolutions): RIFE {rife_gflop:.1f} GFLOP; MagNet one call at a time "
          f"{magnet_loop_gflop:.1f} GFLOP, frames looked at {magnet_looked_gflop:.1f} GFLOP")
    print(f"achieved: RIFE loop {rife_gflop / seconds['RIFE loop']:.1f} GFLOP/s, RIFE batched "
          f"{rife_gflop / seconds['RIFE batched']:.1f}, MagNet loop {magnet_loop_gflop / seconds['MagNet loop']:.1f}, "
          f"MagNet looked-at {magnet_looked_gflop / seconds['MagNet looked-at']:.1f}; fp32 2048^2 matmul {rate:.1f}")
    print(f"bound: the frames-looked-at arithmetic at the matmul rate takes {least:.2f} s, so no schedule of these "
          f"network calls beats the one-call schedule by more than {loop_total / least:.2f}x here")
    loop_frames, loop_maps = outputs["MagNet loop"]
    looked_frame, looked_maps = outputs["MagNet looked-at"]
    differences = [
        np.abs(outputs["RIFE batched"] - outputs["RIFE loop"]).max(),
        *(np.abs(fast - slow).max() for fast, slow in zip(outputs["MagNet batched"], outputs["MagNet loop"])),
        np.abs(looked_frame - loop_frames[(test_index + 1) * args.frames - 1]).max(),
        np.abs(looked_maps - loop_maps).max(),
    ]
    print("agreement with the one-call schedule (max |difference|): interpolated {:.2e}; every frame decoded: "
          "magnified {:.2e}, motion maps {:.2e}; frames looked at: landmark frame {:.2e}, motion maps {:.2e}".format(
              *map(float, differences)))


if __name__ == "__main__":
    main()
