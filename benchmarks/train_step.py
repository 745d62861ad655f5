"""Throughput of one training step of the layered-relations network on CPU.

A step is forward + cross-entropy + backward + Adam (lr 1e-4) on random patches of shape
(batch, frames, 30, 1, 7, 7) (the paper's 10 + 20 ROIs, 4 classes), timed after a warm-up.
The last line printed is ``samples/s: X``.

    python benchmarks/train_step.py --frames 12 --batch 32 [--steps 20] [--threads 2] [--loop]

``--loop`` runs the shared visual part once per path in a Python loop (as the published code does)
instead of folding the paths into the batch, for comparison.
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

from mer.models import LayeredRelationsNet, build_model  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12, help="N, the number of paths")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--loop", action="store_true", help="run the paths in a Python loop, for comparison")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a model config without a defaults list")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    adjacency = generator.random((NUM_AUS, NUM_AUS))
    model = build_model(
        OmegaConf.load(args.config), region_sizes=REGION_SIZES, num_paths=args.frames, num_classes=NUM_CLASSES,
        in_channels=1, au_adjacency=adjacency,
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    patches = torch.randn(args.batch, args.frames, sum(REGION_SIZES), 1, 7, 7)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    forward = (lambda x: forward_path_loop(model, x)) if args.loop else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(patches), labels).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start

    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"parameters {parameters:,}, schedule {'path loop' if args.loop else 'batched'}")
    print(f"batch {args.batch} x {args.frames} paths, {args.steps} steps in {elapsed:.2f} s "
          f"({1000 * elapsed / args.steps:.0f} ms/step)")
    print(f"samples/s: {args.steps * args.batch / elapsed:.1f}")


if __name__ == "__main__":
    main()
