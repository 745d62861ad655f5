"""One clip through every preprocessing stage: frames -> face crop -> N + 1 frames -> magnified motion maps ->
landmarks -> ROI patches (docs/design.md §1.2-§1.6)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mer.cache import alpha_index
from mer.errors import ClipError, ConfigError
from mer.preprocess.face import CropBox, FaceBox, box_in_crop, crop_box, crop_frames, find_face, landmarks
from mer.preprocess.interpolation import (
    Interpolator,
    frames_needed,
    get_interpolator,
    reads_whole_segment,
    time_stamps,
    validate_interpolation,
)
from mer.preprocess.magnification import Magnifier, get_magnifier, validate_magnification
from mer.preprocess.motion.maps import MotionSpec
from mer.preprocess.representation import representation_name
from mer.preprocess.representation.flow_image import FlowImageSpec, flow_image
from mer.preprocess.rois import RoiSet, extract_patches, roi_indices
from mer.preprocess.stabilize import Stabilization, register_frames


@dataclass
class ClipResult:
    """What preprocessing keeps of one clip.

    Attributes:
        patches: The model input. ROI patches: ``(A, N, R, C, P, P)`` float32, per alpha, path, ROI and map
            channel a ``P x P`` patch. Flow image (``representation=flow_image``): ``(C, s, s)``.
        landmarks: ``(68, 2)`` float32 ``(x, y)`` in motion-map (or flow-image) pixels (the ROI centres are
            ``landmarks[roi_indices(cfg.rois).indices]``).
        timings: Stage name -> seconds (``load``, ``face``, ``stabilize``, ``interpolate``, ``magnify``,
            ``landmarks``, ``patches`` or ``flow``, ``total``).
        onset: ``(S, S, 3)`` float32 onset face crop (S = ``preprocess.face.crop_size``).
        magnified: ``(N, S, S, 3)`` float32 frames 1..N magnified at the test alpha (flow image: the apex crop;
            ``process_clip(keep_magnified=False)``: frame N only, ``(1, S, S, 3)``).
        maps: ``(N, C, M, M)`` float32 motion maps at the test alpha (M = ``preprocess.map_size``; flow image: the
            image itself, ``(1, C, s, s)``).
        stamps: ``(N + 1,)`` the time stamps (frame numbers, fractional where interpolated).
        face: The detection the crop was built from, in frame pixels.
        crop: The crop square, in frame pixels.
        transforms: ``(T, 2, 3)`` the registration of each loaded frame to the onset, in crop pixels
            (identities when ``stabilize.register=none``; see :func:`mer.preprocess.stabilize.fit_transforms`).
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
    transforms: np.ndarray | None = None


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


#: The last bytes of a complete PNG: the IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def incomplete_image(data: bytes) -> str | None:
    """Why an image file's bytes are not a whole image, or ``None`` when they look complete.

    Decoders fill a truncated JPEG with grey rows and only warn on stderr, so truncation is found here, from the
    container: a JPEG must end with its end-of-image marker (trailing padding allowed), a PNG with its IEND chunk,
    a BMP must be as long as its header says.

    Args:
        data: The file's contents.
    """
    if not data:
        return "the file is empty"
    if data[:2] == b"\xff\xd8":
        return None if data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9") else "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return None if data.endswith(_PNG_END) else "truncated PNG (no IEND chunk)"
    if data[:2] == b"BM" and len(data) >= 6:
        size = int.from_bytes(data[2:6], "little")
        return None if len(data) >= size else f"truncated BMP ({len(data)} of {size} bytes)"
    return None


def read_frame(path: Path, number: int | None = None) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB (``number``, its frame number, names it in errors).

    Raises:
        ClipError: The file cannot be read, is incomplete (see :func:`incomplete_image`) or cannot be decoded;
            the message names it.
    """
    label = f"frame {number}" if number is not None else "frame"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ClipError(f"cannot read {label}: {path}: {error.strerror or error}") from None
    problem = incomplete_image(data)
    if problem:
        raise ClipError(f"cannot read {label}: {path}: {problem}; replace the file or drop the clip")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ClipError(f"cannot read {label}: {path} is not an image OpenCV can decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_frames(frame_paths: Mapping[int, Path], numbers: np.ndarray) -> np.ndarray:
    """Read frames as RGB.

    Args:
        frame_paths: Frame number -> image file.
        numbers: The frame numbers to read.

    Returns:
        ``(T, H, W, 3)`` uint8.

    Raises:
        ClipError: A file that cannot be read, an incomplete image, or frames of different sizes.
    """
    frames = [read_frame(frame_paths[int(number)], int(number)) for number in numbers]
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise ClipError(f"frames differ in size: {sorted(shapes)}")
    return np.stack(frames)


def check_frame_changes(crops: np.ndarray, names: list[str], limit: float) -> None:
    """Reject a clip with a frame whose face crop is implausibly far from the onset's.

    Within a clip of a fraction of a second the face changes by a few grey levels on average; a black, blank,
    noise or foreign frame changes it by tens. Such a frame would make the motion maps measure the difference.

    Args:
        crops: ``(T, S, S, 3)`` float32 face crops in [0, 1], the onset first.
        names: How to name each frame in the message.
        limit: Largest allowed mean absolute difference from the onset crop (``preprocess.max_frame_change``, in
            [0, 1] units: 0.1 = 25 grey levels).

    Raises:
        ClipError: Naming the frame, its change and the key to raise.
    """
    changes = np.abs(crops[1:] - crops[:1]).mean(axis=(1, 2, 3))
    worst = int(np.argmax(changes)) if changes.size else 0
    if changes.size and changes[worst] > limit:
        raise ClipError(
            f"frame {names[worst + 1]} differs from the onset {names[0]} by {changes[worst] * 255:.0f} grey levels on "
            f"average over the face (limit {limit * 255:.0f}: preprocess.max_frame_change={limit}); a black, "
            "corrupt or foreign frame?"
        )


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
    stabilize: Stabilization
    flow_image: FlowImageSpec | None  # None: the ROI-patch representation


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
        representation = cfg.get("representation")
        flow_spec = None
        if representation_name(representation) == "flow_image":
            flow_spec = FlowImageSpec.from_config(representation)
            if motion.computed_by is not None:
                raise ConfigError(f"representation=flow_image needs an optical flow; motion={motion.method} is "
                                  f"{motion.computed_by}'s own representation: choose motion=tvl1_skimage, tvl1, dis ...")
        return _Stages(
            alphas=[float(a) for a in cfg["magnification"]["alphas"]],
            test_index=alpha_index(cfg["magnification"]["alphas"], cfg["magnification"]["test_alpha"],
                                   "magnification.test_alpha", "magnification.alphas"),
            landmarks_on=landmarks_on,
            crop_size=crop_size,
            motion=motion,
            rois=roi_indices(cfg["rois"]),
            interpolate=get_interpolator(cfg["interpolation"]),
            whole_segment=reads_whole_segment(cfg["interpolation"]),
            magnify=get_magnifier(cfg["magnification"]),
            stabilize=Stabilization.from_config(cfg.get("stabilize")),
            flow_image=flow_spec,
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


def process_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any], *,
                 keep_magnified: bool = True) -> ClipResult:
    """Preprocess one clip.

    Args:
        sample: A row of the sample table: ``dataset``, ``subject``, ``clip``, ``frames_dir``, ``onset``,
            ``apex``, ``offset``, ... (frame numbers).
        frame_paths: The clip's recorded frames, frame number -> image file.
        cfg: The resolved preprocess config: ``frames`` (N), ``rois``, ``interpolation``, ``magnification``,
            ``motion`` and ``preprocess`` (``span``, ``face``, ``map_size``, optional ``landmarks_on``:
            ``onset`` (default) | ``magnified``, optional ``allow_frame_gaps``).
        keep_magnified: Keep frames 1..N magnified at the test alpha in ``ClipResult.magnified`` (what a
            visualisation shows). False keeps frame N only: a learned magnifier then renders no frame the clip
            does not read (the cache holds patches and landmarks only; preprocessing workers pass False).

    Returns:
        The :class:`ClipResult`.

    Raises:
        ClipError: The clip cannot be processed (missing or unreadable frame, no face, ...), naming the clip.
        ConfigError: An invalid config (:func:`check_config` finds it before any clip).
    """
    try:
        return _process_clip(sample, frame_paths, cfg, keep_magnified)
    except ClipError as error:
        raise error.with_clip(clip_id(sample)) from None


@dataclass
class _FaceCrops:
    """A clip's loaded frames as stabilised face crops (what both representations start from)."""

    stamps: np.ndarray
    numbers: np.ndarray
    crops: np.ndarray  # (T, S, S, 3) float32, onset first
    face: FaceBox
    box: CropBox
    face_in_crop: FaceBox
    transforms: np.ndarray  # (T, 2, 3)
    motion: MotionSpec  # with the clip's global-motion region when that removal is on
    onset_landmarks: np.ndarray | None  # (68, 2) crop pixels, when stabilisation needed them


def _face_crops(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any], stages: _Stages,
                timings: dict[str, float], paths: int) -> _FaceCrops:
    """Load the frames ``paths`` stamps need, find the face on the onset, crop, check and stabilise them."""
    settings, face_cfg = cfg["preprocess"], cfg["preprocess"]["face"]
    with _timed(timings, "load"):
        available = np.array(sorted(int(n) for n in frame_paths), dtype=np.int64)
        stamps, numbers = select_frames(
            sample, available, paths, settings.get("span", "apex"), bool(settings.get("allow_frame_gaps", False)),
            stages.whole_segment,
        )
        frames = load_frames(frame_paths, numbers)

    with _timed(timings, "face"):
        # The loaded frames are ascending from the onset: the face is detected on the onset.
        names = [Path(frame_paths[int(number)]).name for number in numbers]
        face = find_face(list(frames), int(face_cfg.get("upsample_retry", 1)), float(face_cfg.get("min_score", 0.0)),
                         names)
        box = crop_box(face, frames.shape[1:], float(face_cfg.get("margin", 0.25)))
        crops = crop_frames(frames, box, stages.crop_size)
        check_frame_changes(crops, names, float(settings.get("max_frame_change", 0.1)))
        face_in_crop = box_in_crop(face, box, stages.crop_size)

    motion, points = stages.motion, None
    with _timed(timings, "stabilize"):
        transforms = np.tile(np.eye(2, 3, dtype=np.float32), (len(crops), 1, 1))
        if stages.stabilize.active:
            # The stable part of the face, on the onset crop: not the background, which does not move with the
            # head, nor the brows and mouth, which the expression moves.
            points = landmarks(crops[0], face_in_crop, face_cfg.get("predictor"))
            region = stages.stabilize.region(points, crops.shape[1:])
            crops, transforms = register_frames(crops, stages.stabilize, region)
            if stages.stabilize.remove_global_motion != "none" and motion.computed_by is None:
                motion = dataclasses.replace(motion, global_motion=stages.stabilize.remove_global_motion, region=region)
    return _FaceCrops(stamps, numbers, crops, face, box, face_in_crop, transforms, motion, points)


def _process_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any],
                  keep_magnified: bool = True) -> ClipResult:
    stages = _stages(cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if stages.flow_image is not None:
        result = _flow_image_clip(sample, frame_paths, cfg, stages, timings)
    else:
        result = _roi_patch_clip(sample, frame_paths, cfg, stages, timings, keep_magnified)
    timings["total"] = time.perf_counter() - start
    return result


def _flow_image_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any],
                     stages: _Stages, timings: dict[str, float]) -> ClipResult:
    """The onset -> apex flow image (``representation=flow_image``); no interpolation, no magnification."""
    face_cfg = cfg["preprocess"]["face"]
    # One path: the stamps are the onset and the span's end (the apex by default), both recorded frames.
    clip = _face_crops(sample, frame_paths, cfg, stages, timings, paths=1)
    onset, apex = clip.crops[0], clip.crops[-1]
    with _timed(timings, "flow"):
        flow = clip.motion.flows(onset, apex[None])[0]  # (S, S, 2) crop pixels
        image = flow_image(flow, stages.flow_image)  # (C, s, s)
    with _timed(timings, "landmarks"):
        # The onset crop is the registration's reference, left as it was: its landmarks serve again.
        points = clip.onset_landmarks
        if points is None:
            points = landmarks(onset, clip.face_in_crop, face_cfg.get("predictor"))
        points = (points + 0.5) * np.float32(stages.flow_image.size / stages.crop_size) - 0.5
    return ClipResult(
        patches=image, landmarks=points.astype(np.float32), timings=timings, onset=onset.copy(),
        magnified=apex[None].copy(), maps=image[None].copy(), stamps=clip.stamps, face=clip.face, crop=clip.box,
        transforms=clip.transforms,
    )


def _roi_patch_clip(sample: Mapping[str, Any], frame_paths: Mapping[int, Path], cfg: Mapping[str, Any],
                    stages: _Stages, timings: dict[str, float], keep_magnified: bool = True) -> ClipResult:
    """The paper's ROI patches of N magnified motion maps (``representation=roi_patches``)."""
    face_cfg = cfg["preprocess"]["face"]
    clip = _face_crops(sample, frame_paths, cfg, stages, timings, paths=int(cfg["frames"]))
    motion = clip.motion

    with _timed(timings, "interpolate"):
        selected = stages.interpolate(clip.crops, clip.numbers, clip.stamps)  # (N + 1, S, S, 3), 0 = the onset

    with _timed(timings, "magnify"):
        magnified = stages.magnify(selected[0], selected[1:], stages.alphas, motion)

    with _timed(timings, "landmarks"):
        landmark_image = selected[0] if stages.landmarks_on == "onset" else magnified.frames[stages.test_index, -1]
        points = landmarks(landmark_image, clip.face_in_crop, face_cfg.get("predictor"))
        # Pixel centres map onto pixel centres: crop pixel i covers [i, i + 1) of the crop. (MagNet's stride-2
        # encoder centres its map pixel j on crop pixel 2j rather than 2j + 0.5: a quarter of a map pixel, less
        # than the rounding of patch centres to whole map pixels.)
        points = (points + 0.5) * np.float32(motion.map_size / stages.crop_size) - 0.5

    with _timed(timings, "patches"):
        patches = extract_patches(
            magnified.motion_maps, points[stages.rois.indices], int(cfg["rois"].get("patch_size", 7))
        )
        patches = np.ascontiguousarray(patches, dtype=np.float32)

    return ClipResult(
        patches=patches,
        landmarks=points.astype(np.float32),
        timings=timings,
        onset=selected[0].copy(),
        # Frames of a learned magnifier are rendered here, when read (mer.preprocess.magnification.FramesOnDemand).
        magnified=np.array(magnified.frames[stages.test_index] if keep_magnified
                           else magnified.frames[stages.test_index, -1:]),
        maps=np.array(magnified.motion_maps[stages.test_index]),
        stamps=clip.stamps,
        face=clip.face,
        crop=clip.box,
        transforms=clip.transforms,
    )
