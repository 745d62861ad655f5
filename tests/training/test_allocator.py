"""reuse_freed_memory: inside the block large blocks come from the heap and stay there once freed."""
import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from mer.training.allocator import _glibc, reuse_freed_memory

libc = _glibc()
pytestmark = pytest.mark.skipif(libc is None or not hasattr(libc, "mallinfo2"), reason="needs glibc >= 2.33")
BLOCK = 64 << 20  # as large as a fold-parallel activation


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo() -> MallInfo2:
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def allocate_and_free() -> tuple[int, int]:
    """(bytes mapped for the block while held, free bytes the heap keeps once it is freed)."""
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    before = mallinfo().hblkhd
    block = libc.malloc(BLOCK)
    assert block
    mapped = mallinfo().hblkhd - before
    libc.free(block)
    return mapped, mallinfo().fordblks


def check_large_blocks_stay_in_the_heap_inside_the_block_only() -> None:
    mapped, _ = allocate_and_free()
    assert mapped >= BLOCK  # by default glibc maps a block this large, and unmaps it on free
    with reuse_freed_memory() as active:
        assert active
        mapped, kept = allocate_and_free()
        assert mapped == 0 and kept >= BLOCK  # served by the heap and kept for the next step
    assert mallinfo().fordblks < BLOCK  # handed back on exit
    mapped, _ = allocate_and_free()
    assert mapped >= BLOCK  # the defaults are back


def test_large_blocks_stay_in_the_heap_inside_the_block_only():
    # In a fresh process: glibc's mmap threshold moves with what the process allocated before (other tests), and
    # the check starts from glibc's defaults.
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_allocator import check_large_blocks_stay_in_the_heap_inside_the_block_only as check; check()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
