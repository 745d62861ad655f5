"""Building blocks shared by the architectures of :mod:`mer.models` (not selectable on their own)."""
