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
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Freed memory up to this size stays with the process. A frame's tensors are at most tens of MB (640 x 480:
#: 32 MB), so the whole working set of a frame is reused by the next one.
_KEEP_BYTES = 1 << 30
#: The largest mmap threshold glibc before 2.35 accepts (HEAP_MAX_SIZE / 2 on 64-bit systems).
_OLD_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the process's next frame instead of handing it back to the OS.

    By default glibc maps blocks above its mmap threshold (adaptive, at most 32 MB) afresh on each
    allocation and unmaps them when freed, and trims the heap's free top: a 640 x 480 frame of the bundled
    model then touches about 200 MB of new pages each time (about 50,000 page faults, 0.1 s of system
    time on two cores), most of it in the full-resolution edge refinement. Kept, the next frame reuses the
    pages. The process's resident memory then stays at its peak instead of falling between frames.

    Process-wide and once per process; Linux with glibc only. Returns whether it took effect: False
    elsewhere, or when the user's environment already sets malloc's thresholds (``MALLOC_*_`` or a
    ``glibc.malloc`` entry of ``GLIBC_TUNABLES``), which stay as the user set them.
    """
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_MALLOC_SETTINGS) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting either threshold turns glibc's adaptive one off.
    if not (mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) or mallopt(_M_MMAP_THRESHOLD, _OLD_GLIBC_MAX_MMAP_THRESHOLD)):
        return False
    _freed_memory_kept = bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
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
