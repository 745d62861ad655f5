"""process_clip end to end on a small clip: the astronaut's face with a known motion at the mouth."""

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from skimage import data

from mer.preprocess import clip as clip_module
from mer.preprocess.clip import process_clip
from mer.errors import ClipError
from mer.preprocess.face import crop_frames, detect_face, landmarks
from mer.preprocess.rois import extract_patches, roi_indices

CONF = Path(__file__).resolve().parents[2] / "conf"
ONSET, APEX, OFFSET = 101, 107, 111


def make_cfg(*overrides: str):
    """The shipped defaults (N = 4 and two alphas to stay quick), with dotlist overrides."""
    cfg = OmegaConf.create(
        {
            "frames": 4,
            "rois": OmegaConf.load(CONF / "rois" / "eyebrow_mouth30.yaml"),
            "interpolation": OmegaConf.load(CONF / "interpolation" / "linear.yaml"),
            "magnification": OmegaConf.load(CONF / "magnification" / "lagrangian.yaml"),
            "motion": OmegaConf.load(CONF / "motion" / "tvl1.yaml"),
            "preprocess": OmegaConf.load(CONF / "preprocess" / "default.yaml"),
        }
    )
    cfg.magnification.alphas = [1.2, 2.0]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def write_frames(directory: Path, frames: dict[int, np.ndarray]) -> dict[int, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for number, frame in frames.items():
        paths[number] = directory / f"img{number}.png"
        cv2.imwrite(str(paths[number]), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return paths


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Frames 101..111; the mouth moves down (and a little right) by up to 1.5 px at the apex, then back."""
    image = data.astronaut()
    points = landmarks(image, detect_face(image))
    mouth = points[48:68].mean(axis=0)
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    bump = np.exp(-((xs - mouth[0]) ** 2 + (ys - mouth[1]) ** 2) / (2 * 12.0**2))
    frames = {}
    for number in range(ONSET, OFFSET + 1):
        phase = (number - ONSET) / (APEX - ONSET) if number <= APEX else (OFFSET - number) / (OFFSET - APEX)
        shift = np.float32(1.5 * np.sin(np.pi / 2 * phase)) * bump  # content at x moves to x + shift
        frames[number] = cv2.remap(image, xs - 0.3 * shift, ys - shift, cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)
    directory = tmp_path_factory.mktemp("sub01") / "EP01"
    sample = {"dataset": "toy", "subject": "sub01", "clip": "EP01", "frames_dir": str(directory),
              "onset": ONSET, "apex": APEX, "offset": OFFSET, "aus": "12+25"}
    return sample, write_frames(directory, frames), frames


@pytest.fixture(scope="module")
def result(clip):
    sample, paths, _ = clip
    return process_clip(sample, paths, make_cfg())


def test_patches_have_the_documented_shape_and_are_finite(result):
    assert result.patches.shape == (2, 4, 30, 1, 7, 7)
    assert result.patches.dtype == np.float32 and np.isfinite(result.patches).all()
    assert result.landmarks.shape == (68, 2) and result.landmarks.dtype == np.float32
    assert result.onset.shape == result.magnified[-1].shape == (128, 128, 3)
    assert result.maps.shape == (4, 1, 128, 128)
    np.testing.assert_allclose(result.stamps, [101, 102.5, 104, 105.5, 107])
    assert {"load", "face", "interpolate", "magnify", "landmarks", "patches", "total"} <= set(result.timings)


def test_motion_energy_is_at_the_mouth_not_the_eyebrows(result):
    roi_set = roi_indices(make_cfg().rois)
    energy = np.square(result.patches).mean(axis=(0, 1, 3, 4, 5))  # per ROI
    eyebrows, mouth = energy[: roi_set.region_sizes[0]], energy[roi_set.region_sizes[0] :]
    assert mouth.mean() > 10 * eyebrows.mean()
    # The motion grows from onset to apex.
    per_path = np.square(result.patches[:, :, 10:]).mean(axis=(0, 2, 3, 4, 5))
    assert np.all(np.diff(per_path) > 0)


def test_patches_scale_with_alpha_and_come_from_the_test_alpha_maps(result):
    # Lagrangian maps are (1 + alpha) times the flow's.
    np.testing.assert_allclose(result.patches[1], result.patches[0] * (3.0 / 2.2), rtol=1e-5, atol=1e-6)
    centres = result.landmarks[roi_indices(make_cfg().rois).indices]
    np.testing.assert_array_equal(extract_patches(result.maps, centres, 7), result.patches[1])  # alpha 2.0


def test_landmarks_are_in_map_pixels_on_the_face(result):
    assert np.all((result.landmarks >= 0) & (result.landmarks < 128))
    mouth, brows = result.landmarks[48:68].mean(axis=0), result.landmarks[17:27].mean(axis=0)
    assert mouth[1] > brows[1] + 30  # the mouth is well below the eyebrows
    # The motion map peaks near the mouth's landmarks.
    peak_y, peak_x = np.unravel_index(np.argmax(result.maps[-1, 0]), (128, 128))
    assert np.hypot(peak_x - mouth[0], peak_y - mouth[1]) < 15


def test_map_size_rescales_landmarks_and_flow(clip, result):
    sample, paths, _ = clip
    half = process_clip(sample, paths, make_cfg("preprocess.map_size=64"))
    assert half.patches.shape == (2, 4, 30, 1, 7, 7) and half.maps.shape == (4, 1, 64, 64)
    np.testing.assert_allclose(half.landmarks, (result.landmarks + 0.5) / 2 - 0.5, atol=1e-5)
    assert half.maps.max() == pytest.approx(result.maps.max() / 2, rel=0.25)


def test_uv_strain_channels_and_magnified_landmarks(clip, result):
    sample, paths, _ = clip
    other = process_clip(sample, paths, make_cfg("motion.channels=uv_strain", "preprocess.landmarks_on=magnified"))
    assert other.patches.shape == (2, 4, 30, 3, 7, 7) and np.isfinite(other.patches).all()
    assert np.linalg.norm(other.landmarks - result.landmarks, axis=1).mean() < 3.0
    # Channel 1 is v: the mouth moves down, so v is positive there.
    assert other.patches[1, -1, 10:, 1].mean() > 0.1


def test_span_offset_and_flow_warp_interpolation(clip):
    sample, paths, _ = clip
    other = process_clip(sample, paths, make_cfg("preprocess.span=offset", "interpolation.name=flow_warp",
                                                 "+interpolation.flow=dis"))
    np.testing.assert_allclose(other.stamps, [101, 103.5, 106, 108.5, 111])
    assert np.isfinite(other.patches).all()


def test_tim_is_given_every_frame_from_onset_to_apex(clip, monkeypatch):
    sample, paths, _ = clip
    loaded = []
    load_frames = clip_module.load_frames

    def recording_load_frames(frame_paths, numbers):
        loaded.append(list(numbers))
        return load_frames(frame_paths, numbers)

    monkeypatch.setattr(clip_module, "load_frames", recording_load_frames)
    # N = 2: the stamps 101, 104, 107 fall on recorded frames, whose neighbours alone would be those three.
    linear = process_clip(sample, paths, make_cfg("frames=2"))
    tim = process_clip(sample, paths, make_cfg("frames=2", "interpolation.name=tim", "+interpolation.components=null"))
    assert loaded == [[101, 104, 107], list(range(ONSET, APEX + 1))]
    np.testing.assert_allclose(tim.stamps, [101, 104, 107])
    # On recorded stamps TIM returns the recorded frames, so everything downstream agrees.
    np.testing.assert_allclose(tim.onset, linear.onset, atol=1e-5)
    np.testing.assert_allclose(tim.maps, linear.maps, atol=0.01 * linear.maps.max())


def test_eulerian_magnification_end_to_end(clip, result):
    sample, paths, _ = clip
    other = process_clip(sample, paths, make_cfg("magnification.name=eulerian", "+magnification.cutoff_wavelength=16"))
    assert other.patches.shape == (2, 4, 30, 1, 7, 7) and np.isfinite(other.patches).all()
    mouth = np.square(other.patches[:, :, 10:]).mean(axis=(1, 2, 3, 4, 5))  # per alpha
    assert mouth[1] > mouth[0]  # alpha 2.0 moves the mouth more than alpha 1.2
    assert mouth.mean() > 10 * np.square(other.patches[:, :, :10]).mean()


def test_missing_frame_rejects_the_clip_naming_it(clip):
    sample, paths, _ = clip
    gapped = {number: path for number, path in paths.items() if number != 104}
    with pytest.raises(ClipError, match=r"toy/sub01/EP01: missing frame\(s\) 104 of onset..apex 101..107"):
        process_clip(sample, gapped, make_cfg())
    allowed = process_clip(sample, gapped, make_cfg("preprocess.allow_frame_gaps=true"))
    assert allowed.patches.shape == (2, 4, 30, 1, 7, 7)
    with pytest.raises(ClipError, match="missing frame"):
        no_apex = {number: path for number, path in paths.items() if number != APEX}
        process_clip(sample, no_apex, make_cfg("preprocess.allow_frame_gaps=true"))


def test_unreadable_frame_and_bad_annotations_reject_the_clip(clip, tmp_path):
    sample, paths, _ = clip
    broken = tmp_path / "img105.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ClipError, match="cannot read frame 105: .* not an image"):
        process_clip(sample, {**paths, 105: broken}, make_cfg())
    with pytest.raises(ClipError, match="apex frame 100 comes before onset frame 101"):
        process_clip({**sample, "apex": 100}, paths, make_cfg())
    with pytest.raises(ClipError, match="apex frame '/' is not a frame number"):
        process_clip({**sample, "apex": "/"}, paths, make_cfg())


def test_blank_clip_is_rejected_for_no_face(tmp_path):
    frames = {number: np.full((120, 160, 3), 90, np.uint8) for number in range(1, 6)}
    sample = {"dataset": "toy", "subject": "sub02", "clip": "blank", "onset": 1, "apex": 3, "offset": 5}
    with pytest.raises(ClipError, match="toy/sub02/blank: no face detected"):
        process_clip(sample, write_frames(tmp_path, frames), make_cfg())


def test_no_magnification_gives_one_alpha(clip):
    sample, paths, frames = clip
    other = process_clip(sample, paths, make_cfg("magnification.name=none", "magnification.alphas=[1.0]",
                                                 "magnification.test_alpha=1.0"))
    assert other.patches.shape == (1, 4, 30, 1, 7, 7)
    np.testing.assert_array_equal(other.magnified[-1], crop_frames(frames[APEX][None], other.crop, 128)[0])


def test_clip_error_keeps_reason_and_clip_across_processes():
    error = pickle.loads(pickle.dumps(ClipError("no face detected", "toy/sub01/EP01")))
    assert (error.reason, error.clip, str(error)) == ("no face detected", "toy/sub01/EP01",
                                                      "toy/sub01/EP01: no face detected")


def test_test_alpha_must_be_one_of_the_alphas(clip):
    sample, paths, _ = clip
    with pytest.raises(ValueError, match="test_alpha 2.5 is not one of"):
        process_clip(sample, paths, make_cfg("magnification.test_alpha=2.5"))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_frame_rejects_the_clip_naming_the_file(clip, tmp_path, suffix):
    """A decoder fills a cut-off image with grey rows and only warns: the clip is rejected instead."""
    sample, paths, frames = clip
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(frames[105], cv2.COLOR_RGB2BGR))
    assert ok
    whole = tmp_path / f"whole{suffix}"
    whole.write_bytes(encoded.tobytes())
    np.testing.assert_array_equal(clip_module.read_frame(whole), cv2.cvtColor(cv2.imread(str(whole)), cv2.COLOR_BGR2RGB))
    cut = tmp_path / f"img105{suffix}"
    cut.write_bytes(encoded.tobytes()[: len(encoded) * 2 // 3])
    assert cv2.imread(str(cut)) is not None or suffix == ".png"  # OpenCV itself may well decode it
    with pytest.raises(ClipError, match=rf"cannot read frame 105: {cut}: truncated (JPEG|PNG)"):
        process_clip(sample, {**paths, 105: cut}, make_cfg())


def test_incomplete_image_reads_the_container():
    assert clip_module.incomplete_image(b"") == "the file is empty"
    assert clip_module.incomplete_image(b"\xff\xd8 data \xff\xd9\x00\x00") is None  # padding after the marker
    assert "JPEG" in clip_module.incomplete_image(b"\xff\xd8 data")
    bmp = b"BM" + (100).to_bytes(4, "little") + bytes(20)
    assert "26 of 100 bytes" in clip_module.incomplete_image(bmp)


def test_a_black_frame_in_the_span_rejects_the_clip(clip, tmp_path):
    sample, paths, frames = clip
    black = write_frames(tmp_path, {APEX: np.zeros_like(frames[APEX])})[APEX]
    with pytest.raises(ClipError, match=r"frame img107.png differs from the onset img101.png by \d+ grey levels"):
        process_clip(sample, {**paths, APEX: black}, make_cfg())


def test_a_black_onset_is_rejected_not_cropped_from_a_later_frame(clip, tmp_path):
    sample, paths, frames = clip
    black = write_frames(tmp_path, {ONSET: np.zeros_like(frames[ONSET])})[ONSET]
    with pytest.raises(ClipError, match="no face detected on the onset frame img101.png .*a face is found on img10"):
        process_clip(sample, {**paths, ONSET: black}, make_cfg())
