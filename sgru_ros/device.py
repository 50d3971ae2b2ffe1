"""Where and in which precision the network runs, and what a frame too large for memory looks like. No ROS here."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from typing import Literal

import torch

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16")


def is_out_of_memory(err: BaseException) -> bool:
    """True for the allocation failures of a frame that is too large (CPU or CUDA)."""
    # torch.OutOfMemoryError exists from PyTorch 2.5 on; before, CUDA's is torch.cuda.OutOfMemoryError.
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory(device: torch.device) -> None:
    """Give back what a failed frame left: Python garbage and, on CUDA, the allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: Freed memory up to this size stays with the process: a 640 x 480 frame's largest tensors are 32 MB.
_KEEP_BYTES = 1 << 30
#: The largest mmap threshold glibc before 2.35 accepts (HEAP_MAX_SIZE / 2 on 64-bit systems).
_OLD_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20
#: Threads other than the main one allocate from heaps of at most HEAP_MAX_SIZE (64 MB on 64-bit systems).
_THREAD_HEAP_BYTES = 64 << 20
#: Environment settings of the same thresholds: a user who sets any of them manages malloc, not the package.
_USER_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_USER_MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad")
_freed_memory_kept = False


def _user_sets_malloc() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in _USER_MALLOC_VARIABLES) or \
        any(name in tunables for name in _USER_MALLOC_TUNABLES)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the process's next frame instead of handing it back to the OS.

    By default glibc maps blocks above its mmap threshold (adaptive, at most 32 MB) afresh on each
    allocation and unmaps them when freed, trims the main heap's free top, and unmaps a thread's heap
    once it is empty: a 640 x 480 frame of the bundled model then touches 150-200 MB of new pages each
    time (35,000-65,000 page faults, 0.1 s or more of system time on two cores), most of it in the
    full-resolution edge refinement. Kept, the next frame reuses the pages, on the main thread and on
    others (the node runs its frames on a worker thread). The process's resident memory then stays at its
    peak instead of falling between frames.

    Process-wide and once per process; Linux with glibc only. Before glibc 2.35 blocks of 32 MB and more are
    still mapped afresh. Returns whether glibc took the settings: False elsewhere, or when the environment sets one of
    these thresholds itself (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
    the matching ``glibc.malloc`` entries of ``GLIBC_TUNABLES``), which then stay as the user set them.
    """
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_sets_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first, as setting any of the three turns glibc's adaptive threshold off: if glibc
    # refuses both values, nothing has changed.
    if not (mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) or mallopt(_M_MMAP_THRESHOLD, _OLD_GLIBC_MAX_MMAP_THRESHOLD)):
        return False
    # The trim threshold keeps the main heap's free top. glibc's heap_trim unmaps a thread's empty heap only
    # when the heap before it has room for the top pad, which a pad of a whole heap never finds.
    _freed_memory_kept = bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TOP_PAD, _THREAD_HEAP_BYTES))
    return _freed_memory_kept


def resolve_device(spec: str) -> torch.device:
    """'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but this PyTorch sees no CUDA GPU")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def check_precision(precision: str, device: torch.device) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; use bf16 on the CPU")
    return precision  # type: ignore[return-value]
