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

from mer.data.aus import AUS

log = logging.getLogger(__name__)

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

#: Frame rate the clip durations of :class:`GeneratorOptions` are expressed at (CASME II and SAMM record at 200 fps).
DEFAULT_FPS = 200.0

#: The AU sets of the ``others`` class: single AUs and pairs that mix the other classes' AUs without repeating any
#: of their combinations. Like CASME II's catch-all class they share AUs with every class and follow no one rule.
OTHERS_AU_COMBOS: tuple[tuple[int, ...], ...] = (
    (1,), (2,), (10,), (14,), (15,), (17,), (25,), (1, 4), (2, 4), (4, 17), (10, 14), (10, 17), (12, 15), (14, 17),
    (14, 25), (15, 17), (1, 25), (12, 17),
)

#: Class set -> its classes' AU sets (``GeneratorOptions.class_set``).
CLASS_SETS: dict[str, dict[str, tuple[tuple[int, ...], ...]]] = {
    "megc3": EMOTION_AU_COMBOS,
    "with_others": {**EMOTION_AU_COMBOS, "others": OTHERS_AU_COMBOS},
}

#: CASME II's class counts per class set (docs/corpora.md): the MEGC 3-class subset (150 clips) and the 4-class
#: split of Huang et al. (254 clips; negative = disgust + repression + fear + sadness).
CASME2_CLASS_COUNTS: dict[str, dict[str, int]] = {
    "megc3": {"negative": 90, "positive": 32, "surprise": 28},
    "with_others": {"negative": 68, "positive": 32, "surprise": 28, "others": 126},
}

#: A blink, as (landmark indices, (outward, upward)) groups like ``AU_TEMPLATES``: the upper lids close, the lower lids
#: rise a little, the eye corners stay. Kept within 1.3x the eye opening between lids, so the warp stays invertible.
BLINK_TEMPLATE = (((37, 38, 43, 44), (0.0, -1.0)), ((40, 41, 46, 47), (0.0, 0.3)))

#: Non-emotional mouth movements (a lip press, a jaw drop, a sideways shift of the mouth), one drawn per movement.
MOUTH_TEMPLATES: dict[str, tuple[tuple[tuple[int, ...], tuple[float, float]], ...]] = {
    "lip_press": (((56, 57, 58), (0.0, 1.0)), ((65, 66, 67), (0.0, 0.8)), ((55, 59), (0.0, 0.6)),
                  ((61, 62, 63), (0.0, -0.3))),
    "jaw_drop": (((7, 8, 9), (0.0, -1.0)), ((6, 10), (0.0, -0.8)), ((5, 11), (0.0, -0.5)), ((56, 57, 58), (0.0, -0.8)),
                 ((55, 59, 65, 66, 67), (0.0, -0.6))),
    # The whole mouth shifts towards one side of the face: (image x, upward), the x sign drawn per movement.
    "sideways": (((48, 54, 60, 64), (1.0, 0.0)), ((49, 53, 55, 59, 61, 63, 65, 67), (0.8, 0.0)),
                 ((50, 51, 52, 56, 57, 58, 62, 66), (0.7, 0.0))),
}

#: Mouth movements whose first component is along image x (one side of the face) rather than outward.
_SIDEWAYS_MOVEMENTS = ("sideways",)


def class_proportions(class_set: str, weights: Any) -> dict[str, float] | None:
    """Normalise ``GeneratorOptions.class_weights``: None (balanced), ``"casme2"`` or a class -> weight mapping.

    Returns:
        None, or class -> weight (> 0) over exactly the classes of ``class_set``, in sorted class order.

    Raises:
        ValueError: an unknown name, a class outside the class set, a missing class or a weight <= 0.
    """
    if weights is None:
        return None
    classes = sorted(CLASS_SETS[class_set])
    if isinstance(weights, str):
        if weights != "casme2":
            raise ValueError(f"GeneratorOptions.class_weights: 'casme2', a mapping or null, got {weights!r}")
        weights = CASME2_CLASS_COUNTS[class_set]
    weights = {str(name): float(value) for name, value in dict(weights).items()}  # DictConfig from YAML -> dict
    if sorted(weights) != classes:
        raise ValueError(f"GeneratorOptions.class_weights: need a weight for each of {classes}, got {sorted(weights)}")
    if min(weights.values()) <= 0:
        raise ValueError(f"GeneratorOptions.class_weights: weights must be > 0, got {weights}")
    return {name: weights[name] for name in classes}


GROUND_TRUTH_FILE = "ground_truth.json"
GROUND_TRUTH_FORMAT = "mer-synthetic-ground-truth/1"
# Pinned into the xlsx so that it is byte-identical across runs (openpyxl stamps "now" otherwise).
_FIXED_TIMESTAMP = datetime.datetime(2013, 1, 1, 0, 0, 0)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class GeneratorOptions:
    """Everything but seed and size that shapes the corpus (``generate_corpus(**options)``).

    The difficulty knobs (from ``apex_displacement_distribution`` on, :data:`DIFFICULTY_KNOBS`; a table with units and
    real-world counterparts in docs/synthetic.md) default to "off": at their defaults the corpus is the quick default
    one, byte for byte. Each draws its random numbers from a stream of its own, so turning one on changes nothing the
    others draw.

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
        apex_displacement_distribution: how a clip's apex amplitude is drawn from ``apex_displacement_px``:
            ``uniform`` over the range, or ``lognormal`` (median the geometric mean of the range, the range its
            +-2 sigma, clipped to it): mostly small expressions, a few large ones, as in real corpora.
        head_jump_probability: chance per frame of a larger head move on top of the random walk (a shift of the
            head, a nod), 0..1.
        head_jump_px: size of a head move's translation, pixels (its length is drawn from 0.5..1.5 times this, its
            direction uniformly).
        head_jump_deg: standard deviation of a head move's rotation, degrees.
        apex_annotation_error_frames: standard deviation of the coder's apex error, frames (rounded; the sheet's
            ApexFrame is off the true peak by it and stays strictly between onset and offset; the ground truth
            keeps the true apex and records the sheet's as ``annotated_apex``).
        fps: frame rate, frames per second. The durations above (``frames_per_clip``) are those of a 200 fps
            recording (CASME II, SAMM); another rate scales the number of frames of every phase by ``fps / 200``
            (100: SMIC-HS, CAS(ME)^2's 30).
        style_strength: how much each subject's way of making an AU differs from the template, 0 = not at all.
            Per subject and AU: a rotation of the AU's displacement directions (standard deviation
            ``25 * style_strength`` degrees, mirrored between the face halves), a gain on its intensity
            (lognormal, sigma ``0.35 * style_strength``); per subject: a gain on the clip amplitudes (sigma
            ``0.25 * style_strength``) and on the onset -> apex fraction of its clips (sigma ``0.3 *
            style_strength``, kept in 0.1..0.9). LOSO then has to generalise to a new person's variant.
        class_set: ``megc3`` (negative, positive, surprise) or ``with_others``, which adds ``others``: clips whose
            AU sets (``OTHERS_AU_COMBOS``) are heterogeneous and overlap the other classes' AUs, like CASME II's
            catch-all class.
        class_weights: null for balanced classes; ``casme2`` for CASME II's proportions of the class set
            (``CASME2_CLASS_COUNTS``); or a mapping class -> weight. The corpus's clips are then split between the
            classes in these proportions (largest remainders, at least one clip per class) and shuffled across
            subjects, so a subject need not show every class.
        blink_probability: chance that a clip contains an eye blink (upper lids down, lower lids slightly up over
            0.10-0.16 s, anywhere in the clip), 0..1.
        blink_px: largest eyelid displacement of a blink, pixels (drawn from 0.8..1.2 times this).
        mouth_movement_probability: chance that a clip contains a non-emotional mouth movement (lip press, jaw
            drop or a sideways lip shift over 0.2-0.4 s), 0..1.
        mouth_movement_px: largest landmark displacement of a mouth movement, pixels (0.8..1.2 times this).
        grayscale: store single-channel (luminance) JPEG frames, as SAMM does.
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
    # Difficulty knobs (DIFFICULTY_KNOBS): the defaults leave the corpus as it is without them.
    apex_displacement_distribution: str = "uniform"
    head_jump_probability: float = 0.0
    head_jump_px: float = 0.0
    head_jump_deg: float = 0.0
    apex_annotation_error_frames: float = 0.0
    fps: float = 200.0
    style_strength: float = 0.0
    class_set: str = "megc3"
    class_weights: Any = None
    blink_probability: float = 0.0
    blink_px: float = 2.5
    mouth_movement_probability: float = 0.0
    mouth_movement_px: float = 2.5
    grayscale: bool = False

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
        if self.apex_displacement_distribution not in ("uniform", "lognormal"):
            raise ValueError("GeneratorOptions.apex_displacement_distribution: uniform or lognormal, got "
                             f"{self.apex_displacement_distribution!r}")
        if self.class_set not in CLASS_SETS:
            raise ValueError(f"GeneratorOptions.class_set: one of {sorted(CLASS_SETS)}, got {self.class_set!r}")
        for name in ("head_jump_probability", "blink_probability", "mouth_movement_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"GeneratorOptions.{name}: a probability in 0..1, got {getattr(self, name)}")
        for name in ("head_jump_px", "head_jump_deg", "apex_annotation_error_frames", "style_strength", "blink_px",
                     "mouth_movement_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"GeneratorOptions.{name}: must be >= 0, got {getattr(self, name)}")
        if self.fps <= 0:
            raise ValueError(f"GeneratorOptions.fps: must be > 0, got {self.fps}")
        if round(self.frames_per_clip[0] * self.fps / DEFAULT_FPS) < 8:
            raise ValueError(f"GeneratorOptions.fps: {self.fps} fps leaves clips of "
                             f"{self.frames_per_clip[0] * self.fps / DEFAULT_FPS:.1f} frames, need >= 8")
        object.__setattr__(self, "class_weights", class_proportions(self.class_set, self.class_weights))
        object.__setattr__(self, "grayscale", bool(self.grayscale))


#: The difficulty knobs of :class:`GeneratorOptions`: at their defaults they draw nothing and change nothing, and
#: the ground truth's ``options`` lists them only where they differ from the default (so that a default corpus is
#: byte-identical whether or not the generator knows them).
DIFFICULTY_KNOBS = ("apex_displacement_distribution", "head_jump_probability", "head_jump_px", "head_jump_deg",
                    "apex_annotation_error_frames", "fps", "style_strength", "class_set", "class_weights",
                    "blink_probability", "blink_px", "mouth_movement_probability", "mouth_movement_px", "grayscale")


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
        style: this subject's way of making the AUs (``GeneratorOptions.style_strength`` > 0), else None.
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
    style: SubjectStyle | None = None


@dataclass(frozen=True)
class SubjectStyle:
    """One subject's variant of every AU (``GeneratorOptions.style_strength``).

    Attributes:
        au_angle: AU -> rotation of its (outward, upward) displacement directions, radians (mirrored between the
            face halves, so the variant stays symmetric).
        au_gain: AU -> factor on its intensity.
        amplitude_gain: factor on the apex amplitude of every clip.
        rise_gain: factor on the onset -> apex fraction of every clip.
    """

    au_angle: dict[int, float]
    au_gain: dict[int, float]
    amplitude_gain: float
    rise_gain: float


def draw_style(rng: np.random.Generator, strength: float) -> SubjectStyle:
    """A subject's style of strength ``strength`` (see :class:`GeneratorOptions`)."""
    angles = rng.normal(0.0, np.deg2rad(25.0) * strength, len(AUS))
    gains = np.exp(rng.normal(0.0, 0.35 * strength, len(AUS)))
    amplitude_gain, rise_gain = np.exp(rng.normal(0.0, [0.25 * strength, 0.3 * strength]))
    return SubjectStyle(au_angle={au: float(a) for au, a in zip(AUS, angles)},
                        au_gain={au: float(g) for au, g in zip(AUS, gains)},
                        amplitude_gain=float(amplitude_gain), rise_gain=float(rise_gain))


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
    annotated_apex: int | None = None  # the sheet's apex when it carries an annotation error, else the true apex

    @property
    def sheet_apex(self) -> int:
        """The ApexFrame the coding sheet gives."""
        return self.apex if self.annotated_apex is None else self.annotated_apex

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
                     side: np.ndarray, rotation: float, style: SubjectStyle | None = None) -> np.ndarray:
    """Relative displacement of the 68 landmarks that an AU set causes (before the clip's amplitude).

    Args:
        aus: the clip's action units.
        intensities: (len(aus),) relative intensity of each AU.
        laterality: AU -> ``"L"`` / ``"R"`` for the AUs that act on one side only (the subject's left is the
            image-right half of a frontal face).
        side: (68,) -1 / 0 / +1 image-left / midline / image-right landmark.
        rotation: in-plane rotation of the face, radians.
        style: the subject's variant of each AU (None: the templates as they are).

    Returns:
        (68, 2) float64 (dx, dy) in image axes (y down).
    """
    total = np.zeros((68, 2))
    for au, intensity in zip(aus, intensities):
        local = np.zeros((68, 2))
        for points, (outward, upward) in AU_TEMPLATES[au]:
            points = np.asarray(points)
            if style is not None:  # turn (outward, upward); "outward" mirrors the turn between the face halves
                angle, gain = style.au_angle[au], style.au_gain[au]
                outward, upward = (gain * (outward * np.cos(angle) - upward * np.sin(angle)),
                                   gain * (outward * np.sin(angle) + upward * np.cos(angle)))
            local[points, 0] = outward * side[points]
            local[points, 1] = -upward
        if au in laterality:
            acting_side = 1 if laterality[au] == "L" else -1
            local *= np.where(side == acting_side, 1.0, np.where(side == 0, 0.5, 0.0))[:, None]
        total += intensity * local
    return total @ _rotation(rotation).T


def draw_clips(subject: int, count: int, rng: np.random.Generator, options: GeneratorOptions,
               emotions: list[str] | None = None, style: SubjectStyle | None = None,
               apex_error_rng: np.random.Generator | None = None) -> list[ClipSpec]:
    """One subject's clips: emotions in random order, an AU combination each, and their frame spans.

    Args:
        subject: subject number (1-based).
        count: number of clips.
        rng: the subject's plan stream.
        options: generator settings.
        emotions: the subject's classes, one per clip, already shuffled (``class_weights``: drawn for the whole
            corpus by :func:`plan_emotions`); None for balanced classes.
        style: the subject's style (its ``rise_gain`` stretches the onset -> apex phase).
        apex_error_rng: stream of the apex annotation errors (needed when ``apex_annotation_error_frames`` > 0).
    """
    combos_of = CLASS_SETS[options.class_set]
    if emotions is None:
        classes = sorted(combos_of)
        # Within a subject the class counts differ by at most one; the classes that get the extra clips rotate
        # from subject to subject, so the corpus as a whole stays balanced too.
        extra = count % len(classes)
        start = (subject - 1) * extra
        pool = classes * (count // len(classes)) + [classes[(start + j) % len(classes)] for j in range(extra)]
        order = rng.permutation(pool)
    elif len(emotions) != count:
        raise ValueError(f"subject {subject}: {len(emotions)} emotions for {count} clips")
    else:
        order = emotions
    scale = options.fps / DEFAULT_FPS
    clips = []
    takes = rng.integers(1, 10, count)
    for number, (emotion, take) in enumerate(zip(order, takes), start=1):
        combos = combos_of[str(emotion)]
        aus = combos[rng.integers(len(combos))]
        laterality = {au: ("L" if rng.random() < 0.5 else "R") for au in aus
                      if au in UNILATERAL_AUS and rng.random() < options.unilateral_probability}
        length = int(rng.integers(options.frames_per_clip[0], options.frames_per_clip[1] + 1))
        if scale != 1.0:  # the same durations at another frame rate
            length = max(8, round(length * scale))
        first = int(rng.integers(options.first_frame_range[0], options.first_frame_range[1] + 1))
        last = first + length - 1
        onset = first + int(rng.integers(0, 3))
        offset = last - int(rng.integers(0, 3))
        rise = rng.uniform(*options.rise_fraction)
        if style is not None:
            rise = float(np.clip(rise * style.rise_gain, 0.1, 0.9))
        apex = min(offset - 1, onset + max(2, round(rise * (offset - onset))))
        annotated = None
        if options.apex_annotation_error_frames > 0:
            error = round(apex_error_rng.normal(0.0, options.apex_annotation_error_frames))
            annotated = int(np.clip(apex + error, onset + 1, offset - 1))
        clips.append(ClipSpec(subject=subject, name=f"EP{number:02d}_{int(take):02d}", emotion=str(emotion),
                              aus=tuple(aus), laterality=tuple(laterality.items()), first_frame=first,
                              last_frame=last, onset=onset, apex=apex, offset=offset, annotated_apex=annotated))
    return clips


def plan_emotions(subjects: int, clips_per_subject: int, weights: Mapping[str, float],
                  rng: np.random.Generator) -> list[list[str]]:
    """Split a corpus's clips between classes in the proportions ``weights``, shuffled across subjects.

    Counts are the largest-remainder rounding of the proportions, with at least one clip per class (a class absent
    from the pooled labels leaves UF1 undefined); the clips are then shuffled over the whole corpus, so subjects get
    unequal mixes, as in CASME II.

    Returns:
        One list of ``clips_per_subject`` class names per subject.
    """
    total = subjects * clips_per_subject
    names = sorted(weights)
    if total < len(names):
        raise ValueError(f"{total} clips cannot hold {len(names)} classes")
    share = np.array([weights[n] for n in names], dtype=np.float64)
    exact = share / share.sum() * total
    counts = np.maximum(np.floor(exact).astype(int), 1)
    while counts.sum() < total:  # largest remainders first
        counts[np.argmax(exact - counts)] += 1
    while counts.sum() > total:  # the floor of 1 took too many: from the most over-served class
        counts[np.argmax(np.where(counts > 1, counts - exact, -np.inf))] -= 1
    pool = rng.permutation(np.repeat(names, counts)).tolist()
    return [pool[k * clips_per_subject:(k + 1) * clips_per_subject] for k in range(subjects)]


def _knob_rng(seed: np.random.SeedSequence, knob: str) -> np.random.Generator:
    """The random stream of one difficulty knob below ``seed``: its own, so that it shifts no other stream.

    It extends ``seed``'s spawn key by a tag far above the child indices :meth:`SeedSequence.spawn` hands out, so
    it never coincides with a spawned stream and does not depend on how many were spawned.
    """
    tag = _KNOB_TAGS[knob]
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, tag)))


_KNOB_TAGS = {name: (1 << 20) + k for k, name in enumerate(
    ("classes", "style", "apex_error", "amplitude", "head_jump", "blink", "mouth"))}


def intensity_profile(frames: np.ndarray, onset: int, apex: int, offset: int) -> np.ndarray:
    """Smooth expression intensity per frame number: 0 at and before onset, 1 at apex, 0 at and after offset."""
    frames = np.asarray(frames, dtype=np.float64)
    rising = 0.5 - 0.5 * np.cos(np.pi * np.clip((frames - onset) / (apex - onset), 0, 1))
    falling = 0.5 + 0.5 * np.cos(np.pi * np.clip((frames - apex) / (offset - apex), 0, 1))
    return np.where(frames <= apex, rising, falling)


def _head_walk(rng: np.random.Generator, count: int, anchor: int, options: GeneratorOptions,
               jump_rng: np.random.Generator | None = None) -> np.ndarray:
    """(count, 3) random-walk head pose (dx, dy, angle in radians), zero at frame index ``anchor``.

    With ``head_jump_probability`` > 0, ``jump_rng`` adds the occasional larger move to the walk's steps.
    """
    steps = rng.normal(size=(count, 3)) * [options.head_step_px, options.head_step_px,
                                           np.deg2rad(options.head_step_deg)]
    if options.head_jump_probability > 0:
        jumps = jump_rng.random(count) < options.head_jump_probability
        direction = jump_rng.uniform(0.0, 2 * np.pi, count)
        length = options.head_jump_px * jump_rng.uniform(0.5, 1.5, count)
        turn = np.deg2rad(options.head_jump_deg) * jump_rng.normal(size=count)
        steps += jumps[:, None] * np.stack([length * np.cos(direction), length * np.sin(direction), turn], axis=1)
    walk = np.cumsum(steps, axis=0)
    return walk - walk[anchor]


def template_displacement(groups: tuple[tuple[tuple[int, ...], tuple[float, float]], ...], side: np.ndarray,
                          rotation: float, sideways: float = 0.0) -> np.ndarray:
    """(68, 2) image-axes displacement of a template of (landmark indices, (outward, upward)) groups.

    Args:
        groups: the template.
        side: (68,) -1 / 0 / +1 image-left / midline / image-right landmark.
        rotation: in-plane rotation of the face, radians.
        sideways: 0 for an ``outward`` first component; +1 / -1 to read it as a shift towards image-right / -left.
    """
    local = np.zeros((68, 2))
    for points, (first, upward) in groups:
        points = np.asarray(points)
        local[points, 0] = first * (sideways if sideways else side[points])
        local[points, 1] = -upward
    return local @ _rotation(rotation).T


def draw_distractors(rng_blink: np.random.Generator | None, rng_mouth: np.random.Generator | None,
                     clip: ClipSpec, subject: Subject, options: GeneratorOptions) -> list[dict[str, Any]]:
    """The clip's eye blink and mouth movement, if any (``blink_probability``, ``mouth_movement_probability``).

    Each is a landmark displacement at its peak (largest landmark move drawn from 0.8..1.2 times ``blink_px`` /
    ``mouth_movement_px``) and a start, peak and end frame (0.10-0.16 s for a blink, 0.2-0.4 s for a mouth
    movement, at ``fps``; the peak anywhere in the clip, so it may fall between onset and apex).

    Returns:
        ``{"kind", "start", "peak", "end", "displacement": (68, 2)}`` per distractor.
    """
    drawn = []
    for rng, probability, kinds, size, seconds in (
            (rng_blink, options.blink_probability, ("blink",), options.blink_px, (0.10, 0.16)),
            (rng_mouth, options.mouth_movement_probability, tuple(MOUTH_TEMPLATES), options.mouth_movement_px,
             (0.2, 0.4))):
        if probability <= 0 or rng.random() >= probability:
            continue
        kind = kinds[rng.integers(len(kinds))]
        groups = BLINK_TEMPLATE if kind == "blink" else MOUTH_TEMPLATES[kind]
        sideways = float(rng.choice([-1.0, 1.0])) if kind in _SIDEWAYS_MOVEMENTS else 0.0
        relative = template_displacement(groups, subject.side, subject.rotation, sideways)
        displacement = relative * size * rng.uniform(0.8, 1.2) / np.linalg.norm(relative, axis=1).max()
        half = max(2, round(rng.uniform(*seconds) * options.fps / 2))
        peak = int(rng.integers(clip.first_frame, clip.last_frame + 1))
        drawn.append({"kind": kind, "start": peak - half, "peak": peak, "end": peak + half,
                      "displacement": displacement})
    return drawn


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


def _dense_field(subject: Subject, displacement: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 2) float32 forward field: the spline through 68 landmark displacements, the border anchored at 0."""
    values = np.concatenate([displacement, np.zeros((len(subject.centers) - 68, 2))])
    return (subject.design @ tps_fit(subject.centers, values)).astype(np.float32).reshape(size, size, 2)


def _apex_displacement(subject: Subject, clip: ClipSpec, rng: np.random.Generator, options: GeneratorOptions,
                       seed: np.random.SeedSequence | None) -> np.ndarray:
    """(68, 2) landmark displacements at the apex, scaled so that the strongest landmark moves the drawn amplitude.

    Draws the AU intensities and the amplitude from ``rng`` (then, with ``apex_displacement_distribution =
    "lognormal"``, the amplitude from the knob's own stream below ``seed``).
    """
    intensities = rng.uniform(*options.au_intensity, len(clip.aus))
    relative = au_displacements(clip.aus, intensities, dict(clip.laterality), subject.side, subject.rotation,
                                subject.style)
    amplitude = rng.uniform(*options.apex_displacement_px)
    if options.apex_displacement_distribution == "lognormal":
        low, high = np.log(options.apex_displacement_px)
        draw = _knob_rng(seed, "amplitude").normal((low + high) / 2, (high - low) / 4)
        amplitude = float(np.clip(np.exp(draw), *options.apex_displacement_px))
    if subject.style is not None:
        amplitude *= subject.style.amplitude_gain
    return relative * amplitude / np.linalg.norm(relative, axis=1).max()


def _clip_distractors(subject: Subject, clip: ClipSpec, options: GeneratorOptions,
                      seed: np.random.SeedSequence | None) -> list[dict[str, Any]]:
    """The clip's distractors (:func:`draw_distractors`, each from its knob's stream below ``seed``); none when
    both knobs are off."""
    if options.blink_probability > 0 or options.mouth_movement_probability > 0:
        return draw_distractors(
            _knob_rng(seed, "blink") if options.blink_probability > 0 else None,
            _knob_rng(seed, "mouth") if options.mouth_movement_probability > 0 else None, clip, subject, options)
    return []


def _undo_head(grid: np.ndarray, pivot: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(S, S, 2) float32 positions on the still face of the ``grid`` pixels, given the head pose (dx, dy, angle).

    The head moves a point by q = R (p - c) + c + t about the ``pivot`` c, so p = R^T q + c - R^T (c + t).
    """
    dx, dy, angle = pose
    undo_rotation = _rotation(angle).T
    undo_head = np.hstack([undo_rotation, (pivot - undo_rotation @ (pivot + (dx, dy)))[:, None]])
    return cv2.transform(grid, undo_head)


def _neutral_positions(face_positions: np.ndarray, forward: np.ndarray, strength: float,
                       distractor_fields: list[tuple[np.ndarray, np.ndarray]], index: int) -> np.ndarray:
    """Undo the expression at ``strength`` (and the distractors at frame ``index``) from ``face_positions``.

    Args:
        face_positions: (S, S, 2) float32 positions on the still, expressive face.
        forward: (S, S, 2) float32 apex forward field of the expression.
        strength: the expression's intensity at this frame.
        distractor_fields: (dense field, intensity per frame) per distractor.
        index: the frame's index in the clip.

    Returns:
        (S, S, 2) float32 positions on the neutral face.
    """
    if distractor_fields:  # one field, the sum of each at its own intensity
        field_now = forward * np.float32(strength)
        for distractor_field, distractor_profile in distractor_fields:
            field_now += distractor_field * np.float32(distractor_profile[index])
        # The eyelids' field is steeper than the AUs': a few more fixed-point steps for the same precision.
        return undo_expression(face_positions, field_now, 1.0, steps=6)
    return undo_expression(face_positions, forward, strength)


def _shade_frame(subject: Subject, neutral: np.ndarray, gain: float, rng: np.random.Generator,
                 options: GeneratorOptions) -> np.ndarray:
    """(S, S, 3) RGB or (S, S) gray uint8 frame: the source face sampled at ``neutral``, shaded, lit by ``gain``,
    with sensor noise drawn from ``rng``."""
    image = _remap(subject.source, _remap(subject.source_map, neutral), cv2.INTER_CUBIC)  # (S, S, 3) in [0, 1]
    image *= subject.shading
    image *= np.float32(gain * 255.0)
    if options.grayscale:  # the camera's luminance; the sensor noise is then on that one channel
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(options.noise_sigma)
    image += noise
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def _write_frame(clip_dir: Path, frame: int, pixels: np.ndarray, options: GeneratorOptions) -> None:
    """Write ``pixels`` (RGB or gray) as ``clip_dir/img<frame>.jpg`` at ``jpeg_quality``."""
    encode = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
    ok, encoded = cv2.imencode(".jpg", pixels if options.grayscale else pixels[..., ::-1], encode)  # RGB -> BGR
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {clip_dir}/img{frame}.jpg")
    (clip_dir / f"img{frame}.jpg").write_bytes(encoded.tobytes())


def _clip_truth(subject: Subject, clip: ClipSpec, options: GeneratorOptions, apex_displacement: np.ndarray,
                apex_pose: np.ndarray, pivot: np.ndarray, distractors: list[dict[str, Any]]) -> dict[str, Any]:
    """The clip's ground truth (see the module docstring).

    Args:
        subject: the identity.
        clip: what the clip shows.
        options: generator settings (knob records only when their knob is on).
        apex_displacement: (68, 2) expression displacement of the landmarks at the apex.
        apex_pose: the head pose (dx, dy, angle) at the apex.
        pivot: the head rotation's centre.
        distractors: the clip's distractors.
    """
    # What the head motion moves the landmarks by at the apex (forward: q = R (p - c) + c + t).
    dx, dy, angle = apex_pose
    moved = (subject.landmarks + apex_displacement - pivot) @ _rotation(angle).T + pivot + (dx, dy)
    truth = {
        "subject": subject.name, "clip": clip.name, "aus": list(clip.aus), "au_code": clip.au_code,
        "emotion": clip.emotion, "first_frame": clip.first_frame, "last_frame": clip.last_frame,
        "onset": clip.onset, "apex": clip.apex, "offset": clip.offset,
        "onset_landmarks": _rounded(subject.landmarks),
        "apex_displacement": _rounded(apex_displacement),
        "apex_head_displacement": _rounded(moved - subject.landmarks - apex_displacement),
    }
    # Knob records only when their knob is on: a default corpus's ground truth stays as it is without them.
    if options.apex_annotation_error_frames > 0:
        truth["annotated_apex"] = clip.sheet_apex
    if options.blink_probability > 0 or options.mouth_movement_probability > 0:
        truth["distractors"] = [{**d, "displacement": _rounded(d["displacement"])} for d in distractors]
    return truth


def render_clip(subject: Subject, clip: ClipSpec, rng: np.random.Generator, options: GeneratorOptions,
                clip_dir: Path, seed: np.random.SeedSequence | None = None) -> dict[str, Any]:
    """Write one clip's frames as ``img<k>.jpg`` and return its ground truth (see the module docstring).

    Args:
        subject: the identity.
        clip: what the clip shows.
        rng: the clip's stream.
        options: generator settings.
        clip_dir: folder of the frames.
        seed: the seed of ``rng``; the difficulty knobs draw from streams below it (needed when one is on).
    """
    size = options.frame_size
    frame_numbers = np.arange(clip.first_frame, clip.last_frame + 1)
    count = len(frame_numbers)
    # The draws from `rng` stay in this order: AU intensities and amplitude, head walk, drift, each frame's noise.
    apex_displacement = _apex_displacement(subject, clip, rng, options, seed)
    # Dense forward field at the apex: the spline through the landmark displacements, border anchored at zero.
    forward = _dense_field(subject, apex_displacement, size)
    profile = intensity_profile(frame_numbers, clip.onset, clip.apex, clip.offset)
    head = _head_walk(rng, count, clip.onset - clip.first_frame, options,
                      _knob_rng(seed, "head_jump") if options.head_jump_probability > 0 else None)
    distractors = _clip_distractors(subject, clip, options, seed)
    # Per distractor: its dense field and its intensity per frame.
    distractor_fields = [(_dense_field(subject, d["displacement"], size),
                          intensity_profile(frame_numbers, d["start"], d["peak"], d["end"])) for d in distractors]
    drift = 1.0 + rng.uniform(-1, 1) * options.illumination_drift * np.linspace(0, 1, count)
    pivot = subject.landmarks.mean(0)
    grid = _pixel_grid(size).astype(np.float32).reshape(size, size, 2)
    clip_dir.mkdir(parents=True, exist_ok=True)
    for index, (frame, strength, pose, gain) in enumerate(zip(frame_numbers, profile, head, drift)):
        # Undo the head motion, then the expression (and the distractors).
        neutral = _neutral_positions(_undo_head(grid, pivot, pose), forward, strength, distractor_fields, index)
        _write_frame(clip_dir, frame, _shade_frame(subject, neutral, gain, rng, options), options)
    return _clip_truth(subject, clip, options, apex_displacement, head[clip.apex - clip.first_frame], pivot,
                       distractors)


def _rounded(array: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(array, dtype=np.float64), 4).tolist()


# ---------------------------------------------------------------------------------------------------- the corpus
@dataclass
class _SubjectJob:
    index: int
    seed: np.random.SeedSequence
    clips: list[ClipSpec] = field(default_factory=list)
    style: SubjectStyle | None = None


def _render_subject(job: _SubjectJob, base: BaseFace, options: GeneratorOptions, subject_format: str,
                    root: Path) -> list[dict[str, Any]]:
    identity_seed, *clip_seeds = job.seed.spawn(1 + len(job.clips))
    subject = make_subject(job.index, np.random.default_rng(identity_seed), base, options, subject_format)
    subject.style = job.style
    return [render_clip(subject, clip, np.random.default_rng(seed), options, root / subject.name / clip.name, seed)
            for clip, seed in zip(job.clips, clip_seeds)]


def write_sheet_csv(path: Path, rows: list[tuple]) -> None:
    """Write the coding sheet as CSV (``SHEET_COLUMNS`` header), atomically."""
    from mer.files import atomic_write_bytes

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
    from mer.files import atomic_writer

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
        root_seed = np.random.SeedSequence(seed)
        subject_seeds = root_seed.spawn(subjects)
        planned = (plan_emotions(subjects, clips_per_subject, settings.class_weights, _knob_rng(root_seed, "classes"))
                   if settings.class_weights is not None else [None] * subjects)
        jobs = []
        for index, (subject_seed, emotions) in enumerate(zip(subject_seeds, planned), start=1):
            plan_seed, render_seed = subject_seed.spawn(2)
            style = (draw_style(_knob_rng(subject_seed, "style"), settings.style_strength)
                     if settings.style_strength > 0 else None)
            clips = draw_clips(index, clips_per_subject, np.random.default_rng(plan_seed), settings, emotions, style,
                               _knob_rng(plan_seed, "apex_error") if settings.apex_annotation_error_frames > 0
                               else None)
            jobs.append(_SubjectJob(index=index, seed=render_seed, clips=clips, style=style))
        base = load_base_face()
        if settings.workers > 1:
            with ProcessPoolExecutor(max_workers=settings.workers) as pool:
                futures = [pool.submit(_render_subject, job, base, settings, subject_format, staging) for job in jobs]
                truths = [truth for future in futures for truth in future.result()]
        else:
            truths = [truth for job in jobs for truth in _render_subject(job, base, settings, subject_format, staging)]

        rows = [(int(job.index), clip.name, clip.onset, clip.sheet_apex, clip.offset, clip.au_code, clip.emotion)
                for job in jobs for clip in job.clips]
        write_sheet_csv(staging / "coding.csv", rows)
        write_sheet_xlsx(staging / "coding.xlsx", rows)
        ground_truth = {
            "format": GROUND_TRUTH_FORMAT, "frame_size": [settings.frame_size, settings.frame_size], "seed": seed,
            "options": options_record(settings),
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


def options_record(settings: GeneratorOptions) -> dict[str, Any]:
    """The ``options`` of ``ground_truth.json``: every field, the difficulty knobs only where they are not default.

    ``workers`` is written as null: the output does not depend on it.
    """
    record = dataclasses.asdict(settings) | {"workers": None}
    defaults = GeneratorOptions()
    for name in DIFFICULTY_KNOBS:
        if getattr(settings, name) == getattr(defaults, name):
            del record[name]
    return record


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
        # A warning, not a note: a mistyped dataset.root looks just like this, and the run would go on to train on
        # a freshly generated corpus instead of the one meant.
        log.warning("dataset.root=%s holds no synthetic corpus (no %s): generating a new corpus there (%s). If you "
                    "meant an existing corpus, stop and correct dataset.root",
                    root if root.is_absolute() else f"{root} ({root.absolute()})", sheet.name,
                    ", ".join(f"{key}={value}" for key, value in generator.items()) or "default settings")
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


#: Corpus sizes ``python -m mer.synthetic --size`` knows: (subjects, clips per subject). ``casme2``: CASME II's 26
#: subjects and about its 255 clips.
CORPUS_SIZES = {"default": (10, 8), "casme2": (26, 10)}

#: Command-line flags of the generator options: option -> (flag help, type or nargs spec).
_OPTION_FLAGS: dict[str, str] = {
    "head_step_px": "head motion: standard deviation of the per-frame translation step, pixels (real recordings: "
                    "about 0.1)",
    "head_step_deg": "head motion: standard deviation of the per-frame rotation step, degrees",
    "apex_displacement_px": "range of a clip's largest landmark displacement at the apex, pixels (LOW HIGH)",
    "apex_displacement_distribution": "how the apex amplitude is drawn from its range: uniform or lognormal",
    "head_jump_probability": "chance per frame of a larger head move",
    "head_jump_px": "translation of a larger head move, pixels",
    "head_jump_deg": "rotation (standard deviation) of a larger head move, degrees",
    "apex_annotation_error_frames": "standard deviation of the sheet's apex error, frames",
    "fps": "frame rate; clip durations scale by fps / 200",
    "style_strength": "per-subject variant of each AU, 0 = none, 1 = strong",
    "class_set": "megc3 (negative, positive, surprise) or with_others (adds others)",
    "class_weights": "class proportions: casme2, or name=weight,name=weight,... (default: balanced)",
    "blink_probability": "chance that a clip contains an eye blink",
    "blink_px": "largest eyelid displacement of a blink, pixels",
    "mouth_movement_probability": "chance that a clip contains a non-emotional mouth movement",
    "mouth_movement_px": "largest landmark displacement of a mouth movement, pixels",
    "grayscale": "store single-channel frames (SAMM-like): true or false",
    "noise_sigma": "Gaussian sensor noise, grey levels",
    "jpeg_quality": "JPEG quality of the stored frames",
}


def _parse_option(name: str, text: str | list[str]) -> Any:
    """A command-line value of option ``name``, typed like its :class:`GeneratorOptions` default."""
    if name == "apex_displacement_px":
        return tuple(float(v) for v in text)
    if name == "class_weights":
        if text in ("casme2", "none", "null"):
            return None if text != "casme2" else text
        return {key: float(value) for key, value in (item.split("=", 1) for item in text.split(","))}
    if name == "grayscale":
        if text.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"--grayscale: true or false, got {text!r}")
        return text.lower() in ("true", "1")
    default = getattr(GeneratorOptions, name)
    return type(default)(text)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m mer.synthetic --root DIR [--seed S] [--subjects K] [--clips-per-subject M]
    [--size default|casme2] [--from-config conf/dataset/NAME.yaml] [--<option> VALUE ...]``.

    ``--from-config`` takes the ``generator`` node of a dataset config (e.g. ``conf/dataset/synthetic_hard.yaml``):
    the same corpus as ``dataset=NAME`` generates. Flags given beside it override it.
    """
    parser = argparse.ArgumentParser(prog="python -m mer.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder to write the corpus to")
    parser.add_argument("--from-config", type=Path, metavar="YAML",
                        help="a dataset config whose `generator` node gives seed, size and options")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", choices=sorted(CORPUS_SIZES), default=argparse.SUPPRESS,
                        help="corpus size preset: default 10 x 8 clips, casme2 26 subjects x 10 clips")
    parser.add_argument("--subjects", type=int, default=argparse.SUPPRESS, help="number of subjects (default 10)")
    parser.add_argument("--clips-per-subject", type=int, default=argparse.SUPPRESS, help="clips per subject (8)")
    parser.add_argument("--workers", type=int, default=GeneratorOptions.workers,
                        help="rendering processes (the output does not depend on it)")
    for name, text in _OPTION_FLAGS.items():
        default = getattr(GeneratorOptions, name)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                            nargs=2 if name == "apex_displacement_px" else None,
                            metavar=("LOW", "HIGH") if name == "apex_displacement_px" else None,
                            help=f"{text} (default {default})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing corpus at --root")
    arguments = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generator: dict[str, Any] = {"seed": 0, "subjects": 10, "clips_per_subject": 8}
    if arguments.get("from_config") is not None:
        from omegaconf import OmegaConf

        node = OmegaConf.load(arguments["from_config"]).get("generator")
        if node is None:
            parser.error(f"{arguments['from_config']} has no `generator` node")
        generator.update(OmegaConf.to_container(node, resolve=True))
    if "size" in arguments:
        generator["subjects"], generator["clips_per_subject"] = CORPUS_SIZES[arguments["size"]]
    for name in ("seed", "subjects", "clips_per_subject"):
        if name in arguments:
            generator[name] = arguments[name]
    for name in _OPTION_FLAGS:
        if name in arguments:
            generator[name] = _parse_option(name, arguments[name])
    generator["workers"] = arguments["workers"]
    generate_corpus(arguments["root"], overwrite=arguments["overwrite"], **generator)


if __name__ == "__main__":
    main()
