"""Opt-in glibc allocator tuning for the attack's double backward on CPU (``MEDPFL_MALLOC_TUNING=1``)."""

from __future__ import annotations

import ctypes
import os
import sys

_MALLOC_TUNED = False


def reduce_allocator_churn() -> None:
    """Keep freed CPU tensor memory in the process heap instead of returning it to the OS (glibc only, once).

    The double backward allocates and frees dozens of multi-MB temporaries per iteration (at 64² with 8 restarts
    the first block's activations are 2 MB each). With glibc's defaults such blocks are served by ``mmap`` or
    trimmed from the heap on free, so every iteration page-faults fresh memory again (the profiler showed 2 MB
    ``fill_`` calls taking ~1.6 ms). Raising the mmap and trim thresholds lets them be reused: 4–20 % less wall
    time per iteration at 64² on a shared CPU (noisy), identical numbers. The cost is that the process keeps up to
    256 MB of freed heap, process-wide: so it is opt-in (``MEDPFL_MALLOC_TUNING=1``, as `benchmarks/bench_attacks.py`
    sets it), never a side effect inside a long-running NVFlare server that merely runs the audit. Applied once.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MEDPFL_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum, 32 MB
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass
