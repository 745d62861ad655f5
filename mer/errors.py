"""The two failures of preprocessing: a clip that cannot be processed, and a config that no clip can run with."""

from __future__ import annotations


class ClipError(RuntimeError):
    """A clip cannot be preprocessed (missing frame, no face, ...).

    The driver catches it and, with ``preprocess.on_error=skip``, rejects the clip with ``reason``.

    Args:
        reason: Why the clip failed, in words (e.g. ``"no face detected in 13 frames"``).
        clip: An identifier of the clip (e.g. ``"casme2/sub01/EP02_01f"``); may be set later with
            :meth:`with_clip` by a caller that knows it.
    """

    def __init__(self, reason: str, clip: str | None = None):
        self.reason = reason
        self.clip = clip
        super().__init__(f"{clip}: {reason}" if clip else reason)

    def with_clip(self, clip: str) -> "ClipError":
        """The same error, naming ``clip``."""
        return ClipError(self.reason, clip)

    def __reduce__(self):
        # Keep reason and clip apart when the error crosses from a worker process.
        return ClipError, (self.reason, self.clip)


class ConfigError(ValueError):
    """The preprocessing config cannot work for any clip (unknown stage, missing weights, incompatible stages).

    Unlike :class:`ClipError` it is never a per-clip rejection: the driver checks the config in the main process
    before any clip runs and stops the run with this message (and re-raises it should a worker meet it).
    """
