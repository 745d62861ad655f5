"""mer: an open, fast, honest training framework for facial micro-expression recognition.

``mer.load(checkpoint).predict(frames)`` runs a saved model on a new clip (:mod:`mer.predict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mer.version import __version__

__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from mer.predict import Predictor


def load(checkpoint: str, device: str = "cpu") -> "Predictor":
    """Load a saved mer model (``model.ckpt``) for prediction: ``mer.load(path).predict(frames)``.

    See :func:`mer.predict.load`; imported on first use, so that ``import mer`` stays light.
    """
    from mer.predict import load as _load

    return _load(checkpoint, device=device)
