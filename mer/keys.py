"""Which config keys decide a result, in one place, and the one hash of a config.

Three kinds of keys:

- the **preprocessing nodes** (:data:`PREPROCESSING_NODES`) decide what a cache holds; their hash, less
  :data:`PREPROCESSING_RUN_ONLY_KEYS`, is the cache key (:func:`mer.cache.cache_key`);
- the **run-only keys** (:data:`RUN_ONLY_KEYS`) say how or where a run went, not what was trained and tested: the
  fold jobs of one configuration differ in them and are pooled together (:mod:`mer.evaluation.sweep`);
- the **replicate keys** (:data:`REPLICATE_KEYS`, ``seed``) repeat a configuration rather than change it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

#: Config nodes that decide what the cache contains.
PREPROCESSING_NODES = ("dataset", "representation", "frames", "rois", "interpolation", "magnification", "motion",
                       "stabilize", "preprocess")
#: Keys of the preprocessing nodes that change how preprocessing goes, not what it produces.
PREPROCESSING_RUN_ONLY_KEYS = {
    "dataset": ("generate_if_missing", "sheet_notes"),
    "preprocess": ("workers", "on_error", "rebuild"),
}
#: Top-level keys that ``preprocess.py`` has (the rest only train: fold, trainer, data, ...).
PREPROCESS_COMMAND_KEYS = (*PREPROCESSING_NODES, "paths", "experiment")

#: Config keys (dotted; a key covers its whole subtree) that say how or where a run went, not what
#: was trained and tested. They never separate configurations: the fold jobs of one configuration
#: differ in ``fold`` (and, with one GPU per job, in ``trainer.devices``) and are pooled together.
RUN_ONLY_KEYS = (
    "fold", "resume", "verbose", "paths", "logger", "preprocess_if_missing", "preprocess.workers",
    "preprocess.rebuild", "save_checkpoints",
    "trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.checkpoint_s",
)

#: Config keys that replicate a configuration rather than change it: the runs of one configuration that differ
#: only in these are its replicates (pooled each on its own, then summarised as mean and spread).
REPLICATE_KEYS = ("seed",)


def _matches(key: str, keys: Sequence[str]) -> bool:
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in keys)


def is_run_only(key: str) -> bool:
    """Whether a dotted config key (or an override's key, ``+``/``~`` prefixes allowed) is in :data:`RUN_ONLY_KEYS`."""
    return _matches(key, RUN_ONLY_KEYS)


def is_replicate(key: str) -> bool:
    """Whether a dotted config key (or an override's key) is in :data:`REPLICATE_KEYS` (``seed``)."""
    return _matches(key, REPLICATE_KEYS)


def digest(value: Any, digits: int = 16) -> str:
    """Stable hex hash of a JSON-able value (keys sorted; other objects by ``str``): the one config hash.

    Args:
        value: Settings as plain containers.
        digits: Hex digits kept (16 = 64 bits).
    """
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:digits]
