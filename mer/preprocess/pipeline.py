"""Raw clips -> the cache: the driver of ``preprocess.py``.

Each clip is processed on its own (in worker processes when ``preprocess.workers > 1``) and its
result written under ``clips/`` through a temporary name, so an interrupted run resumes where it
stopped. Once every clip has a result, the arrays, tables and fold graphs are assembled and the
manifest is written last.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mer.data.samples import AnnotationError, index_frames, read_sample_table
from mer.preprocess.flow_image import representation_name
from mer.preprocess.cache import (
    HASHED_NODES,
    MANIFEST,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_text,
    cache_dir_for,
    cache_key,
    is_complete,
    preprocessing_settings,
)

log = logging.getLogger(__name__)


def ensure_corpus(cfg: DictConfig) -> None:
    """Generate the synthetic corpus when the dataset config asks for it and it is not on disk."""
    if cfg.dataset.get("generate_if_missing", False):
        from mer.synthetic import ensure_corpus as ensure_synthetic

        ensure_synthetic(cfg.dataset)


def clip_id(sample: pd.Series | dict) -> str:
    """File-system-safe unique name of a clip."""
    return f"{sample['subject']}__{sample['clip']}".replace("/", "_")


def _clip_result_path(clips_dir: Path, sample: Any) -> Path:
    return clips_dir / f"{clip_id(sample)}.npz"


def _clip_rejected_path(clips_dir: Path, sample: Any) -> Path:
    return clips_dir / f"{clip_id(sample)}.rejected.json"


def _process_one(sample: dict, cfg_container: dict, clips_dir: str, on_error: str) -> tuple[str, dict]:
    """Process one clip and persist its outcome. Runs in a worker process.

    Returns:
        ``("ok", timings)`` or ``("rejected", {"reason": ...})``.
    """
    from mer.preprocess.clip import process_clip
    from mer.preprocess.errors import ClipError, ConfigError

    cfg = OmegaConf.create(cfg_container)
    clips_dir = Path(clips_dir)
    try:
        frame_paths = index_frames(sample["frames_dir"], cfg.dataset.frame_regex)
        result = process_clip(sample, frame_paths, cfg)
    except ConfigError:
        raise  # the same for every clip: the run stops (check_config normally finds it before any clip)
    except Exception as error:  # noqa: BLE001 - every failure is reported per clip, or re-raised below
        if on_error == "raise" or not isinstance(error, (ClipError, OSError, ValueError)):
            raise RuntimeError(f"clip {sample['subject']}/{sample['clip']}: {error}") from error
        reason = str(error)
        payload = {"subject": sample["subject"], "clip": sample["clip"], "reason": reason}
        atomic_write_text(_clip_rejected_path(clips_dir, sample), json.dumps(payload, sort_keys=True))
        return "rejected", payload
    if not np.all(np.isfinite(result.patches)):
        raise RuntimeError(f"clip {sample['subject']}/{sample['clip']}: non-finite patches")
    buffer = _npz_bytes(patches=result.patches.astype(np.float32), landmarks=result.landmarks.astype(np.float32))
    atomic_write_bytes(_clip_result_path(clips_dir, sample), buffer)
    return "ok", dict(result.timings)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _pending(samples: pd.DataFrame, clips_dir: Path) -> Iterator[dict]:
    for _, row in samples.iterrows():
        if not _clip_result_path(clips_dir, row).is_file() and not _clip_rejected_path(clips_dir, row).is_file():
            yield row.to_dict()


def worker_config(cfg: DictConfig) -> dict[str, Any]:
    """The plain, resolved config a clip needs: the hashed nodes only.

    Interpolations such as ``${paths.weights_dir}`` are resolved here, in the main process: ``paths`` and
    ``hydra`` are not passed on (they may not resolve outside the main process).
    """
    return {
        node: OmegaConf.to_container(cfg[node], resolve=True) if isinstance(cfg[node], DictConfig) else cfg[node]
        for node in HASHED_NODES
    }


def _worker_init() -> None:
    import cv2

    # Parallelism comes from the worker processes; OpenCV threads would oversubscribe the cores.
    cv2.setNumThreads(1)


def _pool_worker_init() -> None:
    import torch

    _worker_init()
    # Likewise for the learned stages (RIFE, MagNet) in each of several worker processes.
    torch.set_num_threads(1)


@contextmanager
def spawn_context() -> Iterator[multiprocessing.context.BaseContext]:
    """The multiprocessing context of the clip workers: ``spawn``, made safe inside foreign process pools.

    A spawned child re-applies its parent's *global* start method before it unpickles anything
    (``multiprocessing.spawn.prepare``). Inside a joblib (loky) worker that method is ``"loky"``, a name the
    fresh child has not registered, so every clip worker died with "cannot find context for 'loky'". While
    the pool starts its workers, the global start method is therefore set to ``spawn`` when it is not one of
    the standard methods, and restored afterwards.

    Yields:
        The ``spawn`` context to give :class:`~concurrent.futures.ProcessPoolExecutor`.
    """
    previous = multiprocessing.get_start_method(allow_none=True)
    foreign = previous is not None and previous not in multiprocessing.get_all_start_methods()
    if foreign:
        multiprocessing.set_start_method("spawn", force=True)
    try:
        yield multiprocessing.get_context("spawn")
    finally:
        if foreign:
            multiprocessing.set_start_method(previous, force=True)


def run_preprocessing(cfg: DictConfig, progress: bool = True) -> Path:
    """Build the cache for ``cfg`` (a no-op when it is already complete).

    Args:
        cfg: The resolved preprocessing config (``conf/preprocess.yaml``).
        progress: Show a progress bar over clips.

    Returns:
        The complete cache directory.

    Raises:
        ConfigError: A config no clip can run with (e.g. missing weights of a learned stage), found before any
            clip runs.
        AnnotationError: A sheet problem with ``preprocess.on_error=raise``.
        RuntimeError: A clip failed with ``preprocess.on_error=raise`` (the message names it).
    """
    from mer.preprocess.clip import check_config

    out = cache_dir_for(cfg)
    if is_complete(out):
        log.info("cache is complete: %s", out)
        return out
    on_error = str(cfg.preprocess.on_error)
    if on_error not in ("skip", "raise"):
        raise ValueError(f"preprocess.on_error must be 'skip' or 'raise', got {on_error!r}")
    cfg_container = worker_config(cfg)
    # Once here rather than once per clip in every worker: a bad config (missing weights, motion=magnet without
    # magnification=magnet, ...) stops the run with its message instead of rejecting every clip for it.
    check_config(OmegaConf.create(cfg_container))
    ensure_corpus(cfg)

    samples, problems = read_sample_table(cfg.dataset, on_error=on_error)
    if samples.empty:
        raise AnnotationError(f"no usable clip in {cfg.dataset.root} ({len(problems)} problems)")
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    settings = preprocessing_settings(cfg)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(settings)))

    timings: dict[str, float] = {}
    todo = list(_pending(samples, clips_dir))
    log.info("%d clips, %d to process, cache %s", len(samples), len(todo), out)
    start = time.perf_counter()
    workers = int(cfg.preprocess.workers)
    bar = tqdm(total=len(todo), desc="preprocess", unit="clip", disable=not progress)
    if workers <= 1:
        _worker_init()
        for sample in todo:
            _record(_process_one(sample, cfg_container, str(clips_dir), on_error), timings, sample)
            bar.update()
    else:
        with spawn_context() as context, ProcessPoolExecutor(
            workers, mp_context=context, initializer=_pool_worker_init
        ) as pool:
            futures = {pool.submit(_process_one, s, cfg_container, str(clips_dir), on_error): s for s in todo}
            try:
                for future in as_completed(futures):
                    _record(future.result(), timings, futures[future])
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    bar.close()
    elapsed = time.perf_counter() - start
    _assemble(out, cfg, samples, problems, clips_dir, settings)
    atomic_write_text(
        out / "timings.json",
        json.dumps({"clips_processed": len(todo), "seconds": elapsed, "stage_seconds": timings}, indent=2),
    )
    if todo:
        log.info("processed %d clips in %.1f s (%.2f clips/s)", len(todo), elapsed, len(todo) / max(elapsed, 1e-9))
    return out


def _record(outcome: tuple[str, dict], timings: dict[str, float], sample: dict) -> None:
    status, info = outcome
    if status == "ok":
        for stage, seconds in info.items():
            timings[stage] = timings.get(stage, 0.0) + float(seconds)
    else:
        log.warning("rejected %s/%s: %s", sample["subject"], sample["clip"], info["reason"])


def _assemble(out: Path, cfg: DictConfig, samples: pd.DataFrame, problems: list, clips_dir: Path, settings: dict) -> None:
    """Gather per-clip results into the cache's arrays and tables, then write the manifest."""
    from mer.preprocess.au_graph import AUS, write_fold_graphs
    from mer.preprocess.rois import roi_indices

    # Problem.clip reads "subject/clip".
    rejected = [
        {"subject": str(p.clip).rpartition("/")[0], "clip": str(p.clip).rpartition("/")[2], "reason": p.message}
        for p in problems
        if p.fatal
    ]
    kept_rows, patches, landmarks = [], [], []
    for _, row in samples.iterrows():
        result_path = _clip_result_path(clips_dir, row)
        if result_path.is_file():
            with np.load(result_path) as data:
                patches.append(data["patches"])
                landmarks.append(data["landmarks"])
            kept_rows.append(row)
        else:
            info = json.loads(_clip_rejected_path(clips_dir, row).read_text())
            rejected.append({"subject": row["subject"], "clip": row["clip"], "reason": info["reason"]})
    if not kept_rows:
        raise RuntimeError(f"every clip was rejected; see {clips_dir}")
    kept = pd.DataFrame(kept_rows).reset_index(drop=True)
    table = kept.copy()
    table["aus"] = table["aus"].map(lambda aus: "+".join(str(a) for a in aus))
    atomic_write_text(out / "samples.csv", table.to_csv(index=False))
    atomic_write_text(
        out / "rejected.csv", pd.DataFrame(rejected, columns=["subject", "clip", "reason"]).to_csv(index=False)
    )
    patch_array = np.stack(patches).astype(np.float32)
    atomic_save_npy(out / "patches.npy", patch_array)
    atomic_save_npy(out / "landmarks.npy", np.stack(landmarks).astype(np.float32))
    subjects = sorted(kept["subject"].unique())
    write_fold_graphs(kept, out, subjects)

    _, region_sizes, region_names = roi_indices(cfg.rois)
    representation = representation_name(cfg.get("representation"))
    if representation == "flow_image":
        # One onset -> apex flow per clip: no paths, no amplification factors.
        alphas, test_alpha, frames = [], None, 1
        axes = ["clip", "channel", "row", "col"]
    else:
        alphas = [float(a) for a in cfg.magnification.alphas]
        test_alpha = float(cfg.magnification.test_alpha)
        if test_alpha not in alphas:
            raise ValueError(f"magnification.test_alpha {test_alpha} is not one of magnification.alphas {alphas}")
        frames, axes = int(cfg.frames), ["clip", "alpha", "path", "roi", "channel", "row", "col"]
    manifest = {
        "cache_version": settings["cache_version"],
        "key": cache_key(cfg),
        "dataset": str(cfg.dataset.name),
        "representation": representation,
        "clips": int(patch_array.shape[0]),
        "rejected": len(rejected),
        "shape": list(patch_array.shape),
        "axes": axes,
        "alphas": alphas,
        "test_alpha": test_alpha,
        "frames": frames,
        "region_names": list(region_names),
        "region_sizes": [int(s) for s in region_sizes],
        "classes": list(cfg.dataset.classes),
        "subjects": subjects,
        "aus": list(AUS),
    }
    # Written last: its presence is what marks the directory complete.
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
