"""Frames between numpy, as the preprocessing stages hold them ((..., H, W, 3) float32 RGB in [0, 1]), and
torch, as the learned networks take them ((B, 3, H, W)); and the ``.npy`` frames of their command-line tools."""

from __future__ import annotations

import numpy as np
import torch


def to_nchw_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) array -> contiguous float32 (B, 3, H, W) tensor (B = 1 for one frame)."""
    images = np.asarray(images)
    batch = images[None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)).to(device)


def to_nhwc_array(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) tensor on any device -> (B, H, W, 3) float32 array."""
    return images.permute(0, 2, 3, 1).to(device="cpu", dtype=torch.float32).numpy()


def load_frame_npy(path: str) -> np.ndarray:
    """Read an H x W x 3 float frame in [0, 1] for the command-line tools; exit with a message otherwise."""
    frame = np.load(path)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise SystemExit(f"error: {path} must hold an H x W x 3 array, got shape {frame.shape}")
    if not np.issubdtype(frame.dtype, np.floating) or frame.min() < 0 or frame.max() > 1:
        raise SystemExit(f"error: {path} must hold floats in [0, 1] (dtype {frame.dtype}, "
                         f"range [{frame.min()}, {frame.max()}])")
    return frame.astype(np.float32)


def available_device(name: str) -> torch.device:
    """``torch.device(name)``, checked to exist on this machine (a learned stage's ``device`` option).

    Raises:
        ValueError: Not a device name, or a CUDA device that this machine or torch build lacks.
    """
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a torch device name (cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here (torch sees {torch.cuda.device_count()} CUDA "
                         "device(s)); set device=cpu")
    return device
