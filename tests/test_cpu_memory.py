"""recbole_cllm4rec.cpu_memory: freed large blocks stay in the process for the next step to reuse."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, os, sys
from recbole_cllm4rec.benchmark.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = 256 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
touched = resident()
libc.free(block)
print((touched - resident()) / size)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_a_freed_large_block_stays_resident_only_when_kept():
    def released(mode):
        result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(result.stdout)

    assert released("default") > 0.9  # glibc unmaps a block above its mmap threshold on free
    assert released("keep") < 0.1  # kept in the heap for the next allocation
