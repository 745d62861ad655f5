"""Per-clip preprocessing stages: face crop, interpolation, magnification, motion maps, ROI patches, AU graphs."""

from mer.preprocess.errors import ClipError

__all__ = ["ClipError"]
