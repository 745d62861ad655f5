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
    clips/             one result per clip, the unit of resumption; each records the inputs it was made from
    timings.json       per-stage seconds of the last run (run-specific, not part of the result)

The manifest also records a fingerprint of the inputs (``inputs``: the coding sheets' content hashes and, per
clip, its sample-table row and its frame files' names, sizes and mtimes; see :mod:`mer.preprocess.inputs`), so
that a cache whose inputs changed after it was built is updated instead of reused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from mer.data.aus import parse_action_units
from mer.keys import PREPROCESSING_NODES, PREPROCESSING_RUN_ONLY_KEYS, digest

#: Bumped whenever the meaning of a cache's contents changes, so old caches are never misread.
CACHE_VERSION = 3  # 2: lagrangian maps encode the output motion (1 + alpha) * flow; 3: the stabilize group

MANIFEST = "manifest.json"


class CacheMissingError(FileNotFoundError):
    """No complete cache exists for the requested settings."""


class CacheCorruptError(CacheMissingError):
    """A "complete" cache holds a damaged file (a truncated array, a size that contradicts the manifest)."""


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
    for node in PREPROCESSING_NODES:
        value = OmegaConf.to_container(cfg[node], resolve=True) if isinstance(cfg[node], DictConfig) else cfg[node]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in PREPROCESSING_RUN_ONLY_KEYS.get(node, ())}
            if node == "dataset" and isinstance(value.get("sources"), dict):  # a composite's sources alike
                value["sources"] = {name: {k: v for k, v in source.items() if k not in PREPROCESSING_RUN_ONLY_KEYS["dataset"]}
                                    for name, source in value["sources"].items()}
        settings[node] = value
    if isinstance(settings["dataset"], dict) and settings["dataset"].get("root") is not None:
        settings["dataset"]["root"] = str(Path(settings["dataset"]["root"]).expanduser().resolve())
    settings["cache_version"] = CACHE_VERSION
    return settings


def alpha_index(alphas: Sequence[float], alpha: float, setting: str, among: str) -> int:
    """The one lookup of an amplification factor among a list of them (the test alpha among the cached ones).

    Factors are compared to float precision (``np.isclose``): ``1.2`` from YAML and ``1.2000000476837158`` from a
    float32 array are the same factor.

    Args:
        alphas: The factors, in cache order (the A axis of the patches).
        alpha: The one looked for.
        setting: The key ``alpha`` comes from, for the message (``magnification.test_alpha``, ``data.test_alpha``).
        among: What ``alphas`` are, for the message (``magnification.alphas``, ``the cached alphas``).

    Raises:
        ValueError: ``alpha`` is not one of ``alphas`` (the message names both).
    """
    matches = np.flatnonzero(np.isclose(np.asarray(alphas, dtype=np.float64), float(alpha)))
    if not matches.size:
        raise ValueError(f"{setting} {float(alpha):g} is not one of {among} {[float(a) for a in alphas]}")
    return int(matches[0])


def cache_key(cfg: DictConfig) -> str:
    """Short stable hash of :func:`preprocessing_settings`."""
    return digest(preprocessing_settings(cfg))


def cache_dir_for(cfg: DictConfig) -> Path:
    """The cache directory for a config (which may not exist yet)."""
    return Path(cfg.paths.cache_dir).expanduser() / str(cfg.dataset.name) / cache_key(cfg)


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds a finished cache (its manifest is written last)."""
    return (Path(directory) / MANIFEST).is_file()


def npy_problem(path: Path, expected_shape: tuple[int | None, ...] | None = None) -> str | None:
    """Why a ``.npy`` file cannot be the array it claims to be, or None when it is whole.

    Reads only the header: the data size it implies must equal what follows the header on disk, and its
    shape must be ``expected_shape`` (None entries match anything). A file cut short by a full disk or a
    copy killed half-way is caught here, before any reader trusts it.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                shape, _, dtype = np.lib.format._read_array_header(handle, version)  # noqa: SLF001 - v3 headers
            offset = handle.tell()
    except (OSError, ValueError, SyntaxError) as error:
        return f"{path} has no readable .npy header ({error})"
    needed = offset + math.prod(shape) * dtype.itemsize
    if size != needed:
        return (f"{path} is {size} bytes but its header ({tuple(shape)} {dtype}) needs {needed}: "
                f"{'truncated' if size < needed else 'trailing data'}")
    if expected_shape is not None and (len(shape) != len(expected_shape) or any(
            e is not None and int(e) != int(s) for s, e in zip(shape, expected_shape))):
        return f"{path} holds shape {tuple(shape)}, the manifest says {tuple(expected_shape)}"
    return None


def check_arrays(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """The damaged arrays of a complete cache (empty when ``patches.npy`` and ``landmarks.npy`` are whole)."""
    directory = Path(directory)
    shape = manifest.get("shape")
    clips = manifest.get("clips")
    expected = {
        "patches.npy": tuple(shape) if shape else None,
        "landmarks.npy": (clips, None, 2) if clips is not None else None,
    }
    return [problem for name, want in expected.items() if (problem := npy_problem(directory / name, want))]


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
        CacheCorruptError: An array is damaged (truncated, or not the manifest's shape); the message names it.
    """
    directory = Path(directory)
    if not is_complete(directory):
        raise CacheMissingError(f"no complete cache at {directory} (no {MANIFEST})")
    manifest = json.loads((directory / MANIFEST).read_text())
    problems = check_arrays(directory, manifest)
    if problems:
        raise CacheCorruptError(
            "damaged cache: " + "; ".join(problems)
            + "\n  rerun preprocess.py with the same settings: it rebuilds the arrays from the per-clip results")
    samples = pd.read_csv(directory / "samples.csv", dtype={"subject": str, "clip": str, "aus": str})
    samples["aus"] = samples["aus"].fillna("").map(lambda code: parse_action_units(code)[0])
    patches = np.load(directory / "patches.npy", mmap_mode="r" if mmap else None)
    landmarks = np.load(directory / "landmarks.npy")
    if len(samples) != patches.shape[0]:
        raise CacheMissingError(f"{directory}: samples.csv has {len(samples)} rows but patches {patches.shape[0]}")
    return Cache(directory, manifest, samples, patches, landmarks)
