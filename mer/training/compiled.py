"""``torch.compile`` of a network where it can run, the eager network where it cannot (``trainer.compile``).

On CPU, inductor generates C++ kernels that fuse the many small element-wise operations of the
encoder layers (LayerNorm, dropout, residual sums, ReLU); it needs a C++ compiler, and compiling
the layered-relations network's training step takes minutes on 2 cores, which is why it is off by
default. Without a compiler, or when compilation fails on the first call, the eager network runs
instead (with a warning), so a config that asks for it never stops a run.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU (``$CXX``, else g++, c++ or clang++ on PATH), or None."""
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        found = shutil.which(name)
        if found:
            return found
    return None


class _EagerOnFailure:
    """Calls the compiled network; if its first call fails, warns and calls the eager one from then on."""

    def __init__(self, compiled: Callable[..., Any], eager: nn.Module) -> None:
        self.compiled, self.eager = compiled, eager
        self.failed: BaseException | None = None
        self._proven = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return self.eager(*args, **kwargs)
        if self._proven:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly instead
            self.failed = error
            log.warning("torch.compile failed (%s: %s); running the eager network", type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
            return self.eager(*args, **kwargs)
        self._proven = True
        return out


def compile_model(model: nn.Module, *, mode: str | None = None) -> tuple[Callable[..., Any], str]:
    """``torch.compile(model)`` with a fallback.

    Args:
        model: The network (its parameters are shared with the compiled callable, not copied).
        mode: ``torch.compile``'s mode (None: the default).

    Returns:
        A callable with the model's signature, and how it runs: ``"compiled"`` or ``"eager (why)"``.
    """
    if not hasattr(torch, "compile"):
        return model, "eager (this torch has no torch.compile)"
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if device.type == "cpu" and cpp_compiler() is None:
        log.warning("trainer.compile=true but no C++ compiler was found (set CXX or install g++); running eagerly")
        return model, "eager (no C++ compiler)"
    return _EagerOnFailure(torch.compile(model, mode=mode), model), "compiled"
