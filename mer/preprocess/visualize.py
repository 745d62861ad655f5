"""``preprocess.py visualize=K``: one PNG panel per clip, to see what preprocessing did.

A panel shows the onset crop with its landmarks and ROI boxes, the N motion maps at the test
amplification factor, and the magnified last frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mer.data.samples import index_frames
from mer.preprocess.cache import load_cache


def write_panels(cfg: DictConfig, cache_dir: Path, count: int) -> list[Path]:
    """Re-run the clip stages for the first ``count`` cached clips and save a panel for each.

    Returns:
        The written PNG paths, under ``<cache_dir>/panels/``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mer.preprocess.clip import process_clip
    from mer.preprocess.rois import roi_indices

    cache = load_cache(cache_dir, mmap=True)
    roi_index, _, _ = roi_indices(cfg.rois)
    half = int(cfg.rois.patch_size) // 2
    out_dir = Path(cache_dir) / "panels"
    out_dir.mkdir(exist_ok=True)
    written = []
    for _, sample in cache.samples.head(count).iterrows():
        result = process_clip(sample.to_dict(), index_frames(sample["frames_dir"], cfg.dataset.frame_regex), cfg)
        maps = np.asarray(result.maps)  # (N, C, h, w)
        n = maps.shape[0]
        columns = n + 2
        fig, axes = plt.subplots(1, columns, figsize=(2.0 * columns, 2.4))
        onset = np.asarray(result.onset)
        scale = onset.shape[0] / maps.shape[-2]
        axes[0].imshow(np.clip(onset, 0, 1))
        points = np.asarray(result.landmarks) * scale
        axes[0].scatter(points[:, 0], points[:, 1], s=3, c="yellow")
        for x, y in points[roi_index]:
            axes[0].add_patch(Rectangle((x - (half + 0.5) * scale, y - (half + 0.5) * scale),
                                        (2 * half + 1) * scale, (2 * half + 1) * scale,
                                        fill=False, edgecolor="red", linewidth=0.6))
        axes[0].set_title(f"{sample['subject']}/{sample['clip']}", fontsize=7)
        vmax = float(np.percentile(maps[:, 0], 99.5)) or 1.0
        for k in range(n):
            axes[k + 1].imshow(maps[k, 0], cmap="magma", vmin=0, vmax=vmax)
            axes[k + 1].set_title(f"map {k + 1}/{n}", fontsize=7)
        axes[-1].imshow(np.clip(np.asarray(result.magnified_last), 0, 1))
        axes[-1].set_title(f"magnified x{float(cfg.magnification.test_alpha):g}", fontsize=7)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / f"{sample['subject']}__{sample['clip']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
