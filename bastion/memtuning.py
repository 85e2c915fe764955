"""Process-wide memory settings for the gateway and the sealer: reuse freed buffers, scan fewer objects."""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger("bastion")

# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Relaying and sealing allocate and free buffers of 32 KiB to a few MiB many times a second. Above
# glibc's default threshold each one is a fresh mmap, and every fresh page is zeroed by the kernel (on
# a VM, often faulted in by the host too); kept in the heap, freed buffers are reused as they are.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
# The collector's youngest generation fills with every packet's short-lived objects; the default
# (700 allocations) runs it thousands of times a second under bulk transfer.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_process() -> bool:
    """Call once, after start-up imports: objects alive now are never scanned again (gc.freeze).

    Returns whether the allocator took the settings (glibc; elsewhere its defaults stay).
    """
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("mallopt unavailable: keeping the allocator's defaults")
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return bool(ok)
