"""Run a saved model on a new clip: a folder of frames, a video file, or frames in memory (docs/design.md §7).

    mer predict CHECKPOINT INPUT [--onset N] [--apex N] [--offset N] [--out DIR]
    mer predict CHECKPOINT --table samples.csv [--out DIR]

    >>> import mer
    >>> model = mer.load("outputs/train/synthetic/<time>/model.ckpt")
    >>> model.predict("clip_folder/").label
    'positive'

The clip goes through the same preprocessing the model was trained with, read from the checkpoint's stored
settings: :func:`mer.preprocess.clip.process_clip`, the function that built the training cache, runs on it
unchanged. A video (or frames in memory) is first written to lossless PNG files in a temporary folder, so that the
same code reads it.

**Frame numbers.** A folder's frames are its image files in natural order (``img2`` before ``img10``); when every
file name holds a number and no two hold the same one, the last number in the name is the frame number (CASME II's
``img46.jpg`` is frame 46), otherwise frames are numbered 0, 1, 2, ... A video's frames, and frames in memory, are
numbered from 0. ``--onset``, ``--apex`` and ``--offset`` use these numbers.

**Spotting.** Without ``--onset`` the onset is the first frame; without ``--offset`` the offset is the last; without
``--apex`` the apex is the frame that moved most from the onset (:func:`spot_apex`: on the face crop, brightness
matched to the onset's, dense optical flow from the onset to every later frame, its best-fitting affine motion removed
so that a drifting head does not pull the answer towards the end; the largest mean remaining magnitude wins).
It assumes one expression in the clip and a roughly still head: it is a simple in-clip spotting, not a detector of
micro-expressions in long videos.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mer.cache import alpha_index
from mer.training.checkpoint import CheckpointError, build_network, read_checkpoint

#: Image files a frame folder may hold.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
#: Files read as a video (anything else that is not a folder is tried as a video too).
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
#: A clip needs an onset and a later frame.
MIN_FRAMES = 2


class PredictError(ValueError):
    """A clip that cannot be predicted (no face, too few frames, unreadable video, bad frame numbers); the message
    names the input and what to change."""


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns.

    Attributes:
        label: The predicted class.
        probabilities: Class -> probability (they sum to 1), in the model's class order.
        onset, apex, offset: The frame numbers used.
        apex_spotted: True when the apex was found by :func:`spot_apex`, False when given.
        frames: How many frames the input has.
        input: The input, in words (its path, or ``"frames"``).
        result: The preprocessed clip (:class:`mer.preprocess.clip.ClipResult`: crops, motion maps, landmarks).
        apex_crop: ``(S, S, 3)`` float32 the apex frame cut like the onset crop (for the panel).
    """

    label: str
    probabilities: dict[str, float]
    onset: int
    apex: int
    offset: int
    apex_spotted: bool
    frames: int
    input: str
    result: Any = field(repr=False, default=None)
    apex_crop: np.ndarray | None = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``mer predict`` prints."""
        return {"input": self.input, "label": self.label, "probabilities": self.probabilities, "onset": self.onset,
                "apex": self.apex, "offset": self.offset, "apex_source": "spotted" if self.apex_spotted else "given",
                "frames": self.frames}


# --------------------------------------------------------------------------------------------
# Inputs: a folder, a video, or frames in memory -> frame number -> image file


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def number_frames(files: Sequence[Path]) -> dict[int, Path]:
    """Frame numbers of a folder's image files (see the module docstring): the last number in each name when
    every name has one and they are distinct, else 0, 1, 2, ... in natural order."""
    files = sorted(files, key=_natural_key)
    numbers = [re.findall(r"\d+", path.stem) for path in files]
    if all(numbers) and len({int(n[-1]) for n in numbers}) == len(files):
        return dict(sorted((int(n[-1]), path) for n, path in zip(numbers, files)))
    return dict(enumerate(files))


def read_video(path: Path) -> np.ndarray:
    """Every frame of a video, ``(T, H, W, 3)`` uint8 RGB, read with OpenCV.

    Raises:
        PredictError: OpenCV cannot open the file or decodes no frame from it.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not capture.isOpened():
            raise PredictError(f"cannot read video {path}: OpenCV cannot open it (not a video, damaged, or a codec "
                               "this OpenCV build lacks); convert it to .mp4/.avi or give a folder of frames")
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else
                          cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
    finally:
        capture.release()
    if not frames:
        raise PredictError(f"cannot read video {path}: OpenCV decodes no frame from it (damaged, empty, or a codec "
                           "this OpenCV build lacks); convert it to .mp4/.avi or give a folder of frames")
    return np.stack(frames)


def _write_frames(frames: np.ndarray, folder: Path) -> dict[int, Path]:
    """Frames ``(T, H, W, 3)`` uint8 RGB as lossless PNG files ``folder/frame_00000.png``, numbered from 0."""
    import cv2

    paths = {}
    for number, frame in enumerate(frames):
        path = folder / f"frame_{number:05d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)):
            raise PredictError(f"cannot write a frame to the temporary folder {folder}")
        paths[number] = path
    return paths


def _as_uint8_frames(frames: Any) -> np.ndarray:
    array = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
    if array.ndim == 3:  # grey frames (T, H, W)
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise PredictError(f"frames in memory must be (T, H, W, 3) RGB or (T, H, W) grey, got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return array


@contextmanager
def clip_frames(source: Any) -> Iterator[tuple[dict[int, Path], str]]:
    """The frames of ``source`` as image files, for the block.

    Args:
        source: A folder of frames, a video file, a sequence of image files, or frames in memory (``(T, H, W, 3)``
            uint8 RGB array or a list of such images).

    Yields:
        Frame number -> image file, and the input in words. Videos and in-memory frames live in a temporary
        folder removed after the block.

    Raises:
        PredictError: A missing path, a folder without images, an unreadable video.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise PredictError(f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}): give a folder "
                                   "of frames or a video file")
            yield number_frames(files), str(path)
            return
        if not path.exists():
            raise PredictError(f"{path}: no such file or folder")
        frames = read_video(path)
        with tempfile.TemporaryDirectory(prefix="mer-predict-") as folder:
            yield _write_frames(frames, Path(folder)), str(path)
        return
    if isinstance(source, Sequence) and source and all(isinstance(s, (str, Path)) for s in source):
        yield dict(enumerate(Path(s) for s in source)), f"{len(source)} image files"
        return
    frames = _as_uint8_frames(source)
    with tempfile.TemporaryDirectory(prefix="mer-predict-") as folder:
        yield _write_frames(frames, Path(folder)), "frames"


def spot_apex(frame_paths: dict[int, Path], onset: int, offset: int, face: dict[str, Any] | None = None) -> int:
    """The frame in (onset, offset] that moved most from the onset (see the module docstring).

    The face is found on the onset (:func:`mer.preprocess.face.find_face`) and every frame cut to the same square
    around it (``face``: the ``preprocess.face`` settings, margin and crop size), as preprocessing does; each grey
    crop is brought to the onset crop's mean and contrast, so that a lighting drift is not taken for motion. The frame
    whose flow from the onset, less its best-fitting affine motion (the head), is largest on average wins
    (:func:`mer.data.samples.most_moving_frame`, the estimate of ``dataset.apex_policy=max_flow``). Frames are decoded
    as preprocessing decodes them (:func:`mer.preprocess.clip.read_frame`), so that a video and the same frames as
    files give the same apex.

    Raises:
        ClipError: An unreadable frame, or no face on the onset.
    """
    from mer.data.frames import most_moving_frame
    from mer.preprocess.clip import read_frame
    from mer.preprocess.face import crop_box, crop_frames, find_face

    face = dict(face or {})
    numbers = [n for n in sorted(frame_paths) if onset < n <= offset]
    if not numbers:
        return onset
    first = read_frame(frame_paths[onset], onset)
    box = crop_box(find_face([first], int(face.get("upsample_retry", 1)), float(face.get("min_score", 0.0)),
                             [Path(frame_paths[onset]).name]), first.shape, float(face.get("margin", 0.25)))
    size = int(face.get("crop_size", 128))

    def grey(image: np.ndarray) -> np.ndarray:  # (H, W, 3) uint8 -> (S, S) float32 grey levels of the face crop
        return crop_frames(image[None], box, size)[0].mean(axis=-1) * np.float32(255)

    reference = grey(first)
    mean, contrast = float(reference.mean()), float(reference.std())

    def matched(number: int) -> np.ndarray:
        crop = grey(read_frame(frame_paths[number], number))
        crop = (crop - crop.mean()) * (contrast / max(float(crop.std()), 1e-6)) + mean
        return np.clip(np.rint(crop), 0, 255).astype(np.uint8)

    reference = np.clip(np.rint(reference), 0, 255).astype(np.uint8)
    return numbers[most_moving_frame(reference, (matched(n) for n in numbers))]


# --------------------------------------------------------------------------------------------
# The model


class Predictor:
    """A saved model ready to predict clips (:func:`load`).

    Attributes:
        path: The checkpoint file.
        classes: Class names in output order.
        settings: The preprocessing settings the model was trained with (the nodes
            :func:`mer.preprocess.clip.process_clip` reads).
        checkpoint: The whole checkpoint (:mod:`mer.training.checkpoint`), as plain data.
    """

    def __init__(self, checkpoint: dict[str, Any], path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        self.checkpoint = checkpoint
        self.classes = list(checkpoint["classes"])
        self.settings = checkpoint["preprocessing"]["settings"]
        self.representation = checkpoint["preprocessing"]["representation"]
        self.scale = float(checkpoint["normalization"]["scale"])
        self.device = torch.device(device)
        self.network = build_network(checkpoint).to(self.device)
        self.test_alpha_index = None
        if self.representation == "roi_patches":
            self.test_alpha_index = alpha_index(checkpoint["preprocessing"]["alphas"],
                                                checkpoint["preprocessing"]["test_alpha"], "the checkpoint's test_alpha",
                                                "its alphas")

    @torch.no_grad()
    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        """Class probabilities of preprocessed clips.

        Args:
            patches: What the cache holds per clip, for B clips: ROI patches ``(B, A, N, R, C, 7, 7)`` (the test α
                is taken) or flow images ``(B, C, S, S)``.

        Returns:
            ``(B, classes)`` float64, rows summing to 1.
        """
        inputs = torch.as_tensor(np.asarray(patches, dtype=np.float32))
        if self.test_alpha_index is not None:
            inputs = inputs[:, self.test_alpha_index]  # (B, N, R, C, 7, 7)
        logits = self.network(inputs.to(self.device) / self.scale)
        return logits.double().softmax(dim=1).cpu().numpy()

    def predict(self, frames: Any, onset: int | None = None, apex: int | None = None,
                offset: int | None = None) -> Prediction:
        """Predict one clip.

        Args:
            frames: A folder of frames, a video file (``.mp4``, ``.avi``, ...), a list of image files, or frames in
                memory: ``(T, H, W, 3)`` uint8 RGB (see :func:`clip_frames`).
            onset, apex, offset: Frame numbers (module docstring); None: the first frame, the frame of largest
                motion from the onset (:func:`spot_apex`), the last frame.

        Raises:
            PredictError: Too few frames, frame numbers outside the clip or out of order, no face found, an
                unreadable frame or video; the message names the input.
        """
        from mer.errors import ClipError
        from mer.preprocess.clip import load_frames, process_clip
        from mer.preprocess.face import crop_frames

        with clip_frames(frames) as (frame_paths, name):
            numbers = sorted(frame_paths)
            if len(numbers) < MIN_FRAMES:
                raise PredictError(f"{name}: {len(numbers)} frame(s); a clip needs at least {MIN_FRAMES} (an onset "
                                   "and a later frame)")
            onset = numbers[0] if onset is None else int(onset)
            offset = numbers[-1] if offset is None else int(offset)
            for what, number in (("onset", onset), ("offset", offset), ("apex", apex)):
                if number is not None and int(number) not in frame_paths:
                    raise PredictError(f"{name}: no frame {number} for --{what} (the frames are numbered "
                                       f"{numbers[0]}..{numbers[-1]}, {len(numbers)} frames)")
            if offset <= onset:
                raise PredictError(f"{name}: the offset {offset} must come after the onset {onset}")
            spotted = apex is None
            try:
                face = self.settings["preprocess"]["face"]
                apex = spot_apex(frame_paths, onset, offset, face) if spotted else int(apex)
                if not onset < apex <= offset:
                    raise PredictError(f"{name}: the apex {apex} must come after the onset {onset} and not after "
                                       f"the offset {offset}")
                sample = {"dataset": "predict", "subject": "input", "clip": Path(name).name or "clip",
                          "onset": onset, "apex": apex, "offset": offset, "frames_dir": name}
                result = process_clip(sample, frame_paths, self.settings)
                apex_frame = load_frames(frame_paths, np.array([apex]))
            except ClipError as error:
                raise PredictError(f"{name}: {error.reason}") from None
            apex_crop = crop_frames(apex_frame, result.crop, int(result.onset.shape[0]))[0]
        probabilities = self.probabilities(result.patches[None])[0]
        return Prediction(
            label=self.classes[int(np.argmax(probabilities))],
            probabilities={c: float(p) for c, p in zip(self.classes, probabilities)},
            onset=onset, apex=apex, offset=offset, apex_spotted=spotted, frames=len(numbers), input=name,
            result=result, apex_crop=apex_crop,
        )


def load(checkpoint: str | Path, device: str = "cpu") -> Predictor:
    """Load a saved model (``model.ckpt``) for prediction.

    Raises:
        CheckpointError: Not a mer model checkpoint, or one this mer cannot use (another checkpoint format, or
            preprocessing this mer no longer computes); the message names the file.
    """
    return Predictor(read_checkpoint(checkpoint), checkpoint, device=device)


# --------------------------------------------------------------------------------------------
# The panel


def save_panel(prediction: Prediction, settings: dict[str, Any], path: str | Path) -> Path:
    """A PNG of one prediction: the onset and apex face crops, the onset -> apex motion map with the ROIs, and the
    class probabilities.

    Args:
        prediction: From :meth:`Predictor.predict`.
        settings: The model's preprocessing settings (:attr:`Predictor.settings`).
        path: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mer.files import atomic_save_png
    from mer.preprocess.rois import roi_indices

    result = prediction.result
    maps = np.asarray(result.maps)  # (N, C, M, M) at the test alpha (flow image: (1, C, s, s))
    motion = maps[-1, 0] if maps.shape[1] == 1 else np.linalg.norm(maps[-1, :2], axis=0)
    fig, axes = plt.subplots(1, 4, figsize=(11.5, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    axes[0].imshow(np.clip(result.onset, 0, 1))
    axes[0].set_title(f"onset (frame {prediction.onset})", fontsize=9)
    axes[1].imshow(np.clip(prediction.apex_crop, 0, 1))
    axes[1].set_title(f"apex (frame {prediction.apex}, {'spotted' if prediction.apex_spotted else 'given'})",
                      fontsize=9)
    axes[2].imshow(motion, cmap="magma")
    if settings["representation"].get("name", "roi_patches") == "roi_patches":
        half = int(settings["rois"].get("patch_size", 7)) // 2
        for x, y in np.asarray(result.landmarks)[roi_indices(settings["rois"]).indices]:
            axes[2].add_patch(Rectangle((x - half - 0.5, y - half - 0.5), 2 * half + 1, 2 * half + 1, fill=False,
                                        edgecolor="cyan", linewidth=0.7))
        axes[2].set_title("motion onset -> apex, ROIs", fontsize=9)
    else:
        axes[2].set_title("flow image (|u, v|)", fontsize=9)
    for ax in axes[:3]:
        ax.axis("off")
    names = list(prediction.probabilities)
    values = [prediction.probabilities[n] for n in names]
    bars = axes[3].barh(names[::-1], values[::-1], color=["tab:orange" if n == prediction.label else "tab:blue"
                                                          for n in names[::-1]])
    axes[3].bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes[3].set_xlim(0, 1.15)
    axes[3].set_title(f"prediction: {prediction.label}", fontsize=9)
    axes[3].tick_params(labelsize=8)
    fig.suptitle(Path(prediction.input).name, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_save_png(path, fig, dpi=90)
    return path


# --------------------------------------------------------------------------------------------
# The command


def _panel_name(prediction: Prediction, index: int | None = None) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(prediction.input).stem or "clip")
    return f"{index:03d}_{stem}.png" if index is not None else f"{stem}.png"


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    return int(float(value))


def predict_table(model: Predictor, table: Path, out: Path | None) -> list[dict[str, Any]]:
    """Predict every row of a sample table: a CSV with an ``input`` column (a folder or video, relative to the
    table's folder) and optional ``onset``, ``apex``, ``offset`` columns. With ``out``, writes a panel per clip and
    ``predictions.csv`` there.

    Raises:
        PredictError: The table has no ``input`` column, or a row fails (the message names the row).
    """
    import pandas as pd

    rows = pd.read_csv(table, dtype=str, keep_default_na=False)
    if "input" not in rows.columns:
        raise PredictError(f"{table}: no `input` column (columns: {', '.join(rows.columns)}); the table needs "
                           "`input` and may have `onset`, `apex`, `offset`")
    records = []
    for index, row in rows.iterrows():
        source = Path(row["input"]).expanduser()
        source = source if source.is_absolute() else Path(table).parent / source
        try:
            prediction = model.predict(source, *(_optional_int(row.get(k)) for k in ("onset", "apex", "offset")))
        except PredictError as error:
            raise PredictError(f"{table} row {index + 2}: {error}") from None
        record = prediction.to_dict()
        if out is not None:
            record["panel"] = str(save_panel(prediction, model.settings, out / _panel_name(prediction, index)))
        print(json.dumps(record), flush=True)
        records.append(record)
    if out is not None:
        flat = [{k: v for k, v in r.items() if k != "probabilities"}
                | {f"prob_{c}": p for c, p in r["probabilities"].items()} for r in records]
        from mer.files import atomic_write_text

        atomic_write_text(out / "predictions.csv", pd.DataFrame(flat).to_csv(index=False))
    return records


def main(argv: list[str] | None = None, prog: str = "mer predict") -> int:
    """``mer predict CHECKPOINT INPUT [--onset N] [--apex N] [--offset N] [--out DIR] [--table samples.csv]``.

    Prints one JSON object (label, probabilities, the onset/apex/offset used); with ``--table``, one per row (JSON
    lines). Errors are one line on stderr, exit status 1.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Predict the micro-expression of a clip with a saved "
                                     "model (model.ckpt from `mer train protocol=all_subjects`).")
    parser.add_argument("checkpoint", type=Path, help="a model.ckpt")
    parser.add_argument("input", nargs="?", type=Path, help="a folder of frames or a video file (.mp4, .avi, ...)")
    parser.add_argument("--onset", type=int, help="onset frame number (default: the first frame)")
    parser.add_argument("--apex", type=int, help="apex frame number (default: the frame of largest motion from the "
                        "onset)")
    parser.add_argument("--offset", type=int, help="offset frame number (default: the last frame)")
    parser.add_argument("--out", type=Path, help="write a panel PNG (onset, apex, motion map with ROIs, "
                        "probabilities) into this folder")
    parser.add_argument("--table", type=Path, help="predict every row of a CSV (columns input[, onset, apex, "
                        "offset]; inputs relative to the table) instead of one INPUT")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args(argv)
    if (args.input is None) == (args.table is None):
        parser.error("give one INPUT or --table samples.csv")
    if args.table is not None and any(v is not None for v in (args.onset, args.apex, args.offset)):
        parser.error("--onset/--apex/--offset apply to one INPUT; a table gives them in its columns")
    try:
        model = load(args.checkpoint, device=args.device)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        if args.table is not None:
            if not args.table.is_file():
                raise PredictError(f"{args.table}: no such table")
            predict_table(model, args.table, args.out)
            return 0
        prediction = model.predict(args.input, args.onset, args.apex, args.offset)
        record = prediction.to_dict()
        if args.out is not None:
            record["panel"] = str(save_panel(prediction, model.settings, args.out / _panel_name(prediction)))
    except (PredictError, CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m mer.predict"))
