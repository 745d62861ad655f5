"""Clip workers end with their parent: preprocess.py killed with SIGKILL leaves no worker running or writing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped running; only its exit status waits to be collected


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers through /proc")
def test_workers_end_when_preprocess_is_killed(tiny_corpus, tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "preprocess.py"), f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false",
         "frames=2", "preprocess.workers=2", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        # Both workers at work: two clips written, so each has run its initializer.
        while len(list(tmp_path.glob("cache/*/*/clips/*.npz"))) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "preprocess.py wrote no clips"
            time.sleep(0.05)
        workers = children(process.pid)
        assert len(workers) >= 2
        process.send_signal(signal.SIGKILL)  # the parent only: its workers are told nothing
        process.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "workers outlived their parent"
        written = sorted(p.name for p in tmp_path.glob("cache/*/*/clips/*"))
        time.sleep(2)
        assert sorted(p.name for p in tmp_path.glob("cache/*/*/clips/*")) == written
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
