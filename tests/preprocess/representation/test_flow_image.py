"""Onset -> apex flow images: known motion fields, frames with a known motion, and the cache they make."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from skimage import data

from mer.training.datamodule import LOSODataModule
from mer.errors import ConfigError
from mer.preprocess.motion.flow import estimate_flows
from mer.preprocess.representation.flow_image import FlowImageSpec, flow_image, minmax_per_channel
from mer.preprocess.representation import representation_name

REPO = Path(__file__).resolve().parents[3]
SIZE = 112


def linear_field(a: float, b: float, shift: tuple[float, float]) -> np.ndarray:
    """``(SIZE, SIZE, 2)``: ``u = a (x - c) + shift_x``, ``v = b (y - c) + shift_y`` (c the centre)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    centre = (SIZE - 1) / 2
    return np.stack([a * (xs - centre) + shift[0], b * (ys - centre) + shift[1]], axis=-1).astype(np.float32)


def test_channels_of_a_known_field():
    """u, v in flow-image pixels (scaled by S / crop), strain sqrt(u_x^2 + v_y^2) for a diagonal Jacobian."""
    flow = linear_field(0.01, -0.02, (0.8, -0.4))
    image = flow_image(flow, FlowImageSpec(size=28, channels=("u", "v", "strain", "magnitude"), normalize="none"))
    assert image.shape == (4, 28, 28) and image.dtype == np.float32
    scale = 28 / SIZE
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(image[0].mean(), 0.8 * scale, atol=1e-4)
    np.testing.assert_allclose(image[1].mean(), -0.4 * scale, atol=1e-4)
    np.testing.assert_allclose(image[2][inner], np.hypot(0.01, 0.02), rtol=1e-4)
    np.testing.assert_allclose(image[3], np.hypot(image[0], image[1]), rtol=1e-5)
    # Shear enters as 1/2 (u_y + v_x)^2 under the root.
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    shear = np.stack([0.02 * ys, 0.0 * xs], axis=-1)
    strain = flow_image(shear, FlowImageSpec(size=28, channels=("strain",), normalize="none"))[0]
    np.testing.assert_allclose(strain[inner], np.sqrt(0.5 * 0.02**2), rtol=1e-4)


def test_minmax_normalises_each_channel_of_each_clip():
    image = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4), np.full((4, 4), 3.0, np.float32)])
    out = minmax_per_channel(image)
    assert out[0].min() == 0 and out[0].max() == 1 and np.all(out[1] == 0)
    normalised = flow_image(linear_field(0.01, 0.0, (0.3, 0.1)), FlowImageSpec())
    assert normalised.shape == (3, 28, 28) and normalised.min() >= 0 and normalised.max() <= 1


def test_flow_image_of_frames_with_a_known_motion():
    """The astronaut's face moved by a known smooth field: u, v within 0.05 px, strain within 0.003."""
    face = cv2.resize(data.astronaut()[20:220, 160:360], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    onset = face.astype(np.float32) / 255
    field = linear_field(0.008, 0.004, (0.5, -0.3))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    # First order: content at x moves to x + d(x).
    apex = cv2.remap(onset, xs - field[..., 0], ys - field[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flow = estimate_flows(onset, apex[None], "tvl1_skimage")[0]
    spec = FlowImageSpec(size=28, normalize="none")
    measured, truth = flow_image(flow, spec), flow_image(field, spec)
    inner = (slice(4, -4), slice(4, -4))
    for channel, tolerance in ((0, 0.05 * 28 / SIZE), (1, 0.05 * 28 / SIZE), (2, 0.003)):
        error = np.median(np.abs(measured[channel][inner] - truth[channel][inner]))
        assert error < tolerance, (channel, error)


@pytest.mark.parametrize("settings, match", [({"size": 2}, "size"), ({"channels": ["u", "w"]}, "channels"),
                                             ({"channels": []}, "channels"), ({"normalize": "zscore"}, "normalize")])
def test_bad_flow_image_settings_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        FlowImageSpec.from_config(settings)
    with pytest.raises(ConfigError, match="unknown representation"):
        representation_name({"name": "patches"})


def test_the_cache_holds_one_flow_image_per_clip(tiny_corpus, tmp_path):
    from mer.training.loso import resolve_cache
    from mer.cache import load_cache

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={tmp_path}", "preprocess.workers=1", "representation=flow_image"])
    cache = load_cache(resolve_cache(cfg))
    manifest = json.loads((cache.directory / "manifest.json").read_text())
    assert manifest["representation"] == "flow_image" and manifest["axes"] == ["clip", "channel", "row", "col"]
    assert cache.patches.shape == (9, 3, 28, 28) and np.isfinite(cache.patches).all()
    assert cache.patches.min() >= 0 and cache.patches.max() <= 1
    fold = LOSODataModule(cache.directory, 0, batch_size=4, cache=cache)
    fold.setup()
    assert fold.input_shape == (3, 28, 28) and fold.num_paths == 1 and fold.in_channels == 3
    batch = next(iter(fold.train_dataloader()))
    assert batch["patches"].shape == (4, 3, 28, 28)


def test_a_flow_model_on_roi_patches_is_refused_before_any_work(tmp_path):
    from mer.models import check_model_input

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=ststnet"])
    with pytest.raises(ConfigError, match="representation=flow_image"):
        check_model_input(cfg.model, "roi_patches")
    check_model_input(cfg.model, "flow_image")
