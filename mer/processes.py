"""Worker processes: the ``spawn`` context every pool uses, and workers that end with their parent."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _exit_with_parent(parent_pid: int, sentinel: int | None, interval: float = 0.5) -> None:
    """End this worker process as soon as its parent is gone (run in a daemon thread).

    A parent killed with SIGKILL never shuts its pool down, and nothing tells its spawned workers that it
    died: without this they would go on processing and writing clips for minutes. The parent's
    sentinel (a pipe only it holds open) becomes readable when it dies; the parent pid changing (the
    orphan is re-parented) is the fallback where there is no sentinel.
    """
    from multiprocessing.connection import wait

    while True:
        if sentinel is not None:
            if wait([sentinel], timeout=interval):
                break
        else:
            time.sleep(interval)
        if os.getppid() != parent_pid:
            break
    os._exit(1)  # not sys.exit: no cleanup that could wait on the dead parent, and from any thread


def watch_parent() -> None:
    """Start :func:`_exit_with_parent` for this (spawned) worker process."""
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None) if parent is not None else None
    # The pid spawn recorded, not os.getppid(): the parent may already be dead (and this worker re-parented).
    parent_pid = parent.pid if parent is not None and parent.pid is not None else os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent_pid, sentinel), name="exit-with-parent",
                     daemon=True).start()


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
