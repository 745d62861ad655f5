"""ROI sets and patch extraction: orientation, rounding, borders, shapes."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mer.preprocess.rois import extract_patches, patch_origins, roi_indices

CONF = Path(__file__).resolve().parents[2] / "conf" / "rois"


def test_paper_roi_set_is_eyebrows_then_mouth():
    indices, sizes, names = roi_indices(OmegaConf.load(CONF / "eyebrow_mouth30.yaml"))
    assert names == ["eyebrows", "mouth"] and sizes == [10, 20]
    np.testing.assert_array_equal(indices, list(range(17, 27)) + list(range(48, 68)))


def test_every_shipped_roi_set_is_valid():
    for path in sorted(CONF.glob("*.yaml")):
        roi_set = roi_indices(OmegaConf.load(path))
        assert sum(roi_set.region_sizes) == len(roi_set.indices) > 0, path.name


def test_bad_roi_sets_are_rejected():
    with pytest.raises(ValueError, match="0..67"):
        roi_indices({"regions": {"eyes": [36, 68]}})
    with pytest.raises(ValueError, match=r"\['nose'\] have no landmarks"):
        roi_indices({"regions": {"eyes": [36], "nose": []}})


def test_patch_rows_are_y_and_columns_are_x():
    """A marker at row 40, column 10 is at the centre of the patch of point (x=10, y=40): a transpose fails."""
    maps = np.zeros((1, 64, 64), np.float32)
    maps[0, 40, 10] = 1.0
    maps[0, 10, 40] = -1.0  # where a transposed lookup would land
    patches = extract_patches(maps, np.array([[10.0, 40.0]]), size=7)
    assert patches.shape == (1, 1, 7, 7)
    assert patches[0, 0, 3, 3] == 1.0
    assert patches.sum() == 1.0


def test_patch_content_matches_a_slice_and_points_round_to_nearest():
    maps = np.arange(2 * 50 * 60, dtype=np.float32).reshape(2, 50, 60)
    points = np.array([[20.4, 30.6], [20.5, 30.49]])  # -> (20, 31) and (21, 30) as (x, y)
    patches = extract_patches(maps, points, size=7)
    assert patches.shape == (2, 2, 7, 7)
    np.testing.assert_array_equal(patches[0], maps[:, 28:35, 17:24])
    np.testing.assert_array_equal(patches[1], maps[:, 27:34, 18:25])


def test_patches_are_shifted_inward_at_borders_never_padded():
    height, width = 40, 50
    maps = np.random.default_rng(0).random((1, height, width)).astype(np.float32)
    points = np.array([[0.0, 0.0], [width - 1.0, height - 1.0], [-3.0, 20.0], [2.0, 38.6]])
    patches = extract_patches(maps, points, size=7)
    np.testing.assert_array_equal(patches[0, 0], maps[0, :7, :7])
    np.testing.assert_array_equal(patches[1, 0], maps[0, -7:, -7:])
    np.testing.assert_array_equal(patches[2, 0], maps[0, 17:24, :7])
    np.testing.assert_array_equal(patches[3, 0], maps[0, -7:, :7])
    np.testing.assert_array_equal(patch_origins(points, 7, height, width), [[0, 0], [33, 43], [17, 0], [33, 0]])


def test_leading_dimensions_are_kept():
    maps = np.random.default_rng(1).random((3, 4, 2, 32, 32)).astype(np.float32)  # (A, N, C, H, W)
    points = np.random.default_rng(2).uniform(0, 31, (5, 2))
    patches = extract_patches(maps, points, size=5)
    assert patches.shape == (3, 4, 5, 2, 5, 5)
    x, y = np.floor(points[4] + 0.5).astype(int)
    np.testing.assert_array_equal(patches[2, 1, 4, 1], maps[2, 1, 1, y - 2 : y + 3, x - 2 : x + 3])


def test_bad_points_and_oversized_patches_are_rejected():
    maps = np.zeros((1, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"\(R, 2\)"):
        extract_patches(maps, np.zeros(2))
    with pytest.raises(ValueError, match="does not fit"):
        extract_patches(maps, np.zeros((1, 2)), size=7)
