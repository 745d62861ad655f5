"""Head-motion compensation (the ``stabilize`` config group).

Real clips carry small head movements about as large as the micro-expression itself (a tenth of a pixel per
frame adds up to a pixel over an onset-apex span), and a motion map that measures them buries the facial motion.
Two complementary steps remove them:

* **Frame registration** (``stabilize.register``): every loaded frame of the clip's face crop is aligned to the
  onset crop by a rigid (``euclidean``: rotation + translation), ``translation`` or ``affine`` transform, fitted by
  intensity with OpenCV's enhanced correlation coefficient (ECC) on the face: the bounding box of the stable
  region below (fitting on the whole crop would let the still background around the head pull the fit). A phase
  correlation gives the starting translation, so shifts of several pixels converge too. It runs before interpolation and flow, so
  every later stage sees a still head. The default model is a translation: on synthetic clips with a known head
  motion of about a pixel it recovers the head's displacement at the apex to 0.01 px without an expression and to
  0.05 px with one (median over clips of the largest error; the rigid model: 0.07 px).
* **Global-motion removal** (``stabilize.remove_global_motion=median``): from every optical flow, subtract its
  median over the *stable* region of the face: the face (the hull of the onset's 68 landmarks) less the brows and
  the mouth (``stabilize.exclude``, widened by ``stabilize.margin``), which the expression moves. That median is
  the motion of the head; what is left is the motion relative to the face. It
  catches what registration leaves (and works without it), for flow-based motion maps.

Both are on by default (``conf/stabilize/default.yaml``); ``stabilize=none`` turns both off. The choice is part of
the cache key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import cv2
import numpy as np

from mer.errors import ConfigError

log = logging.getLogger(__name__)

#: ``stabilize.register`` -> OpenCV's ECC motion model (``None``: no registration).
TRANSFORMS = {
    "none": None,
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
}
#: ``stabilize.remove_global_motion`` choices.
GLOBAL_MOTION = ("none", "median")

#: A region of an image: ``(x0, y0, x1, y1)``, pixels, ``x1``/``y1`` exclusive, or an ``(H, W)`` boolean mask.
Region = Union[tuple[int, int, int, int], np.ndarray]
#: Groups of dlib's 68 points whose regions the expression moves: each brow and the mouth.
MOVING_REGIONS = ((17, 18, 19, 20, 21), (22, 23, 24, 25, 26), tuple(range(48, 68)))


@dataclass(frozen=True)
class Stabilization:
    """The ``stabilize`` config group.

    Attributes:
        register: ``none``, ``translation``, ``euclidean`` or ``affine`` (see :data:`TRANSFORMS`).
        remove_global_motion: ``none`` or ``median``.
        iterations: ECC's iteration limit per frame.
        epsilon: ECC's convergence threshold (change of the correlation coefficient).
        smoothing: Side of the Gaussian ECC smooths both images with (odd; 0 or 1 = none). Smoothing widens the
            basin of convergence and averages out sensor noise.
        exclude: Groups of 68-point indices; the convex hull of each, widened by ``margin``, is left out of the
            face to make the stable region both steps work on.
        margin: How far each excluded region reaches beyond its hull, as a fraction of the crop side.
    """

    register: str = "translation"
    remove_global_motion: str = "median"
    iterations: int = 100
    epsilon: float = 1e-6
    smoothing: int = 5
    exclude: tuple[tuple[int, ...], ...] = MOVING_REGIONS
    margin: float = 0.04

    def __post_init__(self) -> None:
        if self.register not in TRANSFORMS:
            raise ConfigError(f"stabilize.register must be one of {sorted(TRANSFORMS)}, got {self.register!r}")
        if self.remove_global_motion not in GLOBAL_MOTION:
            raise ConfigError(
                f"stabilize.remove_global_motion must be one of {list(GLOBAL_MOTION)}, got {self.remove_global_motion!r}"
            )
        if int(self.iterations) < 1 or float(self.epsilon) <= 0:
            raise ConfigError("stabilize.iterations must be >= 1 and stabilize.epsilon > 0")
        if int(self.smoothing) < 0 or (int(self.smoothing) > 1 and int(self.smoothing) % 2 == 0):
            raise ConfigError(f"stabilize.smoothing must be 0, 1 or an odd number, got {self.smoothing}")
        if not all(len(group) >= 1 and all(0 <= int(i) < 68 for i in group) for group in self.exclude):
            raise ConfigError(f"stabilize.exclude must be lists of dlib's 68 point indices (0-67), got {self.exclude}")
        if not 0 <= float(self.margin) < 0.5:
            raise ConfigError(f"stabilize.margin is a fraction of the crop side in [0, 0.5), got {self.margin}")

    @property
    def active(self) -> bool:
        """Whether either step runs."""
        return self.register != "none" or self.remove_global_motion != "none"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "Stabilization":
        """From the ``stabilize`` config group; ``None`` (a config without the group) turns both steps off.

        Raises:
            ConfigError: An unknown choice or an invalid setting.
        """
        if cfg is None:
            return cls(register="none", remove_global_motion="none")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields - {"name"})
        if unknown:
            raise ConfigError(f"unknown stabilize setting(s) {unknown}; known: {sorted(fields)}")
        settings = {key: value for key, value in cfg.items() if key in fields}
        if "exclude" in settings:  # lists from YAML -> tuples (the dataclass is frozen and hashable)
            settings["exclude"] = tuple(tuple(int(i) for i in group) for group in settings["exclude"])
        return cls(**settings)

    def region(self, points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The stable region of a face: the hull of its 68 landmarks less the widened hulls of :attr:`exclude`.

        Args:
            points: ``(68, 2)`` ``(x, y)`` landmarks in the image's pixels.
            shape: ``(H, W, ...)`` of the image.

        Returns:
            ``(H, W)`` bool mask.
        """
        height, width = shape[:2]
        # Widened a little: the hull runs along the jaw line, whose edge is a strong feature that moves with the head.
        face = _hull_mask(points, range(68), (height, width), int(round(0.015 * max(height, width))))
        radius = int(round(self.margin * max(height, width)))
        for group in self.exclude:
            face &= ~_hull_mask(points, group, (height, width), radius)
        return face


def _hull_mask(points: np.ndarray, indices, shape: tuple[int, int], radius: int) -> np.ndarray:
    """``(H, W)`` bool: the convex hull of ``points[indices]``, dilated by ``radius`` pixels."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points[list(indices)]).astype(np.int32)), 1)
    if radius > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    return mask.astype(bool)


def _gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 gray of an ``(H, W, 3)`` RGB or ``(H, W)`` image in [0, 1]."""
    if image.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image, dtype=np.float32)


def region_mask(region: Region | None, shape: tuple[int, ...]) -> np.ndarray:
    """``(H, W)`` bool mask of ``region`` in an image of ``shape`` ``(H, W, ...)``: a box ``(x0, y0, x1, y1)``
    (cut to the image), a mask of that size, or ``None`` (the whole image). A region with fewer than 4 pixels
    inside the image is taken as the whole image."""
    height, width = shape[:2]
    if region is None:
        return np.ones((height, width), bool)
    if isinstance(region, np.ndarray) and region.ndim == 2:
        if region.shape != (height, width):
            raise ValueError(f"region mask {region.shape} does not match the image {(height, width)}")
        mask = region.astype(bool)
    else:
        x0, y0, x1, y1 = (int(v) for v in region)
        mask = np.zeros((height, width), bool)
        mask[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)] = True
    return mask if mask.sum() >= 4 else np.ones((height, width), bool)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a mask's true pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fit_transforms(
    frames: np.ndarray, settings: Stabilization, region: Region | None = None, reference: int = 0
) -> np.ndarray:
    """The transforms that align each frame to the reference frame.

    Args:
        frames: ``(T, H, W[, 3])`` float32 in [0, 1].
        settings: The motion model and ECC's settings (``settings.register`` must not be ``none``).
        region: Where to fit: a box ``(x0, y0, x1, y1)`` or an ``(H, W)`` mask (the stable region of the face,
            :meth:`Stabilization.region`); ``None`` = the whole image.
        reference: Index of the frame the others are aligned to (its own transform is the identity).

    Returns:
        ``(T, 2, 3)`` float32 affine matrices ``W`` with ``frame_t(W_t [x, y, 1]) ~ reference(x, y)``: the position
        in frame t of what is at ``(x, y)`` in the reference.
    """
    motion_type = TRANSFORMS[settings.register]
    if motion_type is None:
        raise ValueError("fit_transforms needs a motion model; stabilize.register is 'none'")
    template = _gray(frames[reference])
    x0, y0, x1, y1 = _bounds(region_mask(region, template.shape))
    if x1 - x0 < 8 or y1 - y0 < 8:  # too small to correlate: use the whole image
        x0, y0, x1, y1 = 0, 0, template.shape[1], template.shape[0]
    # ECC runs on the region's bounding box, without a mask: OpenCV's masked ECC was biased by 0.1-0.3 px on
    # synthetic clips whose head motion is known, the unmasked fit on the same pixels by < 0.03 px.
    template = template[y0:y1, x0:x1]
    window = cv2.createHanningWindow((x1 - x0, y1 - y0), cv2.CV_32F)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(settings.iterations), float(settings.epsilon))
    # Box coordinates -> image coordinates: W_image = shift(o) W_box shift(-o), o the box's corner.
    to_box, from_box = np.eye(3, dtype=np.float64), np.eye(3, dtype=np.float64)
    to_box[:2, 2], from_box[:2, 2] = (-x0, -y0), (x0, y0)
    transforms = np.tile(np.eye(2, 3, dtype=np.float32), (len(frames), 1, 1))
    for index in range(len(frames)):
        if index == reference:
            continue
        image = _gray(frames[index])[y0:y1, x0:x1]
        # Phase correlation gives the translation to start from: ECC alone only converges within about a
        # smoothing width of the answer.
        (shift_x, shift_y), _ = cv2.phaseCorrelate(template, image, window)
        warp = np.eye(2, 3, dtype=np.float32)
        warp[:, 2] = (shift_x, shift_y)
        try:
            _, warp = cv2.findTransformECC(template, image, warp, motion_type, criteria, None, max(settings.smoothing, 1))
        except cv2.error as error:
            # Keep the clip: the phase-correlation translation is a sound (if translation-only) fallback.
            log.warning("frame registration did not converge on frame %d (%s); using its translation only",
                        index, str(error).strip().splitlines()[-1])
        transforms[index] = (from_box @ np.vstack([warp, (0, 0, 1)]) @ to_box)[:2]
    return transforms


def apply_transforms(frames: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Resample each frame onto the reference's grid: ``out_t(x) = frame_t(W_t x)``.

    Frames whose transform moves no pixel by more than 1/1000 of a pixel are left as they are, so that a still
    clip is not blurred by resampling.

    Args:
        frames: ``(T, H, W[, 3])`` float32.
        transforms: ``(T, 2, 3)`` from :func:`fit_transforms`.

    Returns:
        ``(T, H, W[, 3])`` float32 (borders replicated).
    """
    height, width = frames.shape[1:3]
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], np.float32)
    out = frames.astype(np.float32, copy=True)
    for index, warp in enumerate(transforms):
        if np.abs(corners @ warp.T - corners[:, :2]).max() < 1e-3:
            continue
        out[index] = cv2.warpAffine(
            np.ascontiguousarray(frames[index], dtype=np.float32), warp.astype(np.float64), (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def register_frames(
    frames: np.ndarray, settings: Stabilization, region: Region | None = None, reference: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Align every frame to the reference frame (a no-op when ``settings.register`` is ``none``).

    Args:
        frames: ``(T, H, W[, 3])`` float32 in [0, 1], e.g. a clip's face crops, onset first.
        settings: See :class:`Stabilization`.
        region: Where to fit (see :func:`fit_transforms`).
        reference: Index of the reference frame.

    Returns:
        The aligned ``(T, H, W[, 3])`` float32 frames and the ``(T, 2, 3)`` transforms
        (see :func:`fit_transforms`).
    """
    if TRANSFORMS[settings.register] is None or len(frames) < 2:
        return frames, np.tile(np.eye(2, 3, dtype=np.float32), (len(frames), 1, 1))
    transforms = fit_transforms(frames, settings, region, reference)
    return apply_transforms(frames, transforms), transforms


def remove_global_motion(flows: np.ndarray, region: Region | None = None) -> np.ndarray:
    """Subtract from each flow its median over ``region``: the motion of the head.

    Args:
        flows: ``(..., H, W, 2)`` flows ``(u, v)``.
        region: A box ``(x0, y0, x1, y1)`` or an ``(H, W)`` mask in the flows' pixels; ``None`` = the whole field.

    Returns:
        ``(..., H, W, 2)`` float32 flows whose median over ``region`` is zero.
    """
    mask = region_mask(region, flows.shape[-3:-1])
    inside = flows[..., mask, :]  # (..., P, 2)
    median = np.median(inside, axis=-2)  # (..., 2)
    return (flows - median[..., None, None, :]).astype(np.float32)
