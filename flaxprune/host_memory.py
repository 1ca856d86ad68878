"""Host memory that stays mapped: stop glibc returning XLA's freed buffers to the OS between calls.

XLA's CPU backend allocates an executable's temporaries (one block, tens to
hundreds of MB for a language model) with ``malloc`` on every call and frees
them after it. glibc serves blocks that large with a fresh ``mmap`` and
unmaps them on ``free``, so every call touches new pages: each 4 KiB page of
the temporaries is a page fault and a page of zeros written by the kernel.
On this project's 2-core machine that was about 10,000 faults and 13 ms of a
35 ms forward pass of the reduced SRU (batch 8 x 128), and 300 MB of faults
per call at batch 64, a third of the time, in pruned and unpruned models alike,
so pruning's gain looked smaller than it is.

:func:`keep_freed_memory` sets glibc's ``mallopt`` so freed memory stays in
the process and the next call reuses it: no ``mmap`` for large blocks
(``M_MMAP_MAX = 0``), no trimming of the heap's top (``M_TRIM_THRESHOLD =
-1``; any finite threshold fits in an ``int``, 2 GiB, and a BERT training
step's temporaries are larger) and one arena (``M_ARENA_MAX = 1``: a thread arena's heap is at
most 64 MiB, so larger blocks would be mapped anyway). The process then
keeps its peak heap; nothing else changes, numerics included.

It is a process-wide setting, so the library never applies it on import:
the ``flaxprune`` command and the experiment scripts call it first thing;
a program that imports flaxprune calls it itself, before its first JAX
computation (the backend's threads choose their arena on first use). Set
``FLAXPRUNE_KEEP_FREED_MEMORY=0`` to leave the allocator as it is. On a
system without glibc (macOS, musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV", "SETTINGS", "is_kept", "keep_freed_memory"]

ENV = "FLAXPRUNE_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # <malloc.h>
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))  # -1: never trim (mallopt(3))
_APPLIED: list[bool] = []  # what keep_freed_memory did in this process, in order


def keep_freed_memory() -> bool:
    """Applies :data:`SETTINGS` with glibc's ``mallopt``; True when they were all accepted.

    False, changing nothing, where the C library is not glibc or
    ``FLAXPRUNE_KEEP_FREED_MEMORY`` is ``0``/``false``/``no``.
    """
    applied = _apply()
    _APPLIED.append(applied)
    return applied


def is_kept() -> bool:
    """Whether :func:`keep_freed_memory` has applied the settings in this process (what the benchmark records)."""
    return any(_APPLIED)


def _apply() -> bool:
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)
