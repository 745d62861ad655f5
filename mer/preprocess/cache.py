"""The preprocessed cache: where it lives, how it is keyed, how it is read.

A cache directory is ``<paths.cache_dir>/<dataset.name>/<key>/`` where ``key`` hashes every
preprocessing setting that can change a number in it. It holds::

    manifest.json      written LAST: only a directory with a manifest is complete
    samples.csv        the accepted clips (the sample table), row i <-> patches[i]
    patches.npy        the model inputs, float32, memory-mappable: (clips, A, N, R, C, 7, 7) ROI patches, or
                       (clips, C, S, S) flow images (manifest "representation": flow_image)
    landmarks.npy      float32 (clips, 68, 2), (x, y) in motion-map pixels
    rejected.csv       clips that could not be used, and why
    config.yaml        the resolved preprocessing config
    au_graph/fold_XX.npz   the AU co-occurrence graph of each LOSO fold (training subjects only)
    clips/             one result per clip, the unit of resumption
    timings.json       per-stage seconds of the last run (run-specific, not part of the result)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

#: Bumped whenever the meaning of a cache's contents changes, so old caches are never misread.
CACHE_VERSION = 3  # 2: lagrangian maps encode the output motion (1 + alpha) * flow; 3: the stabilize group

#: Config nodes that decide what the cache contains.
HASHED_NODES = ("dataset", "representation", "frames", "rois", "interpolation", "magnification", "motion", "stabilize",
                "preprocess")
#: Keys that change how a run goes, not what it produces.
UNHASHED_KEYS = {
    "dataset": ("generate_if_missing", "sheet_notes"),
    "preprocess": ("workers", "on_error"),
}

MANIFEST = "manifest.json"


class CacheMissingError(FileNotFoundError):
    """No complete cache exists for the requested settings."""


def preprocessing_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings that determine a cache's contents.

    Args:
        cfg: A config with the nodes of ``conf/preprocess.yaml`` (``train.yaml`` has them too).

    Returns:
        A plain dict of the hashed nodes, with run-only keys removed.

    Raises:
        SheetNotFoundError: ``dataset.sheet_version: auto`` finds no coding sheet (:func:`mer.data.samples.resolve_sheet`).
    """
    from mer.data.samples import resolve_sheet

    # `sheet_version: auto` becomes the version found on disk first (in cfg itself, so that the recorded config
    # says so too): caches of different sheets never share a key.
    resolve_sheet(cfg.dataset)
    settings = {}
    for node in HASHED_NODES:
        value = OmegaConf.to_container(cfg[node], resolve=True) if isinstance(cfg[node], DictConfig) else cfg[node]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in UNHASHED_KEYS.get(node, ())}
            if node == "dataset" and isinstance(value.get("sources"), dict):  # a composite's sources alike
                value["sources"] = {name: {k: v for k, v in source.items() if k not in UNHASHED_KEYS["dataset"]}
                                    for name, source in value["sources"].items()}
        settings[node] = value
    if isinstance(settings["dataset"], dict) and settings["dataset"].get("root") is not None:
        settings["dataset"]["root"] = str(Path(settings["dataset"]["root"]).expanduser().resolve())
    settings["cache_version"] = CACHE_VERSION
    return settings


def cache_key(cfg: DictConfig) -> str:
    """Short stable hash of :func:`preprocessing_settings`."""
    text = json.dumps(preprocessing_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir_for(cfg: DictConfig) -> Path:
    """The cache directory for a config (which may not exist yet)."""
    return Path(cfg.paths.cache_dir).expanduser() / str(cfg.dataset.name) / cache_key(cfg)


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds a finished cache (its manifest is written last)."""
    return (Path(directory) / MANIFEST).is_file()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Cache:
    """A complete cache, loaded into memory.

    Attributes:
        directory: Where it lives.
        manifest: The parsed ``manifest.json``.
        samples: The sample table of the accepted clips; row i describes ``patches[i]``.
        patches: float32 array (clips, A, N, R, C, 7, 7) of ROI patches, or (clips, C, S, S) of flow images.
        landmarks: float32 array (clips, 68, 2).
    """

    directory: Path
    manifest: dict[str, Any]
    samples: pd.DataFrame
    patches: np.ndarray
    landmarks: np.ndarray

    @property
    def representation(self) -> str:
        """``roi_patches`` or ``flow_image`` (a cache written before flow images holds ROI patches)."""
        return str(self.manifest.get("representation", "roi_patches"))

    @property
    def subjects(self) -> list[str]:
        """Sorted subject ids; fold k tests ``subjects[k]``."""
        return list(self.manifest["subjects"])

    def fold_graph(self, fold: int) -> dict[str, Any]:
        """The AU graph of fold ``fold``: ``adjacency`` (9, 9), ``test_subject``, ``train_subjects``."""
        path = self.directory / "au_graph" / f"fold_{fold:02d}.npz"
        if not path.is_file():
            raise CacheMissingError(f"{path} is missing: the cache at {self.directory} is incomplete")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def load_cache(directory: Path, mmap: bool = False) -> Cache:
    """Read a complete cache.

    Args:
        directory: A cache directory.
        mmap: Memory-map ``patches.npy`` instead of reading it (it is small: the default reads it).

    Raises:
        CacheMissingError: If the directory has no manifest (absent or unfinished).
    """
    directory = Path(directory)
    if not is_complete(directory):
        raise CacheMissingError(f"no complete cache at {directory} (no {MANIFEST})")
    manifest = json.loads((directory / MANIFEST).read_text())
    samples = pd.read_csv(directory / "samples.csv", dtype={"subject": str, "clip": str, "aus": str})
    samples["aus"] = samples["aus"].fillna("").map(lambda s: tuple(int(a) for a in s.split("+") if a))
    patches = np.load(directory / "patches.npy", mmap_mode="r" if mmap else None)
    landmarks = np.load(directory / "landmarks.npy")
    if len(samples) != patches.shape[0]:
        raise CacheMissingError(f"{directory}: samples.csv has {len(samples)} rows but patches {patches.shape[0]}")
    return Cache(directory, manifest, samples, patches, landmarks)
