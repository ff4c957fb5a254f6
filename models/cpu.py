"""Process settings for long CPU trainings on a shared box: the same results, less CPU time wasted.

Measured on the 2-core box shared with other work (load 4-7), six training
steps of the ML-100k encoder with 2 threads (2026-12-02):

- OpenMP's default wait policy spins a waiting thread for a while before it
  sleeps. When the other core is busy with someone else's process, the
  spinning thread burns the time slice its partner needs: 15.7 s of CPU and
  23.6 s wall for 12 steps, against 7.6 s CPU and 12.5 s wall with
  ``OMP_WAIT_POLICY=PASSIVE``. The parameters after the steps are bitwise
  identical (same thread count, same partitioning of the work).
- glibc hands buffers above its mmap threshold back to the kernel when they
  are freed, so every step's tens-of-MB activations are page-faulted in again
  (2.1 M minor faults and 8.6 s system time for two cold-item evaluation
  passes; 0.27 M and 2.4 s with the thresholds raised). The RecBole subprocess
  gets the same settings through ``MALLOC_*`` environment variables
  (``streamrec.bench.quality.MALLOC_ENV``); this process is already running,
  so it uses ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# mallopt takes an int, so 1 GiB rather than MALLOC_ENV's 4 GiB: far above any buffer of these models.
HEAP_KEEP_BYTES = 1 << 30


def prepare_cpu_training() -> dict[str, object]:
    """Set the OpenMP wait policy (before torch is imported) and glibc's heap thresholds; say what was set.

    An ``OMP_WAIT_POLICY`` already in the environment is kept. If torch was
    imported before this call its OpenMP runtime has already read the
    environment, which is logged rather than silently ignored.
    """
    policy = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        log.warning("torch was imported before prepare_cpu_training(): OMP_WAIT_POLICY=%s may not take effect", policy)
    return {"omp_wait_policy": policy, "malloc_heap_kept": _keep_heap()}


def _keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds so freed tensor buffers are reused, not returned and faulted in again."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return all(mallopt(param, HEAP_KEEP_BYTES) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD))
