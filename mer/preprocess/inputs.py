"""What a cache was made from: a fingerprint of its inputs, and whether they have changed since.

The cache key hashes the settings only; the inputs (coding sheet, frames) can change under a cache
without changing its key: a label or an onset fixed in the sheet, a missing frame restored, frames
replaced. The fingerprint records, per cache:

- ``sheets``: the sha256 of every sheet the sample table is read from (the coding sheet; a composite's
  sources' sheets and its membership list);
- ``clips``: per clip (``"subject/clip"``), its sample-table ``row`` (onset, apex, offset, AUs, label, frames
  folder, ...) and its ``frames``: the count and a digest of the (name, size, mtime_ns) of every file of its
  folder that matches ``dataset.frame_regex``;
- ``sheet_rejected``: how many sheet rows were rejected while reading the sheet (bad row, missing frames).

Frames are stat'ed, not read: a no-op rerun over thousands of frames stays fast. A rewrite that keeps a
file's size and its mtime to the nanosecond goes unseen; ``preprocess.rebuild=true`` rebuilds everything.

Each per-clip result under ``clips/`` embeds the clip's record, so a clip is reprocessed exactly when its
own inputs differ from those it was made from, whether or not the cache was ever completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mer.cache import MANIFEST, check_arrays
from mer.keys import digest

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-ready form of a sample-table value (numpy scalars, tuples of AUs, paths)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN (a missing optional field) compares unequal to itself
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def clip_key(sample: Mapping[str, Any]) -> str:
    """The fingerprint's name of a clip: ``subject/clip``."""
    return f"{sample['subject']}/{sample['clip']}"


def sheet_files(dataset_cfg: Mapping[str, Any]) -> list[Path]:
    """The files the sample table is read from (frames aside): the coding sheet, or a composite's sources' sheets
    and its membership list. A corpus without a sheet (clips from folder names) has none."""
    if dataset_cfg.get("sources"):
        files = [path for source in dataset_cfg["sources"].values() for path in sheet_files(source)]
        if dataset_cfg.get("membership"):
            files.append(Path(str(dataset_cfg["membership"])))
        return files
    if dataset_cfg.get("annotation") and dataset_cfg.get("root") is not None:
        return [Path(str(dataset_cfg["root"])) / str(dataset_cfg["annotation"])]
    return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sheet_fingerprint(dataset_cfg: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of each of :func:`sheet_files` (``"missing"`` for one that does not exist), by resolved path."""
    return {str(path.expanduser().resolve()): _sha256(path) if path.is_file() else "missing"
            for path in sheet_files(dataset_cfg)}


def frames_fingerprint(frames_dir: str | os.PathLike, frame_regex: str) -> dict[str, Any]:
    """Count and digest of the (name, size, mtime_ns) of the frame files of one clip folder (stat only)."""
    pattern = re.compile(frame_regex)
    listing = []
    try:
        with os.scandir(frames_dir) as entries:
            for entry in entries:
                if pattern.fullmatch(entry.name) and entry.is_file():
                    stat = entry.stat()
                    listing.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except FileNotFoundError:
        return {"count": 0, "digest": "missing"}
    listing.sort()
    return {"count": len(listing), "digest": digest(listing)}


def clip_inputs(sample: Mapping[str, Any], frame_regex: str) -> dict[str, Any]:
    """One clip's record: its sample-table ``row`` and its ``frames`` (:func:`frames_fingerprint`)."""
    return {"row": {str(k): _plain(v) for k, v in sample.items()},
            "frames": frames_fingerprint(sample["frames_dir"], frame_regex)}


def input_fingerprint(dataset_cfg: Mapping[str, Any], samples: pd.DataFrame, problems: list | None = None
                      ) -> dict[str, Any]:
    """The fingerprint of a corpus as read into ``samples`` with ``problems`` (see the module docstring)."""
    regex = str(dataset_cfg["frame_regex"])
    return {"sheets": sheet_fingerprint(dataset_cfg),
            "clips": {clip_key(row): clip_inputs(row, regex) for row in samples.to_dict("records")},
            "sheet_rejected": sum(1 for p in problems or [] if p.fatal)}


def fingerprint_digest(fingerprint: Mapping[str, Any] | None) -> str | None:
    """A short stable hash of a fingerprint (what a training run records of the cache it trained on)."""
    if fingerprint is None:
        return None
    return digest(fingerprint)


def describe_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between two records of one clip, in words (``"onset 3 -> 4; frames changed (30 -> 31 files)"``)."""
    if not old:
        return "no record of the inputs it was made from"
    parts = []
    old_row, new_row = old.get("row", {}), new.get("row", {})
    for field in sorted(set(old_row) | set(new_row)):
        if old_row.get(field) != new_row.get(field):
            parts.append(f"{field} {old_row.get(field)!r} -> {new_row.get(field)!r}")
    old_frames, new_frames = old.get("frames", {}), new.get("frames", {})
    if old_frames != new_frames:
        if old_frames.get("count") != new_frames.get("count"):
            parts.append(f"frames changed ({old_frames.get('count')} -> {new_frames.get('count')} files)")
        else:
            parts.append(f"frames changed ({new_frames.get('count')} files; a size or mtime differs)")
    return "; ".join(parts) or "record format changed"


def compare_fingerprints(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What changed between the fingerprint a cache records and the inputs now, one line per finding."""
    if old is None:
        return ["the manifest records no fingerprint of its inputs (built by an older version)"]
    reasons = []
    for path in sorted(set(old.get("sheets", {})) | set(new.get("sheets", {}))):
        if old.get("sheets", {}).get(path) != new.get("sheets", {}).get(path):
            reasons.append(f"sheet {path} changed")
    if old.get("sheet_rejected") != new.get("sheet_rejected"):
        reasons.append(f"sheet rows rejected: {old.get('sheet_rejected')} before, {new.get('sheet_rejected')} now")
    old_clips, new_clips = old.get("clips", {}), new.get("clips", {})
    for key in sorted(set(old_clips) | set(new_clips)):
        if key not in new_clips:
            reasons.append(f"clip {key} is no longer in the sample table")
        elif key not in old_clips:
            reasons.append(f"clip {key} is new in the sample table")
        elif old_clips[key] != new_clips[key]:
            reasons.append(f"clip {key}: {describe_change(old_clips[key], new_clips[key])}")
    return reasons


def check_cache(cfg: Any, directory: Path) -> tuple[bool, list[str]]:
    """Whether a complete cache is still the cache of its inputs, and if not, why.

    Checks that its arrays are whole (:func:`mer.cache.check_arrays`), then compares the manifest's
    input fingerprint with the inputs on disk. When the coding sheet cannot be found (a cache used on a machine
    without the corpus) it cannot be checked: a warning says so and the cache is used as built.

    Args:
        cfg: A config with ``dataset`` and ``preprocess`` nodes.
        directory: A complete cache directory (it has a manifest).

    Returns:
        ``(fresh, reasons)``: ``fresh`` when nothing changed; else ``reasons`` lists what did.
    """
    from mer.data.samples import read_sample_table

    manifest = json.loads((Path(directory) / MANIFEST).read_text())
    damaged = check_arrays(directory, manifest)
    if damaged:
        return False, damaged
    recorded = manifest.get("inputs")
    missing = [path for path in sheet_files(cfg.dataset) if not path.is_file()]
    if missing:
        log.warning("cannot check the cache %s against its inputs (%s missing): using it as built", directory,
                    ", ".join(map(str, missing)))
        return True, []
    if recorded is None:
        return False, compare_fingerprints(None, {})
    if _unchanged_without_reading(cfg.dataset, recorded):
        return True, []
    samples, problems = read_sample_table(cfg.dataset, on_error="skip")
    reasons = compare_fingerprints(recorded, input_fingerprint(cfg.dataset, samples, problems))
    return not reasons, reasons


def _unchanged_without_reading(dataset_cfg: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """True when the sample table cannot have changed: same sheets, no row rejected, same frames of every clip.

    The sample table is a function of the sheet and of the frames of its clips; when no row was rejected,
    every clip's frames are in the record, so re-stat'ing them suffices and the sheet is not parsed again
    (parsing can be slow: ``apex_policy=max_flow`` computes optical flow). With rejected rows (whose frames
    the record lacks: one may have been restored) or no sheet at all (clips found in folders), the table is
    read again.
    """
    if recorded.get("sheet_rejected") != 0 or not sheet_files(dataset_cfg):
        return False
    if recorded.get("sheets") != sheet_fingerprint(dataset_cfg):
        return False
    regex = str(dataset_cfg["frame_regex"])
    return all(frames_fingerprint(clip["row"]["frames_dir"], regex) == clip["frames"]
               for clip in recorded.get("clips", {}).values())
