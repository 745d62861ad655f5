"""Frames of a clip on disk: found by number, and the apex found by motion where a sheet has none."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def index_frames(frames_dir: str | Path, frame_regex: str) -> dict[int, Path]:
    """Map frame number -> file for the frames of one clip.

    Args:
        frames_dir: the clip's folder.
        frame_regex: pattern that a frame's file name must match in full; group 1 is the frame number.

    Returns:
        Frame number -> path, sorted by frame number. Files that do not match are ignored.

    Raises:
        FileNotFoundError: ``frames_dir`` is not a folder.
        ValueError: two files carry the same frame number (e.g. ``img046.jpg`` and ``img46.jpg``).
    """
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"frames folder {frames_dir} does not exist")
    pattern = re.compile(frame_regex)
    frames: dict[int, Path] = {}
    for path in frames_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in frames:
            raise ValueError(f"{frames_dir}: frame {number} appears twice ({frames[number].name}, {path.name})")
        frames[number] = path
    return dict(sorted(frames.items()))


def parse_frame_number(text: str) -> int | None:
    """A frame number from a sheet cell (``"46"``, ``"46.0"``), or None if it is not one (``"/"``, ``""``, ``-1``)."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not np.isfinite(value) or value != int(value) or value < 0:
        return None
    return int(value)


def estimate_apex_by_flow(frames: Mapping[int, Path], onset: int, offset: int, size: int = 112) -> int:
    """The frame in [onset, offset] that moved most from the onset frame, by DIS optical flow.

    Frames are read in grayscale and shrunk so that the longer side is ``size`` pixels. The flow from onset to each
    frame has its best-fitting affine motion (head translation and rotation, which grows with time and would
    otherwise pull the answer towards the offset) removed; the frame with the largest mean remaining magnitude
    wins.

    Args:
        frames: frame number -> file (:func:`index_frames`), covering [onset, offset].
        onset, offset: the clip's span (frame numbers).
        size: longer side of the frames the flow is computed on, pixels.

    Returns:
        The estimated apex frame number.
    """
    import cv2

    def load(number: int) -> np.ndarray:
        image = cv2.imread(str(frames[number]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise OSError(f"cannot read frame {frames[number]}")
        return image

    numbers = [number for number in frames if onset < number <= offset]  # recorded frames only (SMIC has gaps)
    if not numbers:
        return onset
    return numbers[most_moving_frame(load(onset), (load(number) for number in numbers), size)]


def most_moving_frame(reference: np.ndarray, images: Iterable[np.ndarray], size: int = 112) -> int:
    """The index of the image (in ``images``) that moved most from ``reference``, by DIS optical flow.

    The images are shrunk so that the longer side is ``size`` pixels; each flow from the reference has its
    best-fitting affine motion removed (see :func:`estimate_apex_by_flow`); the largest mean residual magnitude wins.

    Args:
        reference: ``(H, W)`` uint8 grey image (the onset).
        images: ``(H, W)`` uint8 grey images, read one at a time.
        size: Longer side of the images the flow is computed on, pixels.
    """
    import cv2

    def shrink(image: np.ndarray) -> np.ndarray:
        scale = size / max(image.shape)
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    reference = shrink(reference)
    height, width = reference.shape
    ys, xs = np.mgrid[0:height, 0:width]
    affine_basis = np.stack([np.ones(xs.size), xs.ravel(), ys.ravel()], axis=1)  # (H*W, 3)
    affine_fit = np.linalg.pinv(affine_basis)  # (3, H*W): least-squares affine coefficients of a flow field
    magnitudes = []
    for image in images:
        vectors = flow.calc(reference, shrink(image), None).reshape(-1, 2)  # (H*W, 2)
        residual = vectors - affine_basis @ (affine_fit @ vectors)
        magnitudes.append(np.linalg.norm(residual, axis=1).mean())
    return int(np.argmax(magnitudes))
