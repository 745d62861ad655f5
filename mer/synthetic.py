"""The embedded synthetic micro-expression corpus, written in the CASME II on-disk layout (docs/design.md §4).

The real corpora are licensed per request and cannot ship, so the default dataset is generated:

* **Faces**: scikit-image's ``astronaut`` photograph (public domain, installed with scikit-image), its 68 dlib
  landmarks found once with dlib's own detector and predictor. Each subject is a new identity: a thin-plate-spline
  morph of the face shape (smooth random landmark offsets, anisotropic scale, rotation, optional mirror), a skin
  tone (gamma and channel gains) and a directional lighting field. A subject's clips share it.
* **Motion**: every clip carries an action-unit (AU) set from the paper's nine AUs; each AU moves its own landmarks
  in its own direction (``AU_TEMPLATES``). The landmark displacements at the apex become a dense thin-plate-spline
  field (face outline and frame border anchored), scaled per frame by a smooth onset -> apex -> offset profile.
* **Labels**: the emotion decides the AU set (``EMOTION_AU_COMBOS``): several combinations per class, some AUs shared
  between classes so that AU co-occurrence carries information.
* **Nuisances**: a random-walk head motion (translation and rotation, zero at the onset frame), a slow global
  illumination drift, Gaussian sensor noise and JPEG compression.

On disk (``root`` below)::

    root/sub01/EP01_03/img46.jpg ...      frames, numbered from a random first frame (as in CASME II)
    root/coding.xlsx, root/coding.csv     Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
                                          Action Units, Estimated Emotion
    root/ground_truth.json                the true geometry, see below

``ground_truth.json`` holds ``format``, ``frame_size`` ([height, width]), ``seed``, ``options`` and ``clips``, a map
keyed ``"subNN/EPxx_yy"`` whose values hold ``subject``, ``clip``, ``aus`` (ints), ``au_code`` (the sheet's text),
``emotion``, ``first_frame``, ``last_frame``, ``onset``, ``apex``, ``offset``, and three 68 x 2 lists of (x, y)
pixel coordinates in the stored frames (origin at the centre of the top-left pixel, dlib's 0-based point order):
``onset_landmarks`` (the landmarks in the onset frame), ``apex_displacement`` (what the AUs move each landmark by at
the apex; exactly zero for landmarks no AU moves) and ``apex_head_displacement`` (what the head motion adds at the
apex). :func:`load_ground_truth` reads it back into numpy arrays.

Same seed -> byte-identical corpus (frames, sheets, ground truth); clips get independent random streams spawned from
the seed, so the result does not depend on ``workers``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

#: The nine action units of the paper, in the order of its AU graph.
AUS = (1, 2, 4, 10, 12, 14, 15, 17, 25)

#: Sheet columns, exactly CASME II's (without its two header-less columns).
SHEET_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion")

#: The AU sets each emotion is drawn from. Classes share AUs (1: surprise & negative; 25: surprise & positive;
#: 10: positive & negative) so that co-occurrence carries information, while *which* landmarks move stays
#: class-specific: surprise moves the whole brows (1+2), positive the lip corners (12), negative the inner brows (4).
EMOTION_AU_COMBOS: dict[str, tuple[tuple[int, ...], ...]] = {
    "negative": ((4,), (4, 15), (4, 10), (4, 14), (1, 4, 15), (4, 15, 17)),
    "positive": ((12,), (12, 25), (10, 12), (10, 12, 25)),
    "surprise": ((1, 2), (1, 2, 25), (2, 25)),
}

#: AUs that may be coded on one side only (CASME II writes e.g. ``L10``, ``R12``).
UNILATERAL_AUS = (10, 12, 14)

#: Per AU: groups of (landmark indices, (outward, upward) relative displacement). "Outward" points away from the
#: face midline (its sign flips between the two halves of the face), "upward" towards the forehead.
AU_TEMPLATES: dict[int, tuple[tuple[tuple[int, ...], tuple[float, float]], ...]] = {
    1: (((21, 22), (0.0, 1.0)), ((20, 23), (0.0, 0.8)), ((19, 24), (0.0, 0.45)), ((18, 25), (0.0, 0.15))),
    2: (((17, 26), (0.1, 0.8)), ((18, 25), (0.0, 1.0)), ((19, 24), (0.0, 0.7)), ((20, 23), (0.0, 0.3))),
    4: (((21, 22), (-0.6, -0.7)), ((20, 23), (-0.4, -0.8)), ((19, 24), (-0.2, -0.6)), ((18, 25), (0.0, -0.3))),
    10: (((50, 51, 52), (0.0, 1.0)), ((49, 53), (0.0, 0.7)), ((61, 62, 63), (0.0, 0.9)), ((60, 64), (0.0, 0.3)),
         ((48, 54), (0.0, 0.2))),
    12: (((48, 54), (0.7, 0.7)), ((60, 64), (0.55, 0.55)), ((49, 53, 55, 59), (0.3, 0.3)),
         ((61, 63, 65, 67), (0.2, 0.2)), ((50, 52, 56, 58), (0.1, 0.1))),
    14: (((48, 54), (-1.0, 0.0)), ((60, 64), (-0.8, 0.0)), ((49, 53, 55, 59), (-0.35, 0.0))),
    15: (((48, 54), (0.0, -1.0)), ((60, 64), (0.0, -0.8)), ((55, 59), (0.0, -0.6)), ((49, 53), (0.0, -0.4)),
         ((56, 58, 65, 67), (0.0, -0.3))),
    17: (((57,), (0.0, 1.0)), ((56, 58), (0.0, 0.9)), ((66,), (0.0, 0.8)), ((65, 67), (0.0, 0.7)),
         ((55, 59), (0.0, 0.5))),
    25: (((66,), (0.0, -1.0)), ((65, 67), (0.0, -0.8)), ((57,), (0.0, -0.8)), ((56, 58), (0.0, -0.7)),
         ((55, 59), (0.0, -0.3)), ((61, 62, 63), (0.0, 0.4)), ((50, 51, 52), (0.0, 0.25))),
}

#: dlib's 68 points under a left-right mirror: point i of the mirrored face is point MIRROR_68[i] of the original.
MIRROR_68 = np.array(
    list(range(16, -1, -1))                      # jaw 0..16
    + list(range(26, 16, -1))                    # brows 17..26
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]    # nose bridge, nose bottom
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]           # inner lips
)

GROUND_TRUTH_FILE = "ground_truth.json"
GROUND_TRUTH_FORMAT = "mer-synthetic-ground-truth/1"
# Pinned into the xlsx so that it is byte-identical across runs (openpyxl stamps "now" otherwise).
_FIXED_TIMESTAMP = datetime.datetime(2013, 1, 1, 0, 0, 0)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class GeneratorOptions:
    """Everything but seed and size that shapes the corpus (``generate_corpus(**options)``).

    Attributes:
        frame_size: side of the square stored frames, pixels.
        face_width_fraction: jaw width (landmark 0 to 16) of the canonical face as a fraction of ``frame_size``.
        frames_per_clip: inclusive range of the number of frames in a clip.
        first_frame_range: inclusive range of the first frame number (CASME II's clips start at e.g. 46).
        rise_fraction: range of (apex - onset) / (offset - onset).
        apex_displacement_px: range of the largest landmark displacement of a clip at the apex, stored pixels.
        au_intensity: range of each AU's relative intensity within a clip.
        unilateral_probability: chance that an AU of ``UNILATERAL_AUS`` is coded on one side only (``L``/``R``).
        identity_morph_px: largest smooth random offset of a subject's landmarks, pixels.
        identity_scale: range of a subject's face scale.
        identity_aspect: range of a subject's width / height stretch.
        identity_rotation_deg: largest in-plane rotation of a subject's face, degrees.
        identity_shift_px: largest shift of a subject's face from the frame centre, pixels.
        mirror_probability: chance that a subject is the mirror image of the base face.
        gamma_range: range of a subject's tone gamma.
        green_gain, blue_gain, brightness: ranges of a subject's skin-tone channel gains.
        lighting_strength: largest brightness slope of a subject's directional lighting, relative change per frame
            width.
        head_step_px: standard deviation of the per-frame head translation step (per axis), pixels.
        head_step_deg: standard deviation of the per-frame head rotation step, degrees.
        illumination_drift: largest relative change of the global brightness over a clip.
        noise_sigma: standard deviation of the Gaussian sensor noise, grey levels (0..255).
        jpeg_quality: JPEG quality of the stored frames.
        workers: processes that render subjects in parallel (the output does not depend on it).
    """

    frame_size: int = 224
    face_width_fraction: float = 0.56
    frames_per_clip: tuple[int, int] = (30, 60)
    first_frame_range: tuple[int, int] = (1, 300)
    rise_fraction: tuple[float, float] = (0.35, 0.55)
    apex_displacement_px: tuple[float, float] = (0.8, 2.0)
    au_intensity: tuple[float, float] = (0.7, 1.0)
    unilateral_probability: float = 0.1
    identity_morph_px: float = 4.0
    identity_scale: tuple[float, float] = (0.92, 1.06)
    identity_aspect: tuple[float, float] = (0.94, 1.06)
    identity_rotation_deg: float = 5.0
    identity_shift_px: float = 5.0
    mirror_probability: float = 0.5
    gamma_range: tuple[float, float] = (0.85, 1.2)
    green_gain: tuple[float, float] = (0.85, 1.0)
    blue_gain: tuple[float, float] = (0.75, 1.0)
    brightness: tuple[float, float] = (0.8, 1.1)
    lighting_strength: float = 0.35
    head_step_px: float = 0.03
    head_step_deg: float = 0.01
    illumination_drift: float = 0.01
    noise_sigma: float = 1.5
    jpeg_quality: int = 92
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("frames_per_clip", "first_frame_range", "rise_fraction", "apex_displacement_px",
                     "au_intensity", "identity_scale", "identity_aspect", "gamma_range", "green_gain", "blue_gain",
                     "brightness"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"GeneratorOptions.{name}: low {low} > high {high}")
            object.__setattr__(self, name, (type(low)(low), type(high)(high)))  # lists from YAML -> tuples
        if self.frames_per_clip[0] < 8:
            raise ValueError(f"GeneratorOptions.frames_per_clip: clips need >= 8 frames, got {self.frames_per_clip}")
        if self.first_frame_range[0] < 0:
            raise ValueError("GeneratorOptions.first_frame_range: frame numbers are >= 0")


@dataclass(frozen=True)
class BaseFace:
    """The photograph every subject is morphed from.

    Attributes:
        image: (H, W, 3) float32 RGB in [0, 1].
        landmarks: (68, 2) float64 (x, y) dlib landmarks of ``image``.
    """

    image: np.ndarray
    landmarks: np.ndarray


@dataclass
class Subject:
    """One synthetic identity, in stored-frame coordinates.

    Attributes:
        name: folder name, e.g. ``sub01``.
        landmarks: (68, 2) (x, y) landmarks of the neutral face.
        design: (S*S, m + 3) thin-plate-spline design matrix of the frame grid over ``centers``; the identity map and
            every clip's expression field are ``design @ coefficients``.
        centers: (m, 2) spline centres: the 68 landmarks, then anchors on the frame border.
        source_map: (S, S, 2) float32 position in ``source`` that each stored pixel shows when the face is neutral.
        source: (h, w, 3) float32 RGB, the base photograph in this subject's skin tone.
        shading: (S, S, 1) float32 lighting field multiplying every frame.
        rotation: in-plane face rotation, radians (AU directions turn with it).
        side: (68,) -1 / 0 / +1: the landmark lies on the image-left half, the midline, the image-right half.
    """

    name: str
    landmarks: np.ndarray
    design: np.ndarray
    centers: np.ndarray
    source_map: np.ndarray
    source: np.ndarray
    shading: np.ndarray
    rotation: float
    side: np.ndarray


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows (all frame numbers inclusive)."""

    subject: int
    name: str
    emotion: str
    aus: tuple[int, ...]
    laterality: tuple[tuple[int, str], ...]  # (AU, "L" / "R") for the AUs acting on one side only
    first_frame: int
    last_frame: int
    onset: int
    apex: int
    offset: int

    @property
    def au_code(self) -> str:
        """The sheet's ``Action Units`` text, e.g. ``4+L10``."""
        return format_au_code(self.aus, dict(self.laterality))


# ----------------------------------------------------------------------------------------------------- base face
def dlib_predictor_path() -> Path:
    """Location of dlib's 68-point predictor inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face_recognition_models is not installed: it ships dlib's 68-point predictor")
    path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"dlib 68-point predictor not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_base_face() -> BaseFace:
    """The astronaut photograph and its 68 landmarks, located once with dlib (deterministic; cached, read-only).

    The predictor runs on a 4x enlarged copy so the landmarks come with quarter-pixel precision.
    """
    import dlib
    from skimage import data

    image = data.astronaut()  # (512, 512, 3) uint8 RGB, public domain
    faces = dlib.get_frontal_face_detector()(image, 0)
    if len(faces) != 1:
        raise RuntimeError(f"expected one face in skimage's astronaut, dlib found {len(faces)}")
    zoom = 4
    enlarged = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    box = faces[0]
    big_box = dlib.rectangle(box.left() * zoom, box.top() * zoom, box.right() * zoom, box.bottom() * zoom)
    shape = dlib.shape_predictor(str(dlib_predictor_path()))(enlarged, big_box)
    # Pixel centres: pixel k of the original covers enlarged pixels zoom*k .. zoom*k + zoom - 1.
    landmarks = (np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64) - (zoom - 1) / 2) / zoom
    image = image.astype(np.float32) / 255.0
    image.flags.writeable = landmarks.flags.writeable = False
    return BaseFace(image=image, landmarks=landmarks)


def mirror_face(base: BaseFace) -> BaseFace:
    """The left-right mirror image of ``base`` with its landmarks renumbered to dlib's order."""
    width = base.image.shape[1]
    flipped = base.landmarks.copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return BaseFace(image=np.ascontiguousarray(base.image[:, ::-1]), landmarks=flipped[MIRROR_68])


def landmark_sides(landmarks: np.ndarray) -> np.ndarray:
    """(68,) int: -1 for the image-left half of the face, +1 for the image-right half, 0 on the midline."""
    partner = landmarks[MIRROR_68]
    side = np.sign(landmarks[:, 0] - partner[:, 0]).astype(np.int64)
    side[MIRROR_68 == np.arange(68)] = 0
    return side


# ---------------------------------------------------------------------------------------------- thin-plate spline
def _tps_kernel(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r between (n, 2) points and (m, 2) centres -> (n, m)."""
    squared = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = 0.5 * squared * np.log(squared)
    return np.nan_to_num(kernel, nan=0.0)  # U(0) = 0


def tps_design(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Design matrix [U(|p - c|), 1, x, y] of a thin-plate spline: (n, 2), (m, 2) -> (n, m + 3)."""
    return np.concatenate([_tps_kernel(points, centers), np.ones((len(points), 1)), points], axis=1)


def tps_fit(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Coefficients of the thin-plate spline that interpolates ``values`` (m, k) at ``centers`` (m, 2).

    Returns:
        (m + 3, k) coefficients: kernel weights, then the affine part; ``tps_design(p, centers) @ coefficients``
        evaluates the spline at points p.
    """
    count = len(centers)
    system = np.zeros((count + 3, count + 3))
    system[:count, :] = tps_design(centers, centers)
    system[count:, :count] = system[:count, count:].T
    rhs = np.zeros((count + 3, values.shape[1]))
    rhs[:count] = values
    return np.linalg.solve(system, rhs)


def _pixel_grid(size: int) -> np.ndarray:
    """(size*size, 2) float64 (x, y) of every pixel, row-major."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


def _border_anchors(size: int, per_side: int = 6) -> np.ndarray:
    """(4 * per_side, 2) points evenly spaced around the frame border."""
    steps = np.linspace(0, size - 1, per_side, endpoint=False)
    last = float(size - 1)
    return np.concatenate([
        np.stack([steps, np.zeros_like(steps)], 1), np.stack([np.full_like(steps, last), steps], 1),
        np.stack([last - steps, np.full_like(steps, last)], 1), np.stack([np.zeros_like(steps), last - steps], 1),
    ])


def _rotation(angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


# ---------------------------------------------------------------------------------------------------- identities
def make_subject(index: int, rng: np.random.Generator, base: BaseFace, options: GeneratorOptions,
                 subject_format: str = "sub{:02d}") -> Subject:
    """Draw one identity: shape morph, scale, rotation, mirror, skin tone and lighting.

    Args:
        index: subject number in the sheet (1-based).
        rng: this subject's random stream.
        base: the photograph to morph.
        options: generator settings.
        subject_format: folder name format of the subject number.
    """
    size = options.frame_size
    if rng.random() < options.mirror_probability:
        base = mirror_face(base)
    source_landmarks = base.landmarks

    # Canonical placement: face box centred a little below the frame centre, jaw width a fixed fraction of it.
    top, bottom = source_landmarks[17:27, 1].min(), source_landmarks[8, 1]
    left, right = source_landmarks[0, 0], source_landmarks[16, 0]
    face_center = np.array([(left + right) / 2, (top + bottom) / 2])
    canonical_scale = options.face_width_fraction * size / (right - left)
    frame_center = np.array([(size - 1) / 2, (size - 1) / 2 + 0.04 * size])

    # The identity: a similarity (scale, aspect, rotation, shift) of the canonical face plus a smooth morph.
    scale = canonical_scale * rng.uniform(*options.identity_scale)
    aspect = rng.uniform(*options.identity_aspect)
    rotation = np.deg2rad(rng.uniform(-1, 1) * options.identity_rotation_deg)
    shift = rng.uniform(-1, 1, 2) * options.identity_shift_px
    linear = _rotation(rotation) @ np.diag([scale * aspect, scale / aspect])
    offset = frame_center + shift - linear @ face_center
    placed = source_landmarks @ linear.T + offset

    # Smooth morph: a few Gaussian bumps of random vectors, normalised to identity_morph_px at the strongest point.
    face_width = options.face_width_fraction * size
    bump_centers = placed.mean(0) + rng.uniform(-0.5, 0.5, (6, 2)) * face_width
    bump_vectors = rng.normal(size=(6, 2))
    weights = np.exp(-((placed[:, None] - bump_centers[None]) ** 2).sum(-1) / (2 * (0.3 * face_width) ** 2))
    morph = weights @ bump_vectors
    morph *= options.identity_morph_px * rng.uniform(0.5, 1.0) / np.linalg.norm(morph, axis=1).max()
    landmarks = placed + morph

    # Backward map stored frame -> source photograph: landmarks go to their source position, the border follows
    # the similarity only.
    anchors = _border_anchors(size)
    centers = np.concatenate([landmarks, anchors])
    anchor_sources = (anchors - offset) @ np.linalg.inv(linear).T
    design = tps_design(_pixel_grid(size), centers)
    coefficients = tps_fit(centers, np.concatenate([source_landmarks, anchor_sources]))
    source_map = (design @ coefficients).astype(np.float32).reshape(size, size, 2)

    # Skin tone and lighting.
    gamma = rng.uniform(*options.gamma_range)
    gains = rng.uniform(*options.brightness) * np.array(
        [1.0, rng.uniform(*options.green_gain), rng.uniform(*options.blue_gain)], dtype=np.float32)
    source = (base.image ** gamma * gains).astype(np.float32)
    light_direction = rng.normal(size=2)
    light_direction /= np.linalg.norm(light_direction)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    across = ((xs - size / 2) * light_direction[0] + (ys - size / 2) * light_direction[1]) / size
    shading = (1.0 + options.lighting_strength * rng.uniform(0.2, 1.0) * across)[..., None].astype(np.float32)

    return Subject(name=subject_format.format(index), landmarks=landmarks, design=design, centers=centers,
                   source_map=source_map, source=source, shading=shading, rotation=float(rotation),
                   side=landmark_sides(source_landmarks))


# --------------------------------------------------------------------------------------------------------- clips
def format_au_code(aus: tuple[int, ...], laterality: Mapping[int, str]) -> str:
    """CASME II-style AU text, e.g. ``4+L10`` for AUs (4, 10) with AU 10 on the left side only."""
    return "+".join(f"{laterality.get(au, '')}{au}" for au in aus)


def au_displacements(aus: tuple[int, ...], intensities: np.ndarray, laterality: Mapping[int, str],
                     side: np.ndarray, rotation: float) -> np.ndarray:
    """Relative displacement of the 68 landmarks that an AU set causes (before the clip's amplitude).

    Args:
        aus: the clip's action units.
        intensities: (len(aus),) relative intensity of each AU.
        laterality: AU -> ``"L"`` / ``"R"`` for the AUs that act on one side only (the subject's left is the
            image-right half of a frontal face).
        side: (68,) -1 / 0 / +1 image-left / midline / image-right landmark.
        rotation: in-plane rotation of the face, radians.

    Returns:
        (68, 2) float64 (dx, dy) in image axes (y down).
    """
    total = np.zeros((68, 2))
    for au, intensity in zip(aus, intensities):
        local = np.zeros((68, 2))
        for points, (outward, upward) in AU_TEMPLATES[au]:
            points = np.asarray(points)
            local[points, 0] = outward * side[points]
            local[points, 1] = -upward
        if au in laterality:
            acting_side = 1 if laterality[au] == "L" else -1
            local *= np.where(side == acting_side, 1.0, np.where(side == 0, 0.5, 0.0))[:, None]
        total += intensity * local
    return total @ _rotation(rotation).T


def draw_clips(subject: int, count: int, rng: np.random.Generator, options: GeneratorOptions) -> list[ClipSpec]:
    """One subject's clips: balanced emotions in random order, an AU combination each, and their frame spans."""
    emotions = sorted(EMOTION_AU_COMBOS)
    # Within a subject the class counts differ by at most one; the classes that get the extra clips rotate from
    # subject to subject, so the corpus as a whole stays balanced too.
    extra = count % len(emotions)
    start = (subject - 1) * extra
    pool = emotions * (count // len(emotions)) + [emotions[(start + j) % len(emotions)] for j in range(extra)]
    order = rng.permutation(pool)
    clips = []
    takes = rng.integers(1, 10, count)
    for number, (emotion, take) in enumerate(zip(order, takes), start=1):
        combos = EMOTION_AU_COMBOS[str(emotion)]
        aus = combos[rng.integers(len(combos))]
        laterality = {au: ("L" if rng.random() < 0.5 else "R") for au in aus
                      if au in UNILATERAL_AUS and rng.random() < options.unilateral_probability}
        length = int(rng.integers(options.frames_per_clip[0], options.frames_per_clip[1] + 1))
        first = int(rng.integers(options.first_frame_range[0], options.first_frame_range[1] + 1))
        last = first + length - 1
        onset = first + int(rng.integers(0, 3))
        offset = last - int(rng.integers(0, 3))
        apex = onset + max(2, round(rng.uniform(*options.rise_fraction) * (offset - onset)))
        clips.append(ClipSpec(subject=subject, name=f"EP{number:02d}_{int(take):02d}", emotion=str(emotion),
                              aus=tuple(aus), laterality=tuple(laterality.items()), first_frame=first,
                              last_frame=last, onset=onset, apex=apex, offset=offset))
    return clips


def intensity_profile(frames: np.ndarray, onset: int, apex: int, offset: int) -> np.ndarray:
    """Smooth expression intensity per frame number: 0 at and before onset, 1 at apex, 0 at and after offset."""
    frames = np.asarray(frames, dtype=np.float64)
    rising = 0.5 - 0.5 * np.cos(np.pi * np.clip((frames - onset) / (apex - onset), 0, 1))
    falling = 0.5 + 0.5 * np.cos(np.pi * np.clip((frames - apex) / (offset - apex), 0, 1))
    return np.where(frames <= apex, rising, falling)


def _head_walk(rng: np.random.Generator, count: int, anchor: int, options: GeneratorOptions) -> np.ndarray:
    """(count, 3) random-walk head pose (dx, dy, angle in radians), zero at frame index ``anchor``."""
    steps = rng.normal(size=(count, 3)) * [options.head_step_px, options.head_step_px,
                                           np.deg2rad(options.head_step_deg)]
    walk = np.cumsum(steps, axis=0)
    return walk - walk[anchor]


def _remap(image: np.ndarray, positions: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Sample ``image`` at (S, S, 2) float32 (x, y) ``positions``."""
    return cv2.remap(image, np.ascontiguousarray(positions, dtype=np.float32), None, interpolation,
                     borderMode=cv2.BORDER_REFLECT101)


def undo_expression(positions: np.ndarray, forward: np.ndarray, strength: float, steps: int = 3) -> np.ndarray:
    """Where each of ``positions`` was on the neutral face, given the expression moved it by ``strength * forward``.

    Inverts p -> q = p + s F(p) by the fixed-point iteration p <- q - s F(p), a contraction by |s dF/dp| (below
    0.5 for apex displacements up to 2 px, and far smaller over most of the face); three steps leave the landmarks
    within about 0.03 px of where they belong.

    Args:
        positions: (H, W, 2) float32 (x, y) points q on the expressive face.
        forward: (S, S, 2) float32 forward displacement field F at full intensity.
        strength: expression intensity s in [0, 1].
        steps: fixed-point iterations.

    Returns:
        (H, W, 2) float32 neutral positions p.
    """
    neutral = positions
    if strength > 0:
        for _ in range(steps):
            neutral = positions - np.float32(strength) * _remap(forward, neutral)
    return neutral


def render_clip(subject: Subject, clip: ClipSpec, rng: np.random.Generator, options: GeneratorOptions,
                clip_dir: Path) -> dict[str, Any]:
    """Write one clip's frames as ``img<k>.jpg`` and return its ground truth (see the module docstring)."""
    size = options.frame_size
    frame_numbers = np.arange(clip.first_frame, clip.last_frame + 1)
    count = len(frame_numbers)

    # Landmark displacements at the apex, scaled so that the strongest landmark moves `amplitude` pixels.
    intensities = rng.uniform(*options.au_intensity, len(clip.aus))
    relative = au_displacements(clip.aus, intensities, dict(clip.laterality), subject.side, subject.rotation)
    amplitude = rng.uniform(*options.apex_displacement_px)
    apex_displacement = relative * amplitude / np.linalg.norm(relative, axis=1).max()

    # Dense forward field at the apex: the spline through the landmark displacements, border anchored at zero.
    values = np.concatenate([apex_displacement, np.zeros((len(subject.centers) - 68, 2))])
    forward = (subject.design @ tps_fit(subject.centers, values)).astype(np.float32).reshape(size, size, 2)

    profile = intensity_profile(frame_numbers, clip.onset, clip.apex, clip.offset)
    head = _head_walk(rng, count, clip.onset - clip.first_frame, options)
    drift = 1.0 + rng.uniform(-1, 1) * options.illumination_drift * np.linspace(0, 1, count)
    pivot = subject.landmarks.mean(0)
    grid = _pixel_grid(size).astype(np.float32).reshape(size, size, 2)
    encode = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
    clip_dir.mkdir(parents=True, exist_ok=True)
    for frame, strength, (dx, dy, angle), gain in zip(frame_numbers, profile, head, drift):
        # Undo the head motion (forward: q = R (p - c) + c + t, so p = R^T q + c - R^T (c + t)) ...
        undo_rotation = _rotation(angle).T
        undo_head = np.hstack([undo_rotation, (pivot - undo_rotation @ (pivot + (dx, dy)))[:, None]])
        face_positions = cv2.transform(grid, undo_head)
        # ... then the expression.
        neutral = undo_expression(face_positions, forward, strength)
        image = _remap(subject.source, _remap(subject.source_map, neutral), cv2.INTER_CUBIC)  # (S, S, 3) in [0, 1]
        image *= subject.shading
        image *= np.float32(gain * 255.0)
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        noise *= np.float32(options.noise_sigma)
        image += noise
        pixels = np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)
        ok, encoded = cv2.imencode(".jpg", pixels[..., ::-1], encode)  # RGB -> BGR
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {clip_dir}/img{frame}.jpg")
        (clip_dir / f"img{frame}.jpg").write_bytes(encoded.tobytes())

    # What the head motion moves the landmarks by at the apex (forward: q = R (p - c) + c + t).
    dx, dy, angle = head[clip.apex - clip.first_frame]
    moved = (subject.landmarks + apex_displacement - pivot) @ _rotation(angle).T + pivot + (dx, dy)
    return {
        "subject": subject.name, "clip": clip.name, "aus": list(clip.aus), "au_code": clip.au_code,
        "emotion": clip.emotion, "first_frame": clip.first_frame, "last_frame": clip.last_frame,
        "onset": clip.onset, "apex": clip.apex, "offset": clip.offset,
        "onset_landmarks": _rounded(subject.landmarks),
        "apex_displacement": _rounded(apex_displacement),
        "apex_head_displacement": _rounded(moved - subject.landmarks - apex_displacement),
    }


def _rounded(array: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(array, dtype=np.float64), 4).tolist()


# ---------------------------------------------------------------------------------------------------- the corpus
@dataclass
class _SubjectJob:
    index: int
    seed: np.random.SeedSequence
    clips: list[ClipSpec] = field(default_factory=list)


def _render_subject(job: _SubjectJob, base: BaseFace, options: GeneratorOptions, subject_format: str,
                    root: Path) -> list[dict[str, Any]]:
    identity_seed, *clip_seeds = job.seed.spawn(1 + len(job.clips))
    subject = make_subject(job.index, np.random.default_rng(identity_seed), base, options, subject_format)
    return [render_clip(subject, clip, np.random.default_rng(seed), options, root / subject.name / clip.name)
            for clip, seed in zip(job.clips, clip_seeds)]


def write_sheet_csv(path: Path, rows: list[tuple]) -> None:
    """Write the coding sheet as CSV (``SHEET_COLUMNS`` header), atomically."""
    from mer.preprocess.cache import atomic_write_bytes

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SHEET_COLUMNS)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def write_sheet_xlsx(path: Path, rows: list[tuple]) -> None:
    """Write the coding sheet as a byte-reproducible xlsx (pinned document times and zip entry times)."""
    from openpyxl import Workbook
    from openpyxl.packaging.core import DocumentProperties
    from openpyxl.xml.functions import tostring

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(list(SHEET_COLUMNS))
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)  # stamps "now" into docProps/core.xml and the zip entries: rewritten below
    fixed_properties = DocumentProperties(creator="mer.synthetic", created=_FIXED_TIMESTAMP,
                                          modified=_FIXED_TIMESTAMP)
    from mer.preprocess.cache import atomic_writer

    with atomic_writer(path) as handle, zipfile.ZipFile(buffer) as source, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            content = source.read(entry.filename)
            if entry.filename == "docProps/core.xml":
                content = tostring(fixed_properties.to_tree())
            target.writestr(zipfile.ZipInfo(entry.filename, date_time=_ZIP_EPOCH), content,
                            compress_type=zipfile.ZIP_DEFLATED)


def generate_corpus(root: str | os.PathLike, seed: int = 0, subjects: int = 10, clips_per_subject: int = 8,
                    *, subject_format: str = "sub{:02d}", overwrite: bool = False, **options: Any) -> Path:
    """Generate the synthetic corpus under ``root`` (see the module docstring for the layout).

    The corpus is built in a sibling temp folder and moved into place at the end, so an interrupted run leaves no
    half-written corpus behind.

    Args:
        root: folder to create.
        seed: random seed; the same seed gives a byte-identical corpus.
        subjects: number of subjects (folders ``subject_format.format(k)``, k = 1..subjects).
        clips_per_subject: clips per subject; emotions balanced within each subject.
        subject_format: folder name of subject k (``dataset.subject_format``).
        overwrite: replace an existing non-empty ``root``; otherwise that is an error.
        **options: fields of :class:`GeneratorOptions`.

    Returns:
        ``root`` as a Path.

    Raises:
        FileExistsError: ``root`` exists, is not empty, and ``overwrite`` is false.
    """
    root = Path(root)
    if subjects < 1 or clips_per_subject < 1:
        raise ValueError(f"need >= 1 subject and clip, got subjects={subjects}, clips_per_subject={clips_per_subject}")
    settings = GeneratorOptions(**options)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    started = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        subject_seeds = np.random.SeedSequence(seed).spawn(subjects)
        jobs = []
        for index, subject_seed in enumerate(subject_seeds, start=1):
            plan_seed, render_seed = subject_seed.spawn(2)
            clips = draw_clips(index, clips_per_subject, np.random.default_rng(plan_seed), settings)
            jobs.append(_SubjectJob(index=index, seed=render_seed, clips=clips))
        base = load_base_face()
        if settings.workers > 1:
            with ProcessPoolExecutor(max_workers=settings.workers) as pool:
                futures = [pool.submit(_render_subject, job, base, settings, subject_format, staging) for job in jobs]
                truths = [truth for future in futures for truth in future.result()]
        else:
            truths = [truth for job in jobs for truth in _render_subject(job, base, settings, subject_format, staging)]

        rows = [(int(job.index), clip.name, clip.onset, clip.apex, clip.offset, clip.au_code, clip.emotion)
                for job in jobs for clip in job.clips]
        write_sheet_csv(staging / "coding.csv", rows)
        write_sheet_xlsx(staging / "coding.xlsx", rows)
        ground_truth = {
            "format": GROUND_TRUTH_FORMAT, "frame_size": [settings.frame_size, settings.frame_size], "seed": seed,
            "options": dataclasses.asdict(settings) | {"workers": None},
            "clips": {f"{truth['subject']}/{truth['clip']}": truth for truth in truths},
        }
        (staging / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth, indent=1, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("synthetic corpus: %d subjects x %d clips (%d frames) written to %s in %.1f s", subjects,
             clips_per_subject, sum(c.last_frame - c.first_frame + 1 for j in jobs for c in j.clips), root,
             time.perf_counter() - started)
    return root


def ensure_corpus(dataset_cfg: Mapping[str, Any]) -> Path:
    """Generate the corpus at ``dataset.root`` if its annotation sheet is missing and ``generate_if_missing`` is set.

    A ``root`` that exists, is not empty and has no sheet is left alone (FileExistsError): it is not ours to
    replace.

    Args:
        dataset_cfg: the ``dataset`` config node (``root``, ``annotation``, ``subject_format``,
            ``generate_if_missing``, ``generator`` with ``seed``/``subjects``/``clips_per_subject`` and any
            :class:`GeneratorOptions` field).

    Returns:
        The corpus root.
    """
    root = Path(str(dataset_cfg["root"]))
    sheet = root / str(dataset_cfg["annotation"])
    if sheet.exists() or not dataset_cfg.get("generate_if_missing", False):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # The jobs of a sweep over new configurations all find the corpus missing at once: one generates it, the
    # others wait for the lock and then find it there.
    with FileLock(str(root.with_name(root.name + ".lock"))):
        if sheet.exists():
            return root
        generator = dict(dataset_cfg.get("generator") or {})
        log.info("no annotation sheet under %s: generating the synthetic corpus (%s)", root, generator)
        return generate_corpus(root, subject_format=str(dataset_cfg.get("subject_format", "sub{:02d}")), **generator)


def load_ground_truth(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read ``root/ground_truth.json``: clip key ``"subNN/EPxx_yy"`` -> its record.

    The three landmark fields (``onset_landmarks``, ``apex_displacement``, ``apex_head_displacement``) come back as
    (68, 2) float64 arrays, ``aus`` as a tuple.
    """
    payload = json.loads((Path(root) / GROUND_TRUTH_FILE).read_text())
    if payload.get("format") != GROUND_TRUTH_FORMAT:
        raise ValueError(f"{root}/{GROUND_TRUTH_FILE}: unknown format {payload.get('format')!r}")
    clips = {}
    for key, record in payload["clips"].items():
        record = dict(record)
        for name in ("onset_landmarks", "apex_displacement", "apex_head_displacement"):
            record[name] = np.asarray(record[name], dtype=np.float64)
        record["aus"] = tuple(record["aus"])
        clips[key] = record
    return clips


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m mer.synthetic --root DIR [--seed S] [--subjects K] [--clips-per-subject M]
    [--head-step-px P] [--head-step-deg D] [--apex-displacement-px LOW HIGH]``."""
    parser = argparse.ArgumentParser(prog="python -m mer.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder to write the corpus to")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--subjects", type=int, default=10, help="number of subjects")
    parser.add_argument("--clips-per-subject", type=int, default=8, help="clips per subject")
    parser.add_argument("--workers", type=int, default=GeneratorOptions.workers,
                        help="rendering processes (the output does not depend on it)")
    parser.add_argument("--head-step-px", type=float, default=GeneratorOptions.head_step_px,
                        help="head motion: standard deviation of the per-frame translation step, pixels (real "
                             "recordings: about 0.1)")
    parser.add_argument("--head-step-deg", type=float, default=GeneratorOptions.head_step_deg,
                        help="head motion: standard deviation of the per-frame rotation step, degrees")
    parser.add_argument("--apex-displacement-px", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=GeneratorOptions.apex_displacement_px,
                        help="range of a clip's largest landmark displacement at the apex, pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing corpus at --root")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_corpus(arguments.root, seed=arguments.seed, subjects=arguments.subjects,
                    clips_per_subject=arguments.clips_per_subject, overwrite=arguments.overwrite,
                    workers=arguments.workers, head_step_px=arguments.head_step_px,
                    head_step_deg=arguments.head_step_deg, apex_displacement_px=tuple(arguments.apex_displacement_px))


if __name__ == "__main__":
    main()
