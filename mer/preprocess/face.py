"""Face detection, the clip's face crop, and 68-point landmarks (dlib).

The detector is dlib's HOG frontal-face detector; the landmark model is ``shape_predictor_68_face_landmarks.dat``
from the ``face-recognition-models`` package unless ``preprocess.face.predictor`` names another file. Both
are loaded once per process.

One square crop box serves the whole clip, so that the face does not jitter between frames: motion inside
the crop is facial motion only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import dlib
import numpy as np

from mer.errors import ClipError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


class FaceBox(NamedTuple):
    """A detection in image pixels: dlib's inclusive corners and its detector score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float


class CropBox(NamedTuple):
    """A square region of the frame, in pixels; it may reach outside the frame (then padded)."""

    x0: int
    y0: int
    side: int


def predictor_path(configured: str | Path | None = None) -> Path:
    """The 68-point landmark model file.

    Args:
        configured: ``preprocess.face.predictor``; ``None`` locates the file inside ``face-recognition-models``.

    Raises:
        FileNotFoundError: The file (or the package) is missing; the message names what was looked for.
    """
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"landmark model {path} (preprocess.face.predictor) does not exist")
        return path
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"cannot find {PREDICTOR_FILE}: the face-recognition-models package is not installed; install it "
            "or set preprocess.face.predictor to the file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"landmark model {path} is missing from face-recognition-models")
    return path


@lru_cache(maxsize=1)
def _detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=2)
def _predictor(path: str) -> dlib.shape_predictor:
    return dlib.shape_predictor(path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image as contiguous uint8, from float in [0, 1] or uint8."""
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def detect_face(image: np.ndarray, upsample: int = 0, min_score: float = 0.0) -> FaceBox | None:
    """The highest-scoring frontal face in an image.

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` gray, uint8 or float in [0, 1].
        upsample: Times dlib upsamples the image first (finds smaller faces, ~4x slower each).
        min_score: Detections scoring below this are ignored (dlib's own threshold is 0).

    Returns:
        The best detection, or ``None``.
    """
    boxes, scores, _ = _detector().run(to_uint8(image), upsample, min_score)
    if not boxes:
        return None
    best = int(np.argmax(scores))
    box = boxes[best]
    return FaceBox(box.left(), box.top(), box.right(), box.bottom(), float(scores[best]))


def find_face(
    frames: Sequence[np.ndarray], upsample_retry: int = 1, min_score: float = 0.0, names: Sequence[str] | None = None
) -> FaceBox:
    """The face of a clip, detected on its onset frame.

    The crop of the whole clip is cut around this box, so it must come from the onset: a box found on a later
    frame when the onset is black, noise or another picture would make every motion map measure that difference.

    Args:
        frames: ``(H, W, 3)`` images, the onset frame first.
        upsample_retry: Upsampling levels (1..upsample_retry) to retry the onset with when no face is found.
        min_score: See :func:`detect_face`.
        names: How error messages name each frame (e.g. its file); default ``frame #i``.

    Raises:
        ClipError: No face on the onset frame at any level; the message says whether another frame has one.
    """
    names = list(names) if names is not None else [f"frame #{i}" for i in range(len(frames))]
    for upsample in range(upsample_retry + 1):
        face = detect_face(frames[0], upsample, min_score)
        if face is not None:
            return face
    elsewhere = next((name for frame, name in zip(frames[1:], names[1:]) if detect_face(frame, 0, min_score)), None)
    hint = (f"; a face is found on {elsewhere}: check the onset frame number and that the onset image is intact"
            if elsewhere else f" nor on the {len(frames) - 1} other frames loaded")
    raise ClipError(
        f"no face detected on the onset frame {names[0]} (upsampling up to {upsample_retry}, minimum score "
        f"{min_score}){hint}"
    )


def crop_box(face: FaceBox, image_shape: tuple[int, ...], margin: float) -> CropBox:
    """A square around the face with a margin, moved inside the frame where it fits.

    Args:
        face: The detection.
        image_shape: ``(H, W, ...)`` of the frame.
        margin: Added on each side, as a fraction of the box's longer side: the square's side is
            ``(1 + 2 margin) * max(width, height)``.

    Returns:
        The square; it reaches outside the frame only when it is larger than the frame.
    """
    height, width = image_shape[:2]
    box_side = max(face.right - face.left + 1, face.bottom - face.top + 1)
    side = int(round(box_side * (1 + 2 * margin)))
    centre_x, centre_y = (face.left + face.right + 1) / 2, (face.top + face.bottom + 1) / 2
    x0, y0 = int(round(centre_x - side / 2)), int(round(centre_y - side / 2))
    # Shift inward rather than pad where the square fits; centre it where it does not.
    x0 = min(max(x0, 0), width - side) if side <= width else (width - side) // 2
    y0 = min(max(y0, 0), height - side) if side <= height else (height - side) // 2
    return CropBox(x0, y0, side)


def crop_frames(frames: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Cut the same square from every frame and resize it.

    Resizing happens in float, so that sub-pixel motion is not lost to rounding.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        box: The square; parts outside the frame are filled by replicating the border.
        size: Output side.

    Returns:
        ``(T, size, size, 3)`` float32 in [0, 1].
    """
    height, width = frames.shape[1:3]
    pad_before_y, pad_before_x = max(0, -box.y0), max(0, -box.x0)
    pad_after_y, pad_after_x = max(0, box.y0 + box.side - height), max(0, box.x0 + box.side - width)
    region = frames[
        :,
        max(box.y0, 0) : min(box.y0 + box.side, height),
        max(box.x0, 0) : min(box.x0 + box.side, width),
    ]
    if pad_before_y or pad_before_x or pad_after_y or pad_after_x:
        region = np.pad(region, ((0, 0), (pad_before_y, pad_after_y), (pad_before_x, pad_after_x), (0, 0)), "edge")
    region = region.astype(np.float32) * np.float32(1 / 255)
    if box.side == size:
        return np.ascontiguousarray(region)
    interpolation = cv2.INTER_AREA if size < box.side else cv2.INTER_LINEAR
    # One call per frame: OpenCV's area interpolation takes at most 4 channels.
    return np.stack([cv2.resize(frame, (size, size), interpolation=interpolation) for frame in region])


def box_in_crop(face: FaceBox, box: CropBox, size: int) -> FaceBox:
    """The detection in the coordinates of the resized crop."""
    scale = size / box.side
    return FaceBox(
        int(round((face.left - box.x0) * scale)),
        int(round((face.top - box.y0) * scale)),
        int(round((face.right + 1 - box.x0) * scale)) - 1,
        int(round((face.bottom + 1 - box.y0) * scale)) - 1,
        face.score,
    )


def landmarks(image: np.ndarray, face: FaceBox, predictor: str | Path | None = None) -> np.ndarray:
    """dlib's 68 landmarks of the face in ``face``'s box.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        face: The face's box in this image's coordinates.
        predictor: The model file; ``None`` = the one from face-recognition-models.

    Returns:
        ``(68, 2)`` float32 ``(x, y)`` pixel positions (dlib returns whole pixels).
    """
    model = _predictor(str(predictor_path(predictor)))
    shape = model(to_uint8(image), dlib.rectangle(face.left, face.top, face.right, face.bottom))
    return np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float32)
