"""Face detection, the clip crop and dlib landmarks, on a real face (skimage's astronaut)."""

import cv2
import numpy as np
import pytest
from skimage import data

from mer.errors import ClipError
from mer.preprocess.face import (
    PREDICTOR_FILE,
    CropBox,
    FaceBox,
    box_in_crop,
    crop_box,
    crop_frames,
    detect_face,
    find_face,
    landmarks,
    predictor_path,
)

CROP = 128


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # (512, 512, 3) uint8, one face around x 179..266, y 83..170


def test_predictor_is_found_in_face_recognition_models_and_overridable(tmp_path):
    path = predictor_path()
    assert path.name == PREDICTOR_FILE and path.is_file()
    assert predictor_path(path) == path
    missing = tmp_path / "nowhere" / PREDICTOR_FILE
    with pytest.raises(FileNotFoundError, match=str(missing)):
        predictor_path(missing)


def test_detects_the_face_with_a_positive_score(astronaut):
    face = detect_face(astronaut)
    assert face is not None and face.score > 0
    centre_x, centre_y = (face.left + face.right) / 2, (face.top + face.bottom) / 2
    assert 200 < centre_x < 245 and 105 < centre_y < 150
    assert detect_face(astronaut.astype(np.float32) / 255) == face  # float input in [0, 1] too


def test_blank_frames_have_no_face_and_the_error_says_so():
    blank = np.full((240, 320, 3), 128, np.uint8)
    assert detect_face(blank) is None
    with pytest.raises(ClipError, match=r"no face detected on the onset frame frame #0 \(.*\) nor on the 2 other"):
        find_face([blank, blank, blank], upsample_retry=1)


def test_the_face_must_be_on_the_onset_frame(astronaut):
    """A black onset is rejected, naming it and the frame that has a face, not cropped from a later frame."""
    blank = np.zeros_like(astronaut)
    assert find_face([astronaut, blank]) == detect_face(astronaut)
    with pytest.raises(ClipError, match="onset frame img1.jpg .*a face is found on img2.jpg"):
        find_face([blank, astronaut], names=["img1.jpg", "img2.jpg"])


def test_small_faces_are_found_by_upsampling(astronaut):
    small = cv2.resize(astronaut, (240, 240), interpolation=cv2.INTER_AREA)  # face ~41 px: too small unaided
    assert detect_face(small) is None
    assert find_face([small], upsample_retry=1) == detect_face(small, upsample=1)


def test_crop_box_is_a_square_with_margin_moved_inside_the_frame():
    face = FaceBox(10, 50, 109, 149, 1.0)  # 100 x 100 near the left border
    box = crop_box(face, (300, 400, 3), margin=0.25)
    assert box == CropBox(0, 25, 150)  # centred at (60, 100) it would start at x = -15
    huge = crop_box(FaceBox(0, 0, 299, 299, 1.0), (300, 400), margin=0.25)
    assert huge.side == 450 and huge.x0 == -25 and huge.y0 == -75  # larger than the frame: centred


def test_crop_frames_resizes_and_pads_by_replicating_the_border():
    frames = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    inside = crop_frames(frames, CropBox(10, 5, 40), 40)
    np.testing.assert_allclose(inside, frames[:, 5:45, 10:50] / 255, atol=1e-6)
    assert inside.dtype == np.float32
    padded = crop_frames(frames, CropBox(-5, -5, 90), 90)  # 5 px before, 25 (rows) / 5 (columns) after
    np.testing.assert_allclose(padded[:, 5:65, 5:85], frames / 255, atol=1e-6)
    np.testing.assert_allclose(padded[:, 65:, 5], np.repeat(frames[:, -1:, 0] / 255, 25, axis=1), atol=1e-6)
    np.testing.assert_allclose(padded[:, :5, 5], np.repeat(frames[:, :1, 0] / 255, 5, axis=1), atol=1e-6)
    resized = crop_frames(frames, CropBox(0, 0, 60), 30)
    assert resized.shape == (2, 30, 30, 3)
    np.testing.assert_allclose(resized[1, 0, 0], frames[1, :2, :2].mean(axis=(0, 1)) / 255, atol=1e-5)


def face_crop_landmarks(image: np.ndarray, face: FaceBox, box: CropBox) -> np.ndarray:
    crop = crop_frames(image[None], box, CROP)[0]
    return landmarks(crop, box_in_crop(face, box, CROP))


def test_landmarks_follow_a_moved_face_within_2_px(astronaut):
    face = detect_face(astronaut)
    box = crop_box(face, astronaut.shape, margin=0.25)
    reference = face_crop_landmarks(astronaut, face, box)
    assert reference.shape == (68, 2) and reference.dtype == np.float32
    assert np.all((reference >= 0) & (reference < CROP))
    # Scale by 4 % about the face centre and shift by (3.4, -2.6) frame pixels: the clip's crop box stays put.
    centre = ((face.left + face.right) / 2, (face.top + face.bottom) / 2)
    motion = cv2.getRotationMatrix2D(centre, 0.0, 1.04)
    motion[:, 2] += (3.4, -2.6)
    moved = cv2.warpAffine(astronaut, motion, astronaut.shape[1::-1], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    found = face_crop_landmarks(moved, face, box)
    # The reference landmarks, taken to frame pixels, moved, and brought back to crop pixels.
    scale = CROP / box.side
    in_frame = (reference + 0.5) / scale - 0.5 + (box.x0, box.y0)
    expected = ((in_frame @ motion[:, :2].T + motion[:, 2]) - (box.x0, box.y0) + 0.5) * scale - 0.5
    errors = np.linalg.norm(found - expected, axis=1)
    assert errors.mean() <= 2.0
    assert np.linalg.norm(found - reference, axis=1).mean() > 1.0  # the motion was large enough to matter
