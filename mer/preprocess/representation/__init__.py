"""The model input a cache holds (``representation=roi_patches|flow_image``).

``roi_patches`` (the paper's, the default): N magnified motion maps cut into ROI patches (:mod:`mer.preprocess.rois`,
assembled in :mod:`mer.preprocess.clip`); ``flow_image``: the onset -> apex flow as a small multi-channel image
(:mod:`mer.preprocess.representation.flow_image`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mer.errors import ConfigError

#: The representations a cache can hold (``representation.name``).
REPRESENTATIONS = ("roi_patches", "flow_image")


def representation_name(cfg: Mapping[str, Any] | None) -> str:
    """The representation a config selects (``roi_patches`` when it has no ``representation`` group).

    Raises:
        ConfigError: An unknown name.
    """
    name = "roi_patches" if cfg is None else str(cfg.get("name", "roi_patches"))
    if name not in REPRESENTATIONS:
        raise ConfigError(f"unknown representation {name!r}; choose one of {list(REPRESENTATIONS)}")
    return name
