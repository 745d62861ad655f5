"""Preprocessing throughput on the default synthetic corpus (clips/s).

    python benchmarks/preprocess_corpus.py [--workers 2] [--frames 12] [OVERRIDE ...]

Builds the cache from scratch into a temporary directory (the corpus is generated first if it is
not on disk, and that time is not counted) and prints ``clips/s: X`` as its last line. Extra
arguments are Hydra overrides of ``conf/preprocess.yaml`` (e.g. ``motion=dis``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from mer.preprocess.pipeline import ensure_corpus, run_preprocessing

    with tempfile.TemporaryDirectory() as cache_dir:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("preprocess", overrides=[
                f"paths.root_dir={REPO}", f"paths.cache_dir={cache_dir}", f"frames={args.frames}",
                f"preprocess.workers={args.workers}", *args.overrides,
            ])
        ensure_corpus(cfg)
        start = time.perf_counter()
        out = run_preprocessing(cfg, progress=False)
        elapsed = time.perf_counter() - start
        clips = len((out / "samples.csv").read_text().splitlines()) - 1
    print(f"cores {os.cpu_count()}, workers {args.workers}, frames {args.frames}, "
          f"{' '.join(args.overrides) or 'default stages'}: {clips} clips in {elapsed:.1f} s")
    print(f"clips/s: {clips / elapsed:.2f}")


if __name__ == "__main__":
    main()
