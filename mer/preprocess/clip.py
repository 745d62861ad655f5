"""One clip through every preprocessing stage: frames -> face crop -> N + 1 frames -> magnified motion maps ->
landmarks -> ROI patches (docs/design.md §1.2-§1.6)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mer.preprocess.errors import ClipError, ConfigError
from mer.preprocess.face import CropBox, FaceBox, box_in_crop, crop_box, crop_frames, find_face, landmarks
from mer.preprocess.interpolate import (
    WHOLE_SEGMENT,
    Interpolator,
    frames_needed,
    get_interpolator,
    time_stamps,
    validate_interpolation,
)
from mer.preprocess.magnify import Magnifier, get_magnifier, validate_magnification
from mer.preprocess.motion import MotionSpec
from mer.preprocess.rois import RoiSet, extract_patches, roi_indices


@dataclass
class ClipResult:
    """What preprocessing keeps of one clip.

    Attributes:
        patches: ``(A, N, R, C, P, P)`` float32: per alpha, path, ROI and map channel, a ``P x P`` patch.
        landmarks: ``(68, 2)`` float32 ``(x, y)`` in motion-map pixels (the ROI centres are
            ``landmarks[roi_indices(cfg.rois).indices]``).
        timings: Stage name -> seconds (``load``, ``face``, ``interpolate``, ``magnify``, ``landmarks``,
            ``patches``, ``total``).
        onset: ``(S, S, 3)`` float32 onset face crop (S = ``preprocess.face.crop_size``).
        magnified: ``(N, S, S, 3)`` float32 frames 1..N magnified at the test alpha.
        maps: ``(N, C, M, M)`` float32 motion maps at the test alpha (M = ``preprocess.map_size``).
        stamps: ``(N + 1,)`` the time stamps (frame numbers, fractional where interpolated).
        face: The detection the crop was built from, in frame pixels.
        crop: The crop square, in frame pixels.
    """

    patches: np.ndarray
    landmarks: np.ndarray
    timings: dict[str, float]
    onset: np.ndarray
    magnified: np.ndarray
    maps: np.ndarray
    stamps: np.ndarray
    face: FaceBox
    crop: CropBox

    @property
    def magnified_last(self) -> np.ndarray:
        """``(S, S, 3)`` frame N magnified at the test alpha."""
        return self.magnified[-1]


def clip_id(sample: Mapping[str, Any]) -> str:
    """``dataset/subject/clip``, the name errors give a clip."""
    return "/".join(str(sample.get(key, "?")) for key in ("dataset", "subject", "clip"))


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _frame_number(sample: Mapping[str, Any], key: str) -> int:
    value = sample[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number != int(number):
        raise ClipError(f"{key} frame {value!r} is not a frame number")
    return int(number)


def select_frames(
    sample: Mapping[str, Any],
    available: np.ndarray,
    n: int,
    span: str,
    allow_gaps: bool,
    whole_segment: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The time stamps of a clip and the recorded frames they need.

    Args:
        sample: With ``onset`` and ``apex`` / ``offset``.
        available: Sorted recorded frame numbers.
        n: N, the paths.
        span: ``"apex"`` or ``"offset"``, where the stamps end.
        allow_gaps: Accept missing frame numbers between onset and end (SMIC's numbering has gaps); when
            false a missing frame rejects the clip.
        whole_segment: Load every recorded frame from onset to end (an interpolator that models the whole
            segment, such as TIM), not only the neighbours of the stamps.

    Returns:
        ``stamps`` ``(n + 1,)`` and the frame numbers to load (onset first, then ascending).

    Raises:
        ClipError: An end before the onset, or a missing frame.
    """
    if span not in ("apex", "offset"):
        raise ValueError(f"preprocess.span must be 'apex' or 'offset', got {span!r}")
    onset, end = _frame_number(sample, "onset"), _frame_number(sample, span)
    if end < onset:
        raise ClipError(f"{span} frame {end} comes before onset frame {onset}")
    wanted = np.arange(onset, end + 1) if not allow_gaps else np.array([onset, end])
    missing = np.setdiff1d(wanted, available)
    if missing.size:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if missing.size > 10 else "")
        raise ClipError(f"missing frame(s) {shown} of onset..{span} {onset}..{end} in {sample.get('frames_dir')}")
    stamps = time_stamps(onset, end, n)
    return stamps, frames_needed(available, stamps, whole_segment)


def load_frames(frame_paths: Mapping[int, Path], numbers: np.ndarray) -> np.ndarray:
    """Read frames as RGB.

    Args:
        frame_paths: Frame number -> image file.
        numbers: The frame numbers to read.

    Returns:
        ``(T, H, W, 3)`` uint8.

    Raises:
        ClipError: A file that cannot be read, or frames of different sizes.
    """
    frames = []
    for number in numbers:
        path = frame_paths[int(number)]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ClipError(f"cannot read frame {number}: {path}")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise ClipError(f"frames differ in size: {sorted(shapes)}")
    return np.stack(frames)


def _test_alpha_index(magnification_cfg: Mapping[str, Any]) -> int:
    alphas = np.asarray(magnification_cfg["alphas"], dtype=np.float64)
    matches = np.flatnonzero(np.isclose(alphas, float(magnification_cfg["test_alpha"])))
    if not matches.size:
        raise ValueError(
            f"magnification.test_alpha {magnification_cfg['test_alpha']} is not one of magnification.alphas "
            f"{alphas.tolist()}"
        )
    return int(matches[0])


@dataclass(frozen=True)
class _Stages:
    """What a config makes of the stages: the same for every clip."""

    alphas: list[float]
    test_index: int
    landmarks_on: str
    crop_size: int
    motion: MotionSpec
    rois: RoiSet
    interpolate: Interpolator
    whole_segment: bool
    magnify: Magnifier


def _stages(cfg: Mapping[str, Any]) -> _Stages:
    """Read the stages from the config, checking what can be checked without a clip.

    Raises:
        ConfigError: An unknown stage, an invalid setting, or stages that do not go together.
    """
    try:
        settings, face_cfg = cfg["preprocess"], cfg["preprocess"]["face"]
        landmarks_on = settings.get("landmarks_on", "onset")
        if landmarks_on not in ("onset", "magnified"):
            raise ValueError(f"preprocess.landmarks_on must be 'onset' or 'magnified', got {landmarks_on!r}")
        crop_size = int(face_cfg.get("crop_size", 128))
        motion = MotionSpec.from_config(cfg["motion"], settings.get("map_size", crop_size))
        motion.check_magnification(cfg["magnification"]["name"])
        return _Stages(
            alphas=[float(a) for a in cfg["magnification"]["alphas"]],
            test_index=_test_alpha_index(cfg["magnification"]),
            landmarks_on=landmarks_on,
            crop_size=crop_size,
            motion=motion,
            rois=roi_indices(cfg["rois"]),
            interpolate=get_interpolator(cfg["interpolation"]),  # registers it first if it lives in its own module
            whole_segment=cfg["interpolation"]["name"] in WHOLE_SEGMENT,
            magnify=get_magnifier(cfg["magnification"]),
        )
    except ConfigError:
        raise
    except (ValueError, KeyError) as error:
        raise ConfigError(f"invalid preprocessing config: {error}") from error


def check_config(cfg: Mapping[str, Any]) -> None:
    """Fail on a config that no clip can run with, before any clip runs.

    Checks the settings :func:`process_clip` reads, that the motion goes with the magnification
    (``motion=magnet`` needs ``magnification=magnet``), and runs the stages' ``validate`` hooks, which load
    learned networks (once per process: the same process then reuses them for its clips).

    Args:
        cfg: As for :func:`process_clip`.

    Raises:
        ConfigError: What is wrong and how to fix it (e.g. missing weights: the file and the command or config
            key that provides them).
    """
    _stages(cfg)
    validate_interpolation(cfg["interpolation"])
    validate_magnification(cfg["magnification"])


def process_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any]) -> ClipResult:
    """Preprocess one clip.

    Args:
        sample: A row of the sample table: ``dataset``, ``subject``, ``clip``, ``frames_dir``, ``onset``,
            ``apex``, ``offset``, ... (frame numbers).
        frame_paths: The clip's recorded frames, frame number -> image file.
        cfg: The resolved preprocess config: ``frames`` (N), ``rois``, ``interpolation``, ``magnification``,
            ``motion`` and ``preprocess`` (``span``, ``face``, ``map_size``, optional ``landmarks_on``:
            ``onset`` (default) | ``magnified``, optional ``allow_frame_gaps``).

    Returns:
        The :class:`ClipResult`.

    Raises:
        ClipError: The clip cannot be processed (missing or unreadable frame, no face, ...), naming the clip.
        ConfigError: An invalid config (:func:`check_config` finds it before any clip).
    """
    try:
        return _process_clip(sample, frame_paths, cfg)
    except ClipError as error:
        raise error.with_clip(clip_id(sample)) from None


def _process_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any]) -> ClipResult:
    settings, face_cfg = cfg["preprocess"], cfg["preprocess"]["face"]
    stages = _stages(cfg)
    crop_size, motion = stages.crop_size, stages.motion
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with _timed(timings, "load"):
        available = np.array(sorted(int(n) for n in frame_paths), dtype=np.int64)
        stamps, numbers = select_frames(
            sample, available, int(cfg["frames"]), settings.get("span", "apex"),
            bool(settings.get("allow_frame_gaps", False)), stages.whole_segment,
        )
        frames = load_frames(frame_paths, numbers)

    with _timed(timings, "face"):
        # The loaded frames are ascending from the onset, so the onset is searched first.
        face = find_face(list(frames), int(face_cfg.get("upsample_retry", 1)), float(face_cfg.get("min_score", 0.0)))
        box = crop_box(face, frames.shape[1:], float(face_cfg.get("margin", 0.25)))
        crops = crop_frames(frames, box, crop_size)

    with _timed(timings, "interpolate"):
        selected = stages.interpolate(crops, numbers, stamps)  # (N + 1, S, S, 3), frame 0 = the onset crop

    with _timed(timings, "magnify"):
        magnified = stages.magnify(selected[0], selected[1:], stages.alphas, motion)

    with _timed(timings, "landmarks"):
        landmark_image = selected[0] if stages.landmarks_on == "onset" else magnified.frames[stages.test_index, -1]
        points = landmarks(landmark_image, box_in_crop(face, box, crop_size), face_cfg.get("predictor"))
        # Pixel centres map onto pixel centres: crop pixel i covers [i, i + 1) of the crop. (MagNet's stride-2
        # encoder centres its map pixel j on crop pixel 2j rather than 2j + 0.5: a quarter of a map pixel, less
        # than the rounding of patch centres to whole map pixels.)
        points = (points + 0.5) * np.float32(motion.map_size / crop_size) - 0.5

    with _timed(timings, "patches"):
        patches = extract_patches(
            magnified.motion_maps, points[stages.rois.indices], int(cfg["rois"].get("patch_size", 7))
        )
        patches = np.ascontiguousarray(patches, dtype=np.float32)

    timings["total"] = time.perf_counter() - start
    return ClipResult(
        patches=patches,
        landmarks=points.astype(np.float32),
        timings=timings,
        onset=selected[0].copy(),
        magnified=np.array(magnified.frames[stages.test_index]),
        maps=np.array(magnified.motion_maps[stages.test_index]),
        stamps=stamps,
        face=face,
        crop=box,
    )
