"""How often the in-clip apex search of `mer predict` (onset = first frame, apex = the frame that moved most from it)
lands within ±2 frames of the generator's true apex.

    python benchmarks/apex_spotting.py [--root DIR]   # default: a fresh default synthetic corpus (seed 0, 80 clips)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mer.predict import IMAGE_SUFFIXES, number_frames, spot_apex
from mer.synthetic import generate_corpus, load_ground_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="a synthetic corpus (default: generate the default one)")
    parser.add_argument("--tolerance", type=int, default=2, help="frames")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or generate_corpus(Path(scratch) / "synthetic")
        truth = load_ground_truth(root)
        start, errors = time.perf_counter(), []
        for key, record in sorted(truth.items()):
            frames = number_frames([p for p in (root / key).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
            errors.append(spot_apex(frames, min(frames), max(frames)) - int(record["apex"]))
    hits = sum(abs(e) <= args.tolerance for e in errors)
    print(f"apex within ±{args.tolerance} frames on {hits}/{len(errors)} clips ({hits / len(errors):.1%}); "
          f"mean |error| {sum(map(abs, errors)) / len(errors):.2f} frames, worst {max(map(abs, errors))}; "
          f"{time.perf_counter() - start:.1f} s")
    print("errors (spotted - true):", errors)


if __name__ == "__main__":
    main()
