"""How a training process keeps host memory it has freed (glibc's malloc settings, set once by
the trainers' entry point `main` and the step benchmarks, before JAX starts its threads).

XLA's CPU runtime allocates one temporary buffer per executed program, as large as the step's
live intermediates (1.7 GB for a MiniLM fine-tuning step at batch 32 x seq 128), and frees it
when the step ends. glibc serves an allocation above 32 MB (the highest mmap threshold it
accepts) with a fresh `mmap` and returns it with `munmap` on free, so every step faults that
memory in again page by page and the kernel zeroes it: about 450,000 page faults and 1-5 s of
system time in a 2.5 s step on a 2-core host, more after other work has churned memory. With
one malloc arena, no `mmap` for large blocks and no trimming, a freed block stays in the heap
and the next step reuses it: no faults after the first step. The cost is that a process keeps
its peak heap until it exits, which a training job reaches every step anyway.

Only on Linux with glibc (elsewhere nothing changes). Threads that already allocated keep
their arena, so this runs before the first JAX computation.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_done = False


def keep_freed_memory() -> bool:
    """Sets the process's malloc to reuse freed memory instead of returning it to the kernel;
    True when it did (glibc), False where the C library is another one."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # One arena; no mmap'ed blocks; a trim threshold of -1 turns trimming off (mallopt(3)).
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
    _done = ok
    return ok
