"""Weights the tests make themselves, saved in the published files' format (the real ones are not downloadable here)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mer.files import atomic_writer


def save_state_dict(model: torch.nn.Module, path: str | os.PathLike, *, module_prefix: bool = True) -> Path:
    """Save ``model``'s weights as the published RIFE / MagNet files hold them (keys ``module.`` prefixed)."""
    path = Path(path)
    prefix = "module." if module_prefix else ""
    state_dict = {prefix + key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_writer(path) as handle:
        torch.save(state_dict, handle)
    return path
