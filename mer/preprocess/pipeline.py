"""Raw clips -> the cache: the driver of ``preprocess.py``.

Each clip is processed on its own (in worker processes when ``preprocess.workers > 1``) and its
result written under ``clips/`` through a temporary name, so an interrupted run resumes where it
stopped. Once every clip has a result, the arrays, tables and fold graphs are assembled and the
manifest is written last.

Each result records the inputs it was made from (:mod:`mer.preprocess.inputs`): a rerun reprocesses
exactly the clips whose sheet row or frame files changed (and retries rejected ones whose inputs
changed), re-assembles the cache and says which clips changed and why. ``preprocess.rebuild=true``
reprocesses every clip.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mer.cache import MANIFEST, alpha_index, cache_dir_for, cache_key, is_complete, preprocessing_settings
from mer.data.frames import index_frames
from mer.data.samples import read_sample_table
from mer.data.table import AnnotationError
from mer.files import atomic_save_npy, atomic_write_bytes, atomic_write_text
from mer.keys import PREPROCESSING_NODES
from mer.preprocess.inputs import check_cache, clip_key, describe_change, input_fingerprint
from mer.preprocess.representation import representation_name
from mer.processes import spawn_context, watch_parent

log = logging.getLogger(__name__)


def ensure_corpus(cfg: DictConfig) -> None:
    """Generate the synthetic corpus when the dataset config asks for it and it is not on disk.

    Raises:
        ConfigError: ``dataset.root`` is a folder that holds other things and no corpus (it is not replaced).
    """
    if cfg.dataset.get("generate_if_missing", False):
        from mer.errors import ConfigError
        from mer.synthetic import ensure_corpus as ensure_synthetic

        try:
            ensure_synthetic(cfg.dataset)
        except FileExistsError as error:
            raise ConfigError(f"dataset.root={cfg.dataset.root} holds no {cfg.dataset.get('annotation')} but is not "
                              f"empty, so no corpus is generated there ({error}); point dataset.root at the corpus, "
                              "or at a new or empty folder to generate one") from None


def clip_id(sample: pd.Series | dict) -> str:
    """File-system-safe unique name of a clip."""
    return f"{sample['subject']}__{sample['clip']}".replace("/", "_")


def _clip_result_path(clips_dir: Path, sample: Any) -> Path:
    return clips_dir / f"{clip_id(sample)}.npz"


def _clip_rejected_path(clips_dir: Path, sample: Any) -> Path:
    return clips_dir / f"{clip_id(sample)}.rejected.json"


#: Key of the sample dict under which the driver hands a worker the clip's input record (not a sheet field).
_INPUTS = "_inputs"


def _recorded_inputs(clips_dir: Path, sample: Any) -> tuple[bool, dict | None]:
    """Whether a clip has a result (or a rejection), and the input record stored in it (None if unreadable)."""
    result, rejected = _clip_result_path(clips_dir, sample), _clip_rejected_path(clips_dir, sample)
    try:
        if result.is_file():
            with np.load(result) as data:
                return True, json.loads(bytes(data["inputs"]).decode()) if "inputs" in data.files else None
        if rejected.is_file():
            return True, json.loads(rejected.read_text()).get("inputs")
    except Exception:  # noqa: BLE001 - a damaged result (truncated, garbage) is redone like a stale one
        return True, None
    return False, None


def _process_one(sample: dict, cfg_container: dict, clips_dir: str, on_error: str) -> tuple[str, dict]:
    """Process one clip and persist its outcome. Runs in a worker process.

    Returns:
        ``("ok", timings)`` or ``("rejected", {"reason": ...})``.
    """
    from mer.errors import ClipError, ConfigError
    from mer.preprocess.clip import process_clip

    cfg = OmegaConf.create(cfg_container)
    clips_dir = Path(clips_dir)
    sample = dict(sample)
    inputs = sample.pop(_INPUTS, None)
    record = {} if inputs is None else {"inputs": inputs}
    try:
        frame_paths = index_frames(sample["frames_dir"], cfg.dataset.frame_regex)
        result = process_clip(sample, frame_paths, cfg, keep_magnified=False)  # the cache keeps no frames
    except ConfigError:
        raise  # the same for every clip: the run stops (check_config normally finds it before any clip)
    except Exception as error:  # noqa: BLE001 - every failure is reported per clip, or re-raised below
        if on_error == "raise" or not isinstance(error, (ClipError, OSError, ValueError)):
            raise RuntimeError(f"clip {sample['subject']}/{sample['clip']}: {error}") from error
        reason = str(error)
        payload = {"subject": sample["subject"], "clip": sample["clip"], "reason": reason}
        atomic_write_text(_clip_rejected_path(clips_dir, sample), json.dumps({**payload, **record}, sort_keys=True))
        return "rejected", payload
    if not np.all(np.isfinite(result.patches)):
        raise RuntimeError(f"clip {sample['subject']}/{sample['clip']}: non-finite patches")
    # The input record travels inside the result (one atomic file): a result is never paired with another's record.
    extra = {"inputs": np.frombuffer(json.dumps(inputs, sort_keys=True).encode(), np.uint8)} if inputs is not None else {}
    buffer = _npz_bytes(patches=result.patches.astype(np.float32), landmarks=result.landmarks.astype(np.float32),
                        **extra)
    atomic_write_bytes(_clip_result_path(clips_dir, sample), buffer)
    return "ok", dict(result.timings)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _pending(samples: pd.DataFrame, clips_dir: Path, inputs: dict[str, dict] | None = None) -> Iterator[dict]:
    """The clips to process: those without a result, and those whose result was made from other inputs.

    Args:
        samples: The sample table.
        clips_dir: The cache's ``clips/``.
        inputs: ``subject/clip`` -> the clip's current input record; None to trust any existing result.
    """
    for _, row in samples.iterrows():
        sample = row.to_dict()
        current = None if inputs is None else inputs[clip_key(sample)]
        exists, recorded = _recorded_inputs(clips_dir, sample)
        if exists and (current is None or recorded == current):
            continue
        if exists:
            log.info("clip %s/%s changed since it was processed (%s): reprocessing it", sample["subject"],
                     sample["clip"], describe_change(recorded, current))
            _clip_result_path(clips_dir, sample).unlink(missing_ok=True)
            _clip_rejected_path(clips_dir, sample).unlink(missing_ok=True)
        if current is not None:
            sample[_INPUTS] = current
        yield sample


def worker_config(cfg: DictConfig) -> dict[str, Any]:
    """The plain, resolved config a clip needs: the hashed nodes only.

    Interpolations such as ``${paths.weights_dir}`` are resolved here, in the main process: ``paths`` and
    ``hydra`` are not passed on (they may not resolve outside the main process).
    """
    return {
        node: OmegaConf.to_container(cfg[node], resolve=True) if isinstance(cfg[node], DictConfig) else cfg[node]
        for node in PREPROCESSING_NODES
    }


def _worker_init() -> None:
    import cv2

    # Parallelism comes from the worker processes; OpenCV threads would oversubscribe the cores.
    cv2.setNumThreads(1)


def _pool_worker_init() -> None:
    # First, before the slow imports: a parent killed while its workers start must not leave them running.
    watch_parent()
    import torch

    _worker_init()
    # Likewise for the learned stages (RIFE, MagNet) in each of several worker processes.
    torch.set_num_threads(1)


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
    from mer.settings import check_settings

    check_settings(cfg, "preprocess")
    out = cache_dir_for(cfg)
    rebuild = bool(cfg.preprocess.get("rebuild", False))
    if _cache_is_fresh(cfg, out, rebuild):
        return out
    on_error = str(cfg.preprocess.on_error)
    cfg_container = _checked_worker_config(cfg, out)
    samples, problems = _read_samples(cfg, on_error)
    clips_dir = _open_cache(out, rebuild)
    settings = preprocessing_settings(cfg)
    fingerprint = input_fingerprint(cfg.dataset, samples, problems)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(settings)))

    todo = list(_pending(samples, clips_dir, fingerprint["clips"]))
    log.info("%d clips, %d to process, cache %s", len(samples), len(todo), out)
    start = time.perf_counter()
    timings = _process_clips(todo, cfg_container, clips_dir, on_error, int(cfg.preprocess.workers), progress)
    elapsed = time.perf_counter() - start
    _assemble(out, cfg, samples, problems, clips_dir, settings, fingerprint)
    atomic_write_text(
        out / "timings.json",
        json.dumps({"clips_processed": len(todo), "seconds": elapsed, "stage_seconds": timings}, indent=2),
    )
    if todo:
        log.info("processed %d clips in %.1f s (%.2f clips/s)", len(todo), elapsed, len(todo) / max(elapsed, 1e-9))
    return out


def _cache_is_fresh(cfg: DictConfig, out: Path, rebuild: bool) -> bool:
    """Whether the cache at ``out`` is complete and made from the current inputs (logged); an out-of-date one is
    reported with why.

    Args:
        cfg: The preprocessing config.
        out: The cache directory.
        rebuild: ``preprocess.rebuild``: the cache is never fresh.
    """
    if is_complete(out) and not rebuild:
        fresh, reasons = check_cache(cfg, out)
        if fresh:
            log.info("cache is complete: %s", out)
            return True
        log.warning("cache %s is out of date, updating it:\n  %s", out, "\n  ".join(reasons))
    return False


def _checked_worker_config(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Check that the cache can be written and that clips can run with ``cfg``, generate a missing synthetic
    corpus, and return the workers' config (:func:`worker_config`).

    Raises:
        ConfigError: A config no clip can run with, or a ``dataset.root`` no corpus can be generated in.
    """
    from mer.preprocess.clip import check_config
    from mer.settings import check_writable

    check_writable(out, "paths.cache_dir", cfg.paths.cache_dir)
    cfg_container = worker_config(cfg)
    # Once here rather than once per clip in every worker: a bad config (missing weights, motion=magnet without
    # magnification=magnet, ...) stops the run with its message instead of rejecting every clip for it.
    check_config(OmegaConf.create(cfg_container))
    ensure_corpus(cfg)
    return cfg_container


def _read_samples(cfg: DictConfig, on_error: str) -> tuple[pd.DataFrame, list]:
    """The sample table and its problems, checked to cover every class (coverage warnings are logged).

    Raises:
        AnnotationError: A sheet problem with ``on_error="raise"``, no clip, or a class without clips.
    """
    from mer.data.table import class_coverage

    samples, problems = read_sample_table(cfg.dataset, on_error=on_error)
    # Before any clip: an empty table, or a class without a clip, could only fail after every fold has trained.
    errors, warnings = class_coverage(samples, list(cfg.dataset.classes), f"{cfg.dataset.name} ({cfg.dataset.root})")
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        raise AnnotationError("\n".join(errors), problems)
    return samples, problems


def _open_cache(out: Path, rebuild: bool) -> Path:
    """Mark the cache incomplete (its manifest removed) and make its ``clips/``, emptied first on ``rebuild``.

    Returns:
        The ``clips/`` directory.
    """
    clips_dir = out / "clips"
    # From here until the new manifest is written the directory is incomplete: no reader takes a half-updated cache.
    (out / MANIFEST).unlink(missing_ok=True)
    if rebuild and clips_dir.exists():
        log.info("preprocess.rebuild=true: reprocessing every clip of %s", out)
        shutil.rmtree(clips_dir)
    clips_dir.mkdir(parents=True, exist_ok=True)
    return clips_dir


def _process_clips(todo: list[dict], cfg_container: dict, clips_dir: Path, on_error: str, workers: int,
                   progress: bool) -> dict[str, float]:
    """Process the clips of ``todo``, in this process or in ``workers`` worker processes.

    Args:
        todo: The samples to process (:func:`_pending`).
        cfg_container: The workers' config (:func:`worker_config`).
        clips_dir: The cache's ``clips/``, where each result is written.
        on_error: ``preprocess.on_error``.
        workers: ``preprocess.workers``; 1 or less processes the clips here.
        progress: Show a progress bar over clips.

    Returns:
        Stage name -> seconds spent in it, summed over the processed clips.
    """
    timings: dict[str, float] = {}
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
    return timings


def _record(outcome: tuple[str, dict], timings: dict[str, float], sample: dict) -> None:
    status, info = outcome
    if status == "ok":
        for stage, seconds in info.items():
            timings[stage] = timings.get(stage, 0.0) + float(seconds)
    else:
        log.warning("rejected %s/%s: %s", sample["subject"], sample["clip"], info["reason"])


def _assemble(out: Path, cfg: DictConfig, samples: pd.DataFrame, problems: list, clips_dir: Path, settings: dict,
              fingerprint: dict) -> None:
    """Gather per-clip results into the cache's arrays and tables, then write the manifest (with ``fingerprint``)."""
    from mer.data.au_graph import write_fold_graphs

    rejected = _sheet_rejections(problems)
    kept, patches, landmarks = _gather_results(samples, clips_dir, rejected)
    patch_array = _write_tables_and_arrays(out, kept, rejected, patches, landmarks)
    subjects = sorted(kept["subject"].unique())
    write_fold_graphs(kept, out, subjects)
    manifest = _manifest(cfg, settings, patch_array, len(rejected), subjects, fingerprint)
    # Written last: its presence is what marks the directory complete.
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


def _sheet_rejections(problems: list) -> list[dict]:
    """The rows of ``rejected.csv`` for the clips the sample table rejected (its fatal problems)."""
    # Problem.clip reads "subject/clip".
    return [
        {"subject": str(p.clip).rpartition("/")[0], "clip": str(p.clip).rpartition("/")[2], "reason": p.message}
        for p in problems
        if p.fatal
    ]


def _gather_results(samples: pd.DataFrame, clips_dir: Path,
                    rejected: list[dict]) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
    """Load every clip's result from ``clips/``.

    Args:
        samples: The sample table.
        clips_dir: The cache's ``clips/``.
        rejected: The rows of ``rejected.csv``; each clip rejected in processing is appended.

    Returns:
        (the rows of the clips with a result, their patches, their landmarks), in sample-table order.

    Raises:
        RuntimeError: Every clip was rejected.
    """
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
    return pd.DataFrame(kept_rows).reset_index(drop=True), patches, landmarks


def _write_tables_and_arrays(out: Path, kept: pd.DataFrame, rejected: list[dict], patches: list[np.ndarray],
                             landmarks: list[np.ndarray]) -> np.ndarray:
    """Write ``samples.csv``, ``rejected.csv``, ``patches.npy`` and ``landmarks.npy``.

    Returns:
        The patch array written (clips first).
    """
    from mer.data.aus import format_aus

    table = kept.copy()
    table["aus"] = table["aus"].map(format_aus)
    atomic_write_text(out / "samples.csv", table.to_csv(index=False))
    atomic_write_text(
        out / "rejected.csv", pd.DataFrame(rejected, columns=["subject", "clip", "reason"]).to_csv(index=False)
    )
    patch_array = np.stack(patches).astype(np.float32)
    atomic_save_npy(out / "patches.npy", patch_array)
    atomic_save_npy(out / "landmarks.npy", np.stack(landmarks).astype(np.float32))
    return patch_array


def _manifest(cfg: DictConfig, settings: dict, patch_array: np.ndarray, rejected: int, subjects: list[str],
              fingerprint: dict) -> dict[str, Any]:
    """The cache's manifest: its key, the array's shape and axes, the representation's layout, the provenance.

    Args:
        cfg: The preprocessing config.
        settings: The hashed preprocessing settings (:func:`preprocessing_settings`).
        patch_array: The patch array written.
        rejected: How many clips were rejected.
        subjects: The kept clips' subjects, sorted.
        fingerprint: The input record (:func:`input_fingerprint`).
    """
    from mer.data.aus import AUS
    from mer.preprocess.rois import roi_indices
    from mer.version import provenance

    _, region_sizes, region_names = roi_indices(cfg.rois)
    representation = representation_name(cfg.get("representation"))
    if representation == "flow_image":
        # One onset -> apex flow per clip: no paths, no amplification factors.
        alphas, test_alpha, frames = [], None, 1
        axes = ["clip", "channel", "row", "col"]
    else:
        alphas = [float(a) for a in cfg.magnification.alphas]
        test_alpha = alphas[alpha_index(alphas, cfg.magnification.test_alpha, "magnification.test_alpha",
                                        "magnification.alphas")]
        frames, axes = int(cfg.frames), ["clip", "alpha", "path", "roi", "channel", "row", "col"]
    return {
        "cache_version": settings["cache_version"],
        "key": cache_key(cfg),
        "dataset": str(cfg.dataset.name),
        "representation": representation,
        "clips": int(patch_array.shape[0]),
        "rejected": rejected,
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
        "inputs": fingerprint,
        **provenance(),  # mer_version, git_commit (None outside a git checkout)
    }
