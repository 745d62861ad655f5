"""Writing files so that nothing is ever seen half-written, and a lock between processes.

:func:`atomic_writer` is the one atomic writer of the project; the helpers below are its shorthands.
:func:`exclusive_lock` serialises processes that would build the same output (``filelock``: POSIX and Windows).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)


class AtomicWriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the message names it.

    Its ``errno`` is the underlying error's, so ``except OSError`` handlers and errno checks still work.
    """

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        self.path = str(path)
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno if cause.errno is not None else errno.EIO, f"could not write {path}: {reason}")

    def __str__(self) -> str:
        return str(self.args[1])

    def __reduce__(self):
        # Crosses from clip workers to the main process intact (OSError's own pickling would re-run __init__
        # with (errno, message) as (path, cause)).
        return _rebuild_write_error, (self.path, self.errno, self.args[1])


def _rebuild_write_error(path: str, code: int, message: str) -> AtomicWriteError:
    error = AtomicWriteError.__new__(AtomicWriteError)
    OSError.__init__(error, code, message)
    error.path = path
    return error


@contextmanager
def atomic_writer(path: str | os.PathLike, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary handle whose contents replace ``path`` only once the block ends without an error.

    The one atomic writer of the project: everything that must never be seen half-written (cache files,
    checkpoints, the corpus sheets, figures, downloaded weights) is written through it. The data goes to a
    hidden temporary file beside ``path`` that is renamed over ``path`` at the end; on any error, or an
    exception raised in the block, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The file to write (its folder is created).
        fsync: Flush the data to disk before the rename, so that a crash of the machine cannot leave an empty
            file under the final name.

    Yields:
        The open temporary file.

    Raises:
        AtomicWriteError: Writing, flushing or renaming failed with an OSError (e.g. ENOSPC); the message
            names ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except AtomicWriteError:
        raise
    except OSError as error:
        raise AtomicWriteError(path, error) from error
    finally:
        # Gone after a successful rename; after a failure it must not stay behind (a full disk stays full).
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`, so readers never see half a file."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_writer`."""
    with atomic_writer(path) as handle:
        np.save(handle, array)


def atomic_save_png(path: Path, figure: Any, dpi: int) -> None:
    """Save a matplotlib figure as a PNG through :func:`atomic_writer`, then close it (also when saving fails)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_writer(path) as handle:
            figure.savefig(handle, dpi=dpi, format="png")
    finally:
        plt.close(figure)


@contextmanager
def exclusive_lock(path: Path, waiting_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) for the block; wait while another process holds it.

    Args:
        path: The lock file (left in place afterwards: removing it would race with a waiting process).
        waiting_message: Logged (INFO) once when the lock is taken by another process and this one must wait.
    """
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting_message:
            log.info(waiting_message)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
