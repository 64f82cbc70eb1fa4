"""Keep freed heap memory inside the process, so that a CPU training step's large tensors reuse pages it has
already touched instead of faulting in fresh ones every step.

glibc's ``malloc`` serves every request above its mmap threshold (at most 32 MiB) with a new ``mmap`` and
unmaps it on ``free``. A cpu-profile step allocates several such tensors every time (the 1,000 x 12,101
item logits and their gradient, the dense 22,363 x 576 user-table gradient), so each one is page-faulted
in anew, which costs several times the arithmetic on it. Turning mmap off for ``malloc`` (``M_MMAP_MAX`` 0) and never trimming the
heap top (``M_TRIM_THRESHOLD`` at its maximum) keeps freed blocks for the next step: the process's
resident size stays at its high-water mark instead of falling back between steps. The same idea as running
PyTorch on CPUs under jemalloc or tcmalloc, without a preloaded library. Nothing changes where the C library
is not glibc.
"""

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse; returns whether it took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, for one, has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))


def keep_freed_memory_if_configured(config):
    """``keep_freed_memory()`` where ``config`` sets ``cpu_keep_freed_memory`` and runs on a CPU device; returns
    whether it did. Process-wide, as ``torch.set_num_threads`` is."""
    import torch

    return bool(config["cpu_keep_freed_memory"] and torch.device(config["device"]).type == "cpu" and keep_freed_memory())
