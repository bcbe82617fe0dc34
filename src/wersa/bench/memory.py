"""Memory caps and peak-memory measurement for isolated benchmark processes.

CPU: the cap is ``resource.RLIMIT_AS`` (address space) set inside the measuring
process, so an allocation beyond it fails with an out-of-memory error that is
caught and recorded. Peak memory is the resident-set high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs`` where Linux allows it, else
``ru_maxrss``) minus the resident size just before the measured phase.

Memory freed before the phase but kept by the C allocator (glibc keeps freed heap
pages resident for reuse) would be counted in that baseline, and the phase's own
allocations, served from those pages, would not raise the resident size: 200 MiB
allocated inside the phase could read as 0. So :meth:`PeakMemory.start` first
hands the allocator's free pages back to the OS (``malloc_trim(0)``); from then on
every page the phase touches shows in the resident size. Trimming once at the
start costs nothing per step, unlike a low ``MALLOC_MMAP_THRESHOLD_``, which would
map and fault in every large tensor afresh and slow the timed steps.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; the cap
is the device itself (``torch.cuda.OutOfMemoryError``) or, if set, a fraction via
``torch.cuda.set_per_process_memory_fraction``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
from typing import Any

import torch

MiB = 1024 * 1024

# Substrings of errors that mean "out of memory" on CPU and GPU allocators.
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "std::bad_alloc",
    "memoryerror",
    "failed to allocate",
)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (CPU ``MemoryError``, CUDA OOM, allocator errors)."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(m in text for m in _OOM_MARKERS)


def release_free_memory() -> bool:
    """Return the C allocator's freed pages to the OS (glibc ``malloc_trim(0)``); ``False`` where unavailable."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def address_space_bytes() -> int | None:
    """Current virtual address-space size of this process (``VmSize``), or ``None``."""
    kib = _status_kib("VmSize")
    return None if kib is None else kib * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # best effort off Linux


def set_memory_cap(extra_bytes: int | None) -> int | None:
    """Cap this process's address space at its current size plus ``extra_bytes``.

    Relative to the current size because importing torch alone maps gigabytes of
    address space it never touches; the budget the user sets is what the measured
    work may add. Returns the absolute limit set, or ``None`` when no cap applies.
    """
    if extra_bytes is None or extra_bytes <= 0:
        return None
    base = address_space_bytes()
    if base is None:
        return None
    limit = base + int(extra_bytes)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


class PeakMemory:
    """Peak memory of a phase: ``start()`` before it, ``peak_bytes()`` after it.

    ``device``: ``"cpu"`` or a CUDA device. On CPU the value is the RSS high-water
    mark minus the RSS at ``start()`` (what the phase added: activations, gradients,
    optimiser state); on CUDA it is ``max_memory_allocated`` minus the allocation at
    ``start()``.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.base = 0
        self._hwm_reset = False
        self._trimmed = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        self._trimmed = release_free_memory()
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm_reset = _status_kib("VmHWM") is not None
        except OSError:
            self._hwm_reset = False
        self.base = rss_bytes()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        if self._hwm_reset:
            hwm = (_status_kib("VmHWM") or 0) * 1024
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, hwm - self.base)

    def info(self) -> dict[str, Any]:
        return {"method": "cuda.max_memory_allocated" if self.device.type == "cuda"
                else ("VmHWM" if self._hwm_reset else "ru_maxrss") + ("+malloc_trim" if self._trimmed else ""),
                "baseline_bytes": self.base}


def pid_rss_bytes(pid: int | None = None) -> int:
    """RSS of process ``pid`` (this process by default), for progress displays."""
    path = f"/proc/{pid or os.getpid()}/status"
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class AllocatedBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the fresh tensor storages the operators run under it produce, forward and backward.

    A storage counts once, when an operator first returns it; views, in-place results and
    ``out=`` arguments reuse an input's storage and count nothing. Counts what is
    allocated, not what stays alive (see :class:`PeakMemory` for that): the number of
    large fresh allocations is what costs page faults on CPU, where glibc maps every
    allocation of 32 MiB or more afresh.

    >>> with AllocatedBytes() as probe:
    ...     _ = torch.empty(1024, dtype=torch.float32)
    >>> probe.total
    4096
    """

    def __init__(self, min_bytes: int = 0):
        super().__init__()
        self.min_bytes = min_bytes
        self.total = 0
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                nbytes = t.untyped_storage().nbytes()
                if nbytes >= self.min_bytes:
                    self.total += nbytes
                    self.count += 1
        return out
