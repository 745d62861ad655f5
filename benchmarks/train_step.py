"""Throughput of one training step of the layered-relations network, and its share of the machine's matmul rate.

A step is forward + cross-entropy + backward + Adam (lr 1e-4) on random patches of shape
(batch, frames, 30, 1, 7, 7) (the paper's 10 + 20 ROIs, 4 classes), timed after a warm-up as the
fastest of ``--repeats`` rounds of ``--steps`` steps (a shared machine adds noise, never speed).

The step's arithmetic is counted once with ``torch.utils.flop_counter`` (matmuls and convolutions,
forward and backward) on the path-loop schedule, the published network's plain arithmetic, so that
every schedule is credited the same FLOPs per sample. The machine's fp32 rate is that of a plain
2048 x 2048 matmul at the same thread count, measured in the same process right before and right
after the steps; the share is ``FLOP/sample x samples/s / max(matmul before, after)``.

    python benchmarks/train_step.py --frames 12 --batch 32 [--steps 10] [--repeats 3] [--threads 2]
        [--loop | --compare] [--compile] [--device cuda] [--profile]

``--loop`` runs the shared visual part once per path in a Python loop (as the published code does)
instead of folding the paths into the batch; ``--compare`` times both, interleaved, and prints their
ratio. ``--compile`` also times ``torch.compile`` of the batched network (C++ compiler needed on CPU;
compilation is not timed). ``--profile`` prints torch.profiler's top operators of the batched step.
The last line printed is ``samples/s: X`` (of the batched schedule unless ``--loop``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mer.models import build_model  # noqa: E402
from mer.models.layered_relations import LayeredRelationsNet  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "model" / "layered_relations.yaml"
REGION_SIZES = [10, 20]
NUM_CLASSES = 4
NUM_AUS = 9


def forward_path_loop(model: LayeredRelationsNet, patches: torch.Tensor) -> torch.Tensor:
    """The same network, with its visual part run path by path (the published code's schedule)."""
    features = torch.stack([model.trunk(patches[:, n]) for n in range(patches.shape[1])], dim=1)
    scores = torch.einsum("bnf,nkf->bnk", features, model.path_weights())
    scores = F.layer_norm(scores, scores.shape[-1:], eps=model.score_norm_eps)
    scores = scores * model.score_norm_weight + model.score_norm_bias
    return model.classifier(model.head_norm(scores.flatten(1)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a plain ``size``² matmul (the fastest of ``repeats`` timed calls after a warm-up)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12, help="N, the number of paths")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the fastest is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--loop", action="store_true", help="run the paths in a Python loop, for comparison")
    parser.add_argument("--compare", action="store_true", help="time the batched and the path-loop schedules")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the batched network")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:K")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of the batched step")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a model config without a defaults list")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    adjacency = generator.random((NUM_AUS, NUM_AUS))
    model = build_model(
        OmegaConf.load(args.config), region_sizes=REGION_SIZES, num_paths=args.frames, num_classes=NUM_CLASSES,
        in_channels=1, au_adjacency=adjacency,
    ).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    patches = torch.randn(args.batch, args.frames, sum(REGION_SIZES), 1, 7, 7, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

    schedules = {"batched": model, "path loop": lambda x: forward_path_loop(model, x)}
    if args.loop:
        schedules.pop("batched")
    elif not args.compare:
        schedules.pop("path loop")
    if args.compile:
        from mer.training.compiled import compile_model

        compiled, how = compile_model(model)
        schedules[f"batched, {how}"] = compiled

    def step(forward) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(patches), labels).backward()
        optimizer.step()

    # FLOPs per sample of the plain arithmetic (the path loop runs exactly the published operations).
    from torch.utils.flop_counter import FlopCounterMode

    from mer.models.blocks.encoder import written_out_attention

    with FlopCounterMode(display=False) as counter, written_out_attention():
        step(lambda x: forward_path_loop(model, x))
    flop_per_sample = counter.get_total_flops() / args.batch

    for name, forward in schedules.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            step(forward)
        synchronize(device)
        if "compile" in name:
            print(f"({name}: warm-up, compilation included, {time.perf_counter() - start:.0f} s)")
    load_before = load_average()
    rate_before = matmul_gflops(device)
    best = {name: float("inf") for name in schedules}
    for _ in range(args.repeats):
        for name, forward in schedules.items():  # interleaved: load changes hit every schedule alike
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(forward)
            synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    rate_after = matmul_gflops(device)
    rate = max(rate_before, rate_after)

    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"parameters {parameters:,}; load {load_before} before, {load_average()} after")
    print(f"batch {args.batch} x {args.frames} paths; {flop_per_sample / 1e9:.3f} GFLOP per sample "
          f"(forward + backward, counted on the path loop with written-out attention)")
    print(f"matmul fp32 2048^2: {rate_before:.1f} GFLOP/s before, {rate_after:.1f} after (share against "
          f"{rate:.1f})")
    for name, seconds in best.items():
        samples = args.batch / seconds
        achieved = flop_per_sample * samples / 1e9
        print(f"{name:>24}: {1000 * seconds:7.1f} ms/step  {samples:8.1f} samples/s  {achieved:7.1f} GFLOP/s  "
              f"= {100 * achieved / rate:5.1f} % of matmul")
    if "batched" in best and "path loop" in best:
        print(f"batched / path loop: {best['path loop'] / best['batched']:.2f}x")
    if args.profile and "batched" in schedules:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            for _ in range(args.steps):
                step(model)
            synchronize(device)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    main_schedule = "path loop" if args.loop else "batched"
    print(f"samples/s: {args.batch / best[main_schedule]:.1f}")


if __name__ == "__main__":
    main()
