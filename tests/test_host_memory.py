"""The entry points' malloc settings (`host_memory`): a large block freed and allocated again
is reused, not faulted in afresh from the kernel; without them glibc returns it."""
import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util, json, resource, sys
from mobilebert_jax import host_memory
kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch():  # as XLA's temporary buffer: 256 MB from malloc, written, freed
    p = libc.malloc(256 << 20)
    ctypes.memset(p, 1, 256 << 20)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"kept": kept, "faults": after - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = probe("default"), probe("keep")
    pages = 3 * (256 << 20) // 4096
    assert kept["kept"] is True
    assert default["faults"] > pages // 2  # glibc unmaps the block and faults it in again
    assert kept["faults"] < pages // 100  # the same block, reused
