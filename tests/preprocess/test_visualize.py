"""``preprocess.py visualize=K``: one PNG panel per clip, for every magnifier's kind of maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mer.preprocess import pipeline
from mer.cache import load_cache
from mer.preprocess.clip import ClipResult
from mer.preprocess.face import CropBox, FaceBox
from mer.preprocess.visualize import save_panel, write_panels

REPO = Path(__file__).resolve().parents[2]
DPI, COLUMN_INCHES = 110, 1.9  # as save_panel draws


def compose_preprocess(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("preprocess", overrides=["dataset.generate_if_missing=false", *overrides])


def made_up_result(n: int, crop_size: int, map_size: int, channels: int, maps: np.ndarray | None = None) -> ClipResult:
    rng = np.random.default_rng(0)
    onset = rng.random((crop_size, crop_size, 3), dtype=np.float32)
    if maps is None:
        maps = rng.random((n, channels, map_size, map_size), dtype=np.float32)
    return ClipResult(
        patches=np.zeros((1, n, 30, channels, 7, 7), np.float32),
        landmarks=rng.uniform(0, map_size - 1, (68, 2)).astype(np.float32),
        timings={},
        onset=onset,
        magnified=np.clip(onset + rng.normal(0, 0.01, (n, crop_size, crop_size, 3)), 0, 1).astype(np.float32),
        maps=maps,
        stamps=np.arange(n + 1, dtype=np.float64),
        face=FaceBox(10, 10, 90, 90, 1.0),
        crop=CropBox(0, 0, 100),
    )


@pytest.mark.parametrize(
    "stages, crop_size, map_size, channels",
    [
        (["magnification=lagrangian", "motion=tvl1"], 128, 128, 1),
        (["magnification=eulerian", "motion=tvl1", "motion.channels=uv_strain"], 128, 64, 3),
        (["interpolation=rife", "magnification=magnet", "motion=magnet"], 256, 128, 1),
    ],
    ids=["lagrangian", "eulerian-uv-strain", "magnet"],
)
def test_panel_has_a_column_per_path_for_each_kind_of_map(tmp_path, stages, crop_size, map_size, channels):
    cfg = compose_preprocess(*stages)
    path = save_panel(made_up_result(3, crop_size, map_size, channels), cfg, tmp_path / "clip.png", "sub01/EP01")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(4.3 * DPI), round(COLUMN_INCHES * 4 * DPI))  # 2 rows, onset + 3 paths
    assert image[..., :3].std() > 0.05  # drawn, not blank
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_panel_of_a_clip_without_motion(tmp_path):
    """Constant maps and no change (magnification=none on a still clip) still draw."""
    cfg = compose_preprocess("magnification=none")
    result = made_up_result(2, 64, 64, 1, maps=np.zeros((2, 1, 64, 64), np.float32))
    result.magnified[:] = result.onset
    assert save_panel(result, cfg, tmp_path / "still.png").is_file()


def test_write_panels_one_png_per_clip(tiny_corpus, tmp_path):
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", f"paths.cache_dir={tmp_path}", "frames=2",
                             "magnification.alphas=[1.2,2.0]", "preprocess.workers=1")
    out = pipeline.run_preprocessing(cfg, progress=False)
    samples = load_cache(out).samples
    written = write_panels(cfg, out, 2)
    assert written == [out / "panels" / f"{row.subject}__{row.clip}.png" for row in samples.head(2).itertuples()]
    assert all(matplotlib.image.imread(path).shape[:2] == (round(4.3 * DPI), round(COLUMN_INCHES * 3 * DPI))
               for path in written)
    assert sorted((out / "panels").iterdir()) == sorted(written)
