"""``preprocess.py visualize=K``: one PNG panel per clip, to see what preprocessing did.

A panel has two rows of N + 1 images, for the methods of the config (named in its title):

* top: the onset crop with its landmarks and ROI boxes, then the N motion maps at the test amplification factor
  (the patches are cut from these; one colour scale for the N maps);
* bottom: frame N magnified at the test factor, then for k = 1..N the change the magnifier rendered,
  ``magnified frame k - onset`` (grey level, blue darker / red brighter, one symmetric scale for the N frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mer.cache import load_cache
from mer.data.frames import index_frames
from mer.preprocess.clip import ClipResult, process_clip


def _percentile_range(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """A colour range that a few extreme pixels cannot flatten; never empty."""
    vmin, vmax = (float(v) for v in np.percentile(values, [low, high]))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def save_panel(result: ClipResult, cfg: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Draw the panel of one preprocessed clip and save it as a PNG.

    Args:
        result: The clip's :class:`~mer.preprocess.clip.ClipResult`: ``onset`` (S, S, 3), ``magnified``
            (N, S, S, 3), ``maps`` (N, C, M, M) (channel 0 is drawn), ``landmarks`` (68, 2) in map pixels.
        cfg: The preprocess config it was made with (``rois``, ``interpolation``, ``magnification``, ``motion``).
        path: The PNG to write.
        title: Shown above the onset (e.g. the clip's name).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mer.preprocess.rois import roi_indices

    onset = np.asarray(result.onset)
    magnified = np.asarray(result.magnified)
    maps = np.asarray(result.maps)[:, 0]  # (N, M, M)
    n = maps.shape[0]
    fig, axes = plt.subplots(2, n + 1, figsize=(1.9 * (n + 1), 4.3), squeeze=False)

    # Landmarks are in map pixels; pixel centres map onto pixel centres (as in process_clip).
    scale = onset.shape[0] / maps.shape[-1]
    points = (np.asarray(result.landmarks) + 0.5) * scale - 0.5
    half = int(cfg["rois"].get("patch_size", 7)) // 2
    axes[0, 0].imshow(np.clip(onset, 0, 1))
    axes[0, 0].scatter(points[:, 0], points[:, 1], s=3, c="yellow")
    for x, y in points[roi_indices(cfg["rois"]).indices]:
        side = (2 * half + 1) * scale
        axes[0, 0].add_patch(Rectangle((x - side / 2, y - side / 2), side, side, fill=False, edgecolor="red",
                                       linewidth=0.6))
    axes[0, 0].set_title(title, fontsize=7)

    vmin, vmax = _percentile_range(maps)
    for k in range(n):
        axes[0, k + 1].imshow(maps[k], cmap="magma", vmin=vmin, vmax=vmax)
        axes[0, k + 1].set_title(f"motion map {k + 1}/{n}", fontsize=7)

    test_alpha = float(cfg["magnification"]["test_alpha"])
    axes[1, 0].imshow(np.clip(magnified[-1], 0, 1))
    axes[1, 0].set_title(f"frame {n} magnified x{test_alpha:g}", fontsize=7)
    change = (magnified - onset[None]).mean(axis=-1)  # (N, S, S) grey-level change
    limit = max(float(np.percentile(np.abs(change), 99.5)), 1e-6)
    for k in range(n):
        axes[1, k + 1].imshow(change[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[1, k + 1].set_title(f"magnified {k + 1} - onset", fontsize=7)

    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(
        f"interpolation={cfg['interpolation']['name']}  magnification={cfg['magnification']['name']} "
        f"(alpha {test_alpha:g})  motion={cfg['motion']['name']}  |change| <= {limit:.3g}",
        fontsize=8,
    )
    fig.tight_layout()
    from mer.files import atomic_save_png

    path = Path(path)
    atomic_save_png(path, fig, dpi=110)
    return path


def write_panels(cfg: DictConfig, cache_dir: Path, count: int) -> list[Path]:
    """Re-run the clip stages for the first ``count`` cached clips and save a panel for each.

    Returns:
        The written PNG paths, ``<cache_dir>/panels/<subject>__<clip>.png``, one per clip (``count`` at most).
    """
    cache = load_cache(cache_dir, mmap=True)
    out_dir = Path(cache_dir) / "panels"
    written = []
    for _, sample in cache.samples.head(count).iterrows():
        result = process_clip(sample.to_dict(), index_frames(sample["frames_dir"], cfg.dataset.frame_regex), cfg)
        name = f"{sample['subject']}__{sample['clip']}".replace("/", "_")
        written.append(save_panel(result, cfg, out_dir / f"{name}.png", f"{sample['subject']}/{sample['clip']}"))
    return written
