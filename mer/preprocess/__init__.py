"""Per-clip preprocessing stages: face crop, interpolation, magnification, motion maps, ROI patches, AU graphs."""

from mer.errors import ClipError

__all__ = ["ClipError"]
