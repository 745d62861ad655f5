"""The learned stages in the preprocessing pipeline: interpolation=rife, magnification=magnet, motion=magnet, the
paper_synthetic experiment, and missing weights stopping a run. Networks carry self-made (random) weights saved
in the published key format; a slow test runs the published RIFE weights when they are present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mer.data.samples import read_sample_table
from mer.data.frames import index_frames
from mer.preprocess import pipeline
from mer.cache import is_complete, load_cache
from mer.preprocess.clip import check_config, process_clip
from mer.errors import ConfigError
from mer.preprocess.interpolation import get_interpolator
from mer.preprocess.magnification.magnet import MagNet, cached_magnifier, magnet_magnification
from mer.preprocess.magnification import get_magnifier
from mer.preprocess.motion.maps import MotionSpec
from mer.preprocess.interpolation.rife import IFNet, RifeInterpolator, cached_rife, load_rife, rife_interpolation
from mer.preprocess.rois import extract_patches, roi_indices
from mer.preprocess.visualize import save_panel
from mer.synthetic import load_ground_truth
from mer.weights import MAGNET_WEIGHTS_HINT, rife_weights_path
from weights_fixtures import save_state_dict

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_RIFE = Path(os.environ.get("MER_RIFE_WEIGHTS", rife_weights_path(REPO / "weights")))
TWO_ALPHAS = "magnification.alphas=[1.2,2.0]"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random IFNet and MagNet weights in the published key format (``module.`` prefixed)."""
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    return {
        "rife": save_state_dict(IFNet(), directory / "rife" / "flownet.pkl"),
        "magnet": save_state_dict(MagNet(), directory / "magnet_epoch12_loss7.28e-02.pth"),
    }


def compose_preprocess(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("preprocess", overrides=["dataset.generate_if_missing=false", *overrides])


def learned_overrides(weights: dict[str, Path]) -> list[str]:
    """The paper's experiment pointed at the random weights."""
    return ["experiment=paper_synthetic", f"interpolation.weights={weights['rife']}", "interpolation.verify_hash=false",
            f"magnification.weights={weights['magnet']}"]


def clip_config(tiny_corpus: Path, *overrides: str):
    """The resolved config a worker gets (``paths`` resolved away), as an OmegaConf node."""
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", *overrides)
    return OmegaConf.create(pipeline.worker_config(cfg))


@pytest.fixture(scope="module")
def interpolated_clip(tiny_corpus):
    """A tiny-corpus clip whose onset -> apex span is odd, so that N = 2 puts its middle stamp between frames."""
    cfg = clip_config(tiny_corpus)
    samples, _ = read_sample_table(cfg.dataset, on_error="skip")
    odd = samples[(samples["apex"] - samples["onset"]) % 2 == 1]
    sample = odd.iloc[0].to_dict()
    return sample, index_frames(sample["frames_dir"], cfg.dataset.frame_regex)


@pytest.fixture(scope="module")
def paper_result(tiny_corpus, weights, interpolated_clip):
    """The paper's stages (RIFE, MagNet, MagNet's map; 256 crop, 128 map) with N = 2 and two alphas."""
    cfg = clip_config(tiny_corpus, *learned_overrides(weights), "frames=2", TWO_ALPHAS, "preprocess.landmarks_on=onset")
    sample, frame_paths = interpolated_clip
    return cfg, sample, process_clip(sample, frame_paths, cfg)


def test_a_worker_renders_only_the_frame_it_reads_and_caches_the_same_patches(paper_result, interpolated_clip):
    """process_clip(keep_magnified=False), as preprocessing workers call it: MagNet decodes frame N at the test
    alpha only, and the patches and landmarks are those of the clip with every test-alpha frame kept."""
    cfg, sample, full = paper_result
    lean = process_clip(sample, interpolated_clip[1], cfg, keep_magnified=False)
    assert lean.magnified.shape == (1, 256, 256, 3)
    np.testing.assert_allclose(lean.magnified[0], full.magnified[-1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(lean.patches, full.patches, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lean.landmarks, full.landmarks, rtol=0, atol=1e-5)


def test_experiment_composes_the_papers_settings_for_both_commands(weights):
    cfg = compose_preprocess("experiment=paper_synthetic", "paths.weights_dir=/opt/mer-weights")
    worker = pipeline.worker_config(cfg)
    assert set(worker) == {"dataset", "representation", "frames", "rois", "interpolation", "magnification", "motion",
                           "stabilize", "preprocess"}
    assert worker["interpolation"] == {"name": "rife", "weights": "/opt/mer-weights/rife/flownet.pkl",
                                       "verify_hash": True, "tolerance": 0.01, "max_calls": 8, "batch_size": 16,
                                       "device": "cpu"}
    assert worker["magnification"]["name"] == "magnet" and worker["magnification"]["weights"] is None
    assert worker["magnification"]["alphas"] == pytest.approx(np.arange(1.2, 3.01, 0.2).tolist())
    assert worker["magnification"]["test_alpha"] == 2.0
    assert worker["motion"] == {"name": "magnet", "channels": "shape_mean"}
    assert (worker["frames"], worker["dataset"]["name"], worker["rois"]["name"]) == (12, "synthetic", "eyebrow_mouth30")
    assert worker["preprocess"]["face"]["crop_size"] == 256 and worker["preprocess"]["map_size"] == 128
    assert (worker["preprocess"]["span"], worker["preprocess"]["landmarks_on"]) == ("apex", "magnified")
    assert get_interpolator(worker["interpolation"]).func is rife_interpolation
    assert get_magnifier(worker["magnification"]).func is magnet_magnification

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        train = compose("train", overrides=["experiment=paper_synthetic"])
    assert (train.interpolation.name, train.magnification.name, train.motion.name) == ("rife", "magnet", "magnet")
    assert train.preprocess.face.crop_size == 256 and train.experiment_name == "paper_synthetic"


def test_paper_stages_give_patches_from_magnets_map(paper_result):
    cfg, sample, result = paper_result
    assert result.stamps[1] != int(result.stamps[1])  # the middle stamp was interpolated by RIFE
    assert result.patches.shape == (2, 2, 30, 1, 7, 7) and np.isfinite(result.patches).all()
    assert result.onset.shape == (256, 256, 3) and result.magnified.shape == (2, 256, 256, 3)
    assert result.maps.shape == (2, 1, 128, 128)
    # MagNet's map: per-channel min-max normalised, averaged -> within [0, 1], and not constant.
    assert 0.0 <= result.maps.min() and result.maps.max() <= 1.0 and result.maps.std() > 0
    assert 0.0 <= result.magnified.min() and result.magnified.max() <= 1.0
    # The patches are cut from the test alpha's maps (alpha 2.0 = index 1) at the landmarks.
    centres = result.landmarks[roi_indices(cfg.rois).indices]
    np.testing.assert_array_equal(extract_patches(result.maps, centres, 7), result.patches[1])
    assert not np.array_equal(result.patches[0], result.patches[1])


def test_landmarks_are_in_map_pixels_of_the_256_crop(paper_result, tiny_corpus):
    """Landmarks found on the 256 crop and scaled to the 128 map land on the true landmarks."""
    cfg, sample, result = paper_result
    crop_size, map_size = cfg.preprocess.face.crop_size, cfg.preprocess.map_size
    assert (crop_size, map_size) == (256, 128)
    assert ((result.landmarks >= -0.5) & (result.landmarks <= map_size - 0.5)).all()
    in_crop = (result.landmarks + 0.5) * crop_size / map_size - 0.5
    in_frame = (in_crop + 0.5) * result.crop.side / crop_size - 0.5 + np.array([result.crop.x0, result.crop.y0])
    truth = load_ground_truth(tiny_corpus)[f"{sample['subject']}/{sample['clip']}"]["onset_landmarks"]
    assert np.linalg.norm(in_frame - truth, axis=1).mean() <= 2.0


def test_panel_of_a_magnet_clip(paper_result, tmp_path):
    cfg, _, result = paper_result
    path = save_panel(result, cfg, tmp_path / "panel.png", "sub/clip")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(tmp_path.iterdir()) == [path]


def test_rife_stage_returns_recorded_frames_and_bisects_the_rest(weights):
    frames = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    numbers, stamps = np.array([10, 11, 13]), np.array([10.0, 11.0, 12.0, 13.0])
    options = {"weights": str(weights["rife"]), "verify_hash": False, "max_calls": 3}
    out = rife_interpolation(frames, numbers, stamps, **options)
    assert out.shape == (4, 64, 64, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[[0, 1, 3]], frames)
    expected = RifeInterpolator(load_rife(weights["rife"], verify_hash=False), max_calls=3).interpolate(
        torch.from_numpy(frames[1:2]).permute(0, 3, 1, 2), torch.from_numpy(frames[2:3]).permute(0, 3, 1, 2),
        torch.tensor([0.5]))
    np.testing.assert_allclose(out[2], expected[0].permute(1, 2, 0).numpy(), atol=1e-6)
    # The network is loaded once per process and file.
    hits = cached_rife.cache_info().hits
    rife_interpolation(frames, numbers, stamps, **options)
    assert cached_rife.cache_info().hits == hits + 1


def test_magnet_with_an_optical_flow_motion_maps_the_flow_of_its_frames(weights):
    """magnification=magnet, motion=tvl1: the maps are the flow of the magnified frames, resized to map_size."""
    rng = np.random.default_rng(0)
    frames = rng.random((3, 32, 32, 3), dtype=np.float32)
    flow_motion = MotionSpec("tvl1", "magnitude", map_size=16)
    result = magnet_magnification(frames[0], frames[1:], [1.2, 2.0], flow_motion, weights=str(weights["magnet"]))
    assert result.frames.shape == (2, 2, 32, 32, 3) and result.motion_maps.shape == (2, 2, 1, 16, 16)
    np.testing.assert_allclose(result.motion_maps[1, 0],
                               flow_motion.maps(flow_motion.flows(frames[0], result.frames[1, :1]))[0], atol=1e-5)
    own = magnet_magnification(frames[0], frames[1:], [1.2, 2.0], MotionSpec.from_config({"name": "magnet"}, 8),
                               weights=str(weights["magnet"]))
    assert own.motion_maps.shape == (2, 2, 1, 8, 8) and cached_magnifier.cache_info().currsize >= 1


def test_motion_magnet_needs_magnification_magnet(tiny_corpus, tmp_path, weights):
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", f"paths.cache_dir={tmp_path}", "motion=magnet")
    with pytest.raises(ConfigError, match="motion=magnet is the motion representation of magnification=magnet; "
                                          "it does not exist with magnification=lagrangian"):
        pipeline.run_preprocessing(cfg, progress=False)
    assert not any(tmp_path.iterdir())  # stopped before writing anything
    spec = MotionSpec.from_config({"name": "magnet"}, 128)
    assert spec.channels == "shape_mean"
    with pytest.raises(ConfigError, match="only magnification=magnet computes it"):
        spec.flows(np.zeros((8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="unknown motion channels 'magnitude' for motion=magnet"):
        MotionSpec.from_config({"name": "magnet", "channels": "magnitude"}, 128)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["interpolation=rife", "paths.weights_dir=/nonexistent/weights"],
         "RIFE weights not found: /nonexistent/weights/rife/flownet.pkl. Fetch the published HDv3 flownet.pkl with "
         "`python -m mer.weights rife`"),
        (["interpolation=rife", "interpolation.weights=null"], "python -m mer.weights rife"),
        (["magnification=magnet", "motion=magnet"], "no MagNet weights configured. " + MAGNET_WEIGHTS_HINT),
        (["magnification=magnet", "magnification.weights=/nonexistent/magnet.pth"],
         "MagNet weights not found: /nonexistent/magnet.pth. " + MAGNET_WEIGHTS_HINT),
    ],
    ids=["rife-missing-file", "rife-no-path", "magnet-no-path", "magnet-missing-file"],
)
def test_missing_weights_stop_the_run_before_any_clip(tiny_corpus, tmp_path, overrides, message):
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", f"paths.cache_dir={tmp_path}", "preprocess.workers=2",
                             *overrides)
    with pytest.raises(ConfigError) as error:
        pipeline.run_preprocessing(cfg, progress=False)
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())  # no cache directory: no clip ran, none was rejected


def test_a_worker_meeting_a_config_error_fails_instead_of_rejecting_the_clip(tiny_corpus, tmp_path, interpolated_clip):
    """Should a config error reach a worker (weights deleted mid-run), the run stops: no clip is rejected for it."""
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", "magnification=magnet", "motion=magnet")
    sample, _ = interpolated_clip
    with pytest.raises(ConfigError, match="no MagNet weights configured"):
        pipeline._process_one(sample, pipeline.worker_config(cfg), str(tmp_path), "skip")
    assert not any(tmp_path.iterdir())


def test_check_config_loads_the_networks_it_validates(weights, tiny_corpus):
    cached_rife.cache_clear()
    cached_magnifier.cache_clear()
    check_config(clip_config(tiny_corpus, *learned_overrides(weights)))  # passes, and leaves both networks loaded
    assert cached_rife.cache_info().currsize == cached_magnifier.cache_info().currsize == 1
    rife_hits, magnet_hits = cached_rife.cache_info().hits, cached_magnifier.cache_info().hits
    check_config(clip_config(tiny_corpus, *learned_overrides(weights)))
    assert (cached_rife.cache_info().hits, cached_magnifier.cache_info().hits) == (rife_hits + 1, magnet_hits + 1)
    with pytest.raises(ConfigError, match=r"interpolation=rife: RIFE weights .* have sha256"):
        check_config(clip_config(tiny_corpus, *learned_overrides(weights), "interpolation.verify_hash=true"))
    with pytest.raises(ConfigError, match="test_alpha 2.5 is not one of magnification.alphas"):
        check_config(clip_config(tiny_corpus, "magnification.test_alpha=2.5"))
    with pytest.raises(ConfigError, match=r"magnification=magnet: device 'cuda:99' is not available here"):
        check_config(clip_config(tiny_corpus, *learned_overrides(weights), "magnification.device=cuda:99"))
    with pytest.raises(ConfigError, match=r"interpolation=rife: device 'gpu' is not a torch device name"):
        check_config(clip_config(tiny_corpus, *learned_overrides(weights), "interpolation.device=gpu"))


def test_preprocess_command_reports_missing_weights_without_a_traceback(tiny_corpus, tmp_path):
    command = [sys.executable, "preprocess.py", "experiment=paper_synthetic", f"dataset.root={tiny_corpus}",
               f"paths.cache_dir={tmp_path / 'cache'}", f"paths.weights_dir={tmp_path / 'none'}",
               f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: interpolation=rife: RIFE weights not found: {tmp_path / 'none' / 'rife' / 'flownet.pkl'}. Fetch the "
        "published HDv3 flownet.pkl with `python -m mer.weights rife` (add --dest DIR to choose the weights "
        "directory; it is written to DIR/rife/flownet.pkl) or point the config at an existing copy."
    ]
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.skipif(not PUBLISHED_RIFE.is_file(),
                    reason=f"published RIFE weights not at {PUBLISHED_RIFE} (fetch: python -m mer.weights rife; "
                           "or set MER_RIFE_WEIGHTS)")
def test_published_rife_preprocesses_the_tiny_corpus(tiny_corpus, tmp_path):
    """interpolation=rife with the published weights, through spawned workers, on the whole tiny corpus."""
    cfg = compose_preprocess(f"dataset.root={tiny_corpus}", f"paths.cache_dir={tmp_path}", "interpolation=rife",
                             f"interpolation.weights={PUBLISHED_RIFE}", "frames=4", TWO_ALPHAS, "preprocess.workers=2")
    out = pipeline.run_preprocessing(cfg, progress=False)
    cache = load_cache(out)
    assert is_complete(out) and cache.manifest["rejected"] == 0 and cache.manifest["clips"] == 9
    assert cache.patches.shape == (9, 2, 4, 30, 1, 7, 7) and np.isfinite(cache.patches).all()
